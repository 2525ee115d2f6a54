"""End to end: ``tfscale quantization=...`` trains the digits MLP, converts, evaluates, gates and publishes."""
from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from quantization_testkit import TRAIN

pytestmark = pytest.mark.slow

HALF_POINT = 0.005


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    return interp


def _sizes(run, mode):
    published = run.cwd / "models" / "digits_mlp" / f"0001.{mode}.tflite"
    baseline = run.run_dir / "quantization" / "float32.tflite"
    return published, published.stat().st_size / baseline.stat().st_size


def test_int8_is_quarter_size_and_keeps_accuracy(int8_run):
    published, ratio = _sizes(int8_run, "int8")
    assert ratio <= 0.28, ratio
    q = int8_run.metrics["quantization"]
    assert q["file"] == "models/digits_mlp/0001.int8.tflite"
    assert q["size_ratio"] == pytest.approx(ratio, abs=1e-3)
    # The float model's accuracy is the one training reported on the same test split.
    assert q["float"]["accuracy"] == pytest.approx(int8_run.metrics["test"]["accuracy"], abs=1e-6)
    assert q["float"]["accuracy"] - q["quantized"]["accuracy"] <= HALF_POINT
    assert q["agreement"] >= 0.98 and q["test_examples"] == 360
    assert q["quantized"]["latency_ms"] > 0 and q["float"]["latency_ms"] > 0
    # Weights and activations are integers: every tensor between the float input and output is int8/int32.
    dtypes = {d["dtype"] for d in _interpreter(published).get_tensor_details()}
    assert np.int8 in dtypes and np.float16 not in dtypes


def test_int8_file_is_published_atomically_beside_the_version(int8_run):
    model_dir = int8_run.cwd / "models" / "digits_mlp"
    assert sorted(p.name for p in model_dir.iterdir()) == ["0001", "0001.int8.tflite"]  # no temporary leftovers
    mode = (model_dir / "0001.int8.tflite").stat().st_mode
    assert mode & stat.S_IROTH, "a published file must be readable by a server running as another user"
    assert (model_dir / "0001" / "saved_model.pb").is_file()


def test_report_is_printed_as_a_table(int8_run):
    out = int8_run.stdout
    assert "tfscale: quantization=int8 on 360 test examples" in out
    header = next(line for line in out.splitlines() if line.startswith("model"))
    for column in ("size KB", "ratio", "accuracy", "agreement", "latency ms"):
        assert column in header
    assert any(line.startswith("float32 ") for line in out.splitlines())
    assert any(line.startswith("int8 ") for line in out.splitlines())


def test_qat_trains_and_lands_near_the_float_model(tfscale, int8_run):
    run = tfscale("quantization=qat", *TRAIN)
    assert run.returncode == 0, run.output
    assert "quantization-aware training" in run.output
    published, ratio = _sizes(run, "qat")
    assert ratio <= 0.28, ratio
    q = run.metrics["quantization"]
    # Both against its own float graph (the trained model with fake-quantization ops) and against the
    # plain float model trained with the same seed and epochs.
    assert q["float"]["accuracy"] - q["quantized"]["accuracy"] <= HALF_POINT
    float_model = int8_run.metrics["test"]["accuracy"]
    assert float_model - q["quantized"]["accuracy"] <= HALF_POINT, (float_model, q)
    assert run.metrics["epochs"] == 20


@pytest.mark.parametrize("warm", ["1", "0"])  # the forked task process, or a spawned one: the same error and exit code
def test_gate_below_the_measured_drop_fails_and_publishes_nothing(tfscale, warm):
    # One epoch and one calibration example: ranges from a single row clip the rest of the test set.
    run = tfscale("quantization=int8", "quantization.calibration_batches=1", "quantization.max_accuracy_drop=0.0",
                  "trainer.epochs=1", "trainer.verbose=0", "trainer.tensorboard=false", env={"TFSCALE_WARM_TASK": warm})
    report = json.loads((run.run_dir / "quantization" / "report.json").read_text())
    assert report["accuracy_drop"] > 0.0, f"this setting no longer loses accuracy: {report}"
    assert run.returncode == 3, run.output
    assert "quantization.max_accuracy_drop=0.0" in run.stderr and "nothing was published" in run.stderr
    assert not list(tfscale.cwd.glob("models/**/*.tflite"))
    assert not (tfscale.cwd / "models" / "digits_mlp" / "0001").exists()
    assert not (run.run_dir / "metrics.json").exists()


