"""Real runs streaming from shards: 2 MultiWorkerMirrored workers, ParameterServer, memory, round trip, int8, study.

Runs that do not depend on each other are started together: on 2 cores that halves the wall time."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

import pytest

from tfscale_testing import tfscale_env

pytestmark = pytest.mark.slow
QUIET = ["trainer.verbose=2", "trainer.tensorboard=false"]


def _start(args: Sequence[str], cwd: Path, **env: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", *args, *QUIET], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=tfscale_env(**env))


def _together(runs: Dict[str, tuple], timeout: float = 300) -> Dict[str, dict]:
    """Run ``{name: (args, cwd)}`` at once; the metrics.json of each (a failure shows its output)."""
    procs = {name: _start(args, cwd) for name, (args, cwd) in runs.items()}
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"{name}:\n{text[-4000:]}"
        run_dir = sorted(Path(runs[name][1], "runs").glob("*/*/"))[-1]
        out[name] = {**json.loads((run_dir / "metrics.json").read_text()), "_run_dir": run_dir, "_output": text}
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Dict[str, Path]:
    """Synthetic datasets of 64 floats + a label in 16 shards, written by one child process (one TensorFlow
    import): ``equal`` 1024 records (16 shards of 64), ``small`` 5000, ``large`` 100000."""
    root = tmp_path_factory.mktemp("synthetic")
    sizes = {"equal": 1024, "small": 5000, "large": 100000}
    code = "from orchestrator.training.shards import write_synthetic\n" + "".join(
        f"write_synthetic({str(root / name)!r}, records={n}, shards=16, eval_records=256)\n" for name, n in sizes.items())
    subprocess.run([sys.executable, "-c", code], check=True, env=tfscale_env())
    return {name: root / name for name in sizes}


@pytest.fixture(scope="module")
def equal_shards(synthetic) -> Path:
    return synthetic["equal"]


def test_two_workers_read_their_own_files_and_match_one_worker(equal_shards, tmp_path):
    common = ["data=tfrecord", f"data.spec={equal_shards}", "data.shuffle_buffer=0", "trainer.epochs=3", "trainer.batch_size=32",
              "trainer.deterministic=true", "export.enabled=false"]
    m = _together({"one": (common, tmp_path / "one"),
                   "two": ([*common, "backend=processes", "cluster=workers_2", "strategy=multi_worker_mirrored"], tmp_path / "two")})
    shards = m["two"]["input"]["shards"]
    files = shards["files"]
    assert shards["policy"] == "file" and shards["pipelines"] == 2
    assert len(files["0"]) == len(files["1"]) == 8 and not set(files["0"]) & set(files["1"])
    assert m["two"]["input"]["this_task"][0]["files"] == files["0"]  # what the chief itself built
    log1 = (m["two"]["_run_dir"] / "tasks" / "worker-1.log").read_text()
    assert "input pipeline 1 of 2" in log1 and all(Path(f).name in log1 for f in files["1"])
    # Unshuffled (data.shuffle_buffer=0), every file read round-robin in order, and shards of equal size: each
    # global batch holds the same 32 records whether one pipeline reads all 16 files or two read 8 each, and
    # all-reduce averages the same gradient. Only the order of float sums differs, so 1 % is a wide margin
    # (the losses agree to about 7 digits).
    one, two = m["one"]["history"]["loss"][-1], m["two"]["history"]["loss"][-1]
    assert abs(two - one) / one < 0.01, (one, two)
    assert m["two"]["history"]["loss"][-1] < m["two"]["history"]["loss"][0]


def test_parameter_server_workers_stream_their_own_files(equal_shards, tmp_path):
    m = _together({"ps": (["data=tfrecord", f"data.spec={equal_shards}", "trainer.epochs=2", "export.enabled=false",
                           "backend=processes", "cluster=ps_2x1", "strategy=parameter_server"], tmp_path)})["ps"]
    assert m["input"]["shards"]["pipelines"] == 2 and m["input"]["shards"]["policy"] == "file"
    assert "input pipeline of worker 1 of 2" in m["_output"]
    assert m["history"]["loss"][-1] < m["history"]["loss"][0]
    assert m["parameter_server"]["variable_jobs"] == ["/job:ps/replica:0/task:0"]


def test_peak_memory_does_not_grow_with_the_dataset(synthetic, tmp_path):
    small, large = synthetic["small"], synthetic["large"]
    runs = {name: (["data=tfrecord", f"data.spec={data}", f"data.train={data}/train-*.tfrecord",  # counted, not declared
                    "trainer.steps_per_epoch=30", "trainer.epochs=1", "trainer.batch_size=128", "export.enabled=false"],
                   tmp_path / f"run_{name}") for name, data in (("small", small), ("large", large))}
    m = _together(runs)
    assert m["large"]["input"]["train_records"] == 100000 and m["large"]["input"]["train_records_from"] == "count"
    assert list((tmp_path / "run_large" / "runs").glob("*/record_counts.json"))  # counted once, beside the run records
    peaks = {k: v["peak_rss_mb"] for k, v in m.items()}
    assert peaks["large"] / peaks["small"] < 1.15, peaks
    share = m["large"]["input_pipeline"]
    assert share["input_seconds_per_step"] > 0 and share["step_seconds"] > 0 and share["input_bound"] in (True, False)


def test_converted_digits_train_like_in_memory_and_quantize_to_int8(tmp_path):
    converted = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", "data", "convert", "--digits", "--output",
                                str(tmp_path / "digits"), "--shards", "16"], capture_output=True, text=True, env=tfscale_env())
    assert converted.returncode == 0, converted.stderr
    common = ["trainer.epochs=10", "trainer.seed=0", "trainer.deterministic=true"]
    m = _together({"memory": ([*common, "export.enabled=false"], tmp_path / "memory"),
                   "shards": ([*common, "data=tfrecord", f"data.spec={tmp_path / 'digits'}", "quantization=int8"], tmp_path / "shards")})
    mem, streamed = m["memory"]["test"]["accuracy"], m["shards"]["test"]["accuracy"]
    assert abs(mem - streamed) <= 0.01, (mem, streamed)  # the same splits, so the same test set of 360 digits
    q = m["shards"]["quantization"]
    assert q["evaluated_on"] == "test" and q["test_examples"] == 360 and q["calibration_batches"] == 100
    assert q["accuracy_drop"] < 0.03 and (tmp_path / "shards" / q["file"]).is_file()


def test_a_study_over_shards(tmp_path):
    converted = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", "data", "convert", "--digits", "--output",
                                "shards/digits", "--shards", "4"], capture_output=True, text=True, env=tfscale_env(), cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    proc = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", "-m", "study=digits_shards", "trainer.epochs=2", *QUIET],
                          capture_output=True, text=True, env=tfscale_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = (tmp_path / "runs" / "studies" / "digits_shards" / "study.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(",COMPLETED," in r for r in rows)
    for trial in ("trial_0", "trial_1"):
        metrics = json.loads(next((tmp_path / "runs" / "studies" / "digits_shards" / trial).rglob("metrics.json")).read_text())
        assert metrics["input"]["source"] == "tfrecord" and metrics["validation"]["accuracy"] > 0.5