def test_a_builder_model_qat_cannot_wrap_fails_before_training(tfscale):
    (tfscale.cwd / "ln_model.py").write_text(
        "def build(input_shape, num_classes):\n"
        "    import tf_keras\n"
        "    return tf_keras.layers.LayerNormalization()\n")
    run = tfscale("quantization=qat", "model.builder=ln_model:build", "model.allowed_modules=[tf_keras,ln_model]", *TRAIN,
                  env={"PYTHONPATH": str(tfscale.cwd)})
    assert run.returncode == 2, run.output
    assert "'model.builder' = 'ln_model:build'" in run.stderr
    assert "LayerNormalization" in run.stderr and "quantization=int8" in run.stderr
    assert not (run.run_dir / "epochs.jsonl").exists()  # no epoch was trained


def test_inspect_shows_int8_io_quantization_and_runs_it(int8_run, tfscale):
    # An int8-in/int8-out conversion of the int8 run's float model, made in process (no second training).
    from orchestrator.training.data import load_splits
    from orchestrator.artifacts.quantization import calibration_batches, convert
    from orchestrator.training.task import load_run_config

    splits = load_splits(load_run_config(int8_run.run_dir).data)
    content = convert(int8_run.cwd / "models" / "digits_mlp" / "0001", "int8", int8_io=True,
                      calibration=calibration_batches(splits.x_train, 100, 1))
    path = tfscale.cwd / "0001.int8.tflite"
    path.write_bytes(content)

    shown = tfscale("inspect", path.name)
    assert shown.returncode == 0, shown.output
    assert "input  features: dtype=int8 shape=[-1, 64] quantization: scale=" in shown.stdout
    assert "output probabilities: dtype=int8 shape=[-1, 10] quantization: scale=0.00390625 zero_point=-128" in shown.stdout

    np.save(tfscale.cwd / "rows.npy", splits.x_test[:8])
    ran = tfscale("inspect", path.name, "--run", "--inputs", "features=rows.npy")
    assert ran.returncode == 0, ran.output
    probs = ran.stdout.split("Result for output key probabilities:")[1].split("Result")[0]
    predicted = np.array([float(v) for v in probs.replace("[", " ").replace("]", " ").split()]).reshape(-1, 10).argmax(axis=1)
    assert np.mean(predicted == splits.y_test[:8]) >= 0.75


@pytest.mark.parametrize("mode, max_ratio", [("float16", 0.52), ("dynamic", 0.30)])
def test_weight_only_modes_on_the_same_trained_model(int8_run, tmp_path, mode, max_ratio):
    # The int8 run's published SavedModel is the float model; converting it again in process spares a training run.
    from orchestrator.training.data import load_splits
    from orchestrator.artifacts.quantization import compare
    from orchestrator.training.task import load_run_config

    cfg = load_run_config(int8_run.run_dir)
    splits = load_splits(cfg.data)
    report, _ = compare(int8_run.cwd / "models" / "digits_mlp" / "0001", mode, splits.x_test, splits.y_test,
                     output_name="probabilities", keep_dir=tmp_path)
    ratio = (tmp_path / f"{mode}.tflite").stat().st_size / (tmp_path / "float32.tflite").stat().st_size
    assert ratio <= max_ratio and report["size_ratio"] == pytest.approx(ratio, abs=1e-3)
    assert report["float"]["accuracy"] == pytest.approx(int8_run.metrics["test"]["accuracy"], abs=1e-6)
    assert report["float"]["accuracy"] - report["quantized"]["accuracy"] <= HALF_POINT
    if mode == "float16":
        assert np.float16 in {d["dtype"] for d in _interpreter(tmp_path / "float16.tflite").get_tensor_details()}


def test_multi_worker_run_converts_on_the_chief(tfscale):
    # Only the chief converts; its extra staging save must not wait for workers that never join it.
    run = tfscale("backend=processes", "cluster=workers_2", "strategy=multi_worker_mirrored", "quantization=int8",
                  "trainer.epochs=1", "trainer.verbose=0", "trainer.tensorboard=false", timeout=240)
    assert run.returncode == 0, run.output
    assert sorted(p.name for p in (tfscale.cwd / "models" / "digits_mlp").iterdir()) == ["0001", "0001.int8.tflite"]
    assert run.metrics["quantization"]["size_ratio"] <= 0.28
