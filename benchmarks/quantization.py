"""What each quantization mode costs, side by side, on one experiment (default: the digits MLP 300-100).

    python benchmarks/quantization.py                      # digits MLP, 20 epochs
    python benchmarks/quantization.py model=cnn trainer.epochs=5

Trains the float model once and converts its SavedModel to float32 (the baseline), dynamic-range,
float16 and full-int8 TFLite files; trains the same model again with quantization-aware training and
converts that to int8. Every file runs in the LiteRT interpreter on one thread, one example at a time,
over the test split. Printed per mode: file size, size ratio to float32, test accuracy, agreement of
its predictions with the float model, mean latency per example and its ratio to float32.
Arguments are tfscale overrides (``quantization=...`` is ignored: every mode is measured).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("float32", "dynamic", "float16", "int8", "qat")


def _train(cfg: Any, splits: Any, mode: str) -> Any:
    from omegaconf import OmegaConf

    from orchestrator.training.data import make_dataset
    from orchestrator.training.models import build_model
    from orchestrator.artifacts.quantization import prepare_model
    from orchestrator.runtime.tf_env import import_keras, import_tensorflow

    tf, keras = import_tensorflow(), import_keras()
    keras.utils.set_random_seed(int(cfg.trainer.seed))
    cfg = OmegaConf.merge(cfg, {"quantization": {"mode": mode}})
    model = prepare_model(cfg, build_model(cfg, splits.input_shape, splits.num_classes, splits.scale), splits.x_train)
    ds = make_dataset(tf, splits.x_train, splits.y_train, int(cfg.trainer.batch_size), shuffle=True, seed=int(cfg.trainer.seed))
    start = time.perf_counter()
    model.fit(ds, epochs=int(cfg.trainer.epochs), verbose=0)
    print(f"trained {'quantization-aware' if mode == 'qat' else 'float'} model "
          f"({cfg.trainer.epochs} epochs) in {time.perf_counter() - start:.1f}s", flush=True)
    return model


def run(overrides: List[str]) -> List[Dict[str, Any]]:
    """Measure every mode; return one row per mode."""
    from orchestrator.config.compose import compose
    from orchestrator.training.data import load_splits
    from orchestrator.artifacts.export import save_model
    from orchestrator.artifacts.quantization import calibration_batches, convert, evaluate_tflite, float_predictions
    from orchestrator.runtime.tf_env import import_tensorflow
    from orchestrator.config.validation import validate

    cfg = compose([o for o in overrides if not o.startswith("quantization=")] + ["quantization=int8"])
    validate(cfg)
    q, e = cfg.quantization, cfg.export
    splits = load_splits(cfg.data)
    tf = import_tensorflow()
    calib = calibration_batches(splits.x_train, int(q.calibration_batches), int(q.calibration_batch_size), seed=int(cfg.trainer.seed))
    with tempfile.TemporaryDirectory() as tmp:
        saved = {}
        for kind in ("float", "qat"):
            saved[kind] = Path(tmp) / kind
            save_model(tf, _train(cfg, splits, "none" if kind == "float" else "qat"), saved[kind], splits.input_shape,
                       e.input_name, e.output_name)
        reference = float_predictions(saved["float"], splits.x_test, output_name=e.output_name)
        rows = []
        for mode in MODES:
            source = saved["qat" if mode == "qat" else "float"]
            content = convert(source, mode, calibration=calib, int8_io=bool(q.int8_io), dense_per_channel=bool(q.dense_per_channel))
            result = evaluate_tflite(content, splits.x_test, splits.y_test, output_name=e.output_name)
            rows.append({"mode": mode, "bytes": result.bytes, "accuracy": result.accuracy,
                         "agreement": float(np.mean(result.predictions == reference)), "latency_ms": result.latency_ms})
    base = rows[0]
    for r in rows:
        r["size_ratio"] = r["bytes"] / base["bytes"]
        r["latency_ratio"] = r["latency_ms"] / base["latency_ms"]
    float_acc = float(np.mean(reference == splits.y_test))
    print(f"\n{cfg.data.name} / {cfg.model.name}: {len(splits.y_test)} test examples, float model accuracy {float_acc:.4f}, "
          f"int8 calibrated on {len(calib)} batch(es) of {q.calibration_batch_size}; LiteRT, 1 thread, batch 1")
    return rows


def format_rows(rows: List[Dict[str, Any]]) -> str:
    """The measurements as a table, one column per mode."""
    lines = [f"{'':<18}" + "".join(f"{r['mode']:>10}" for r in rows)]
    for label, key, fmt in (("size (KB)", "bytes", lambda v: f"{v / 1024:.1f}"), ("size ratio", "size_ratio", "{:.3f}".format),
                            ("accuracy", "accuracy", "{:.4f}".format), ("agreement", "agreement", "{:.4f}".format),
                            ("latency (ms)", "latency_ms", "{:.4f}".format), ("latency ratio", "latency_ratio", "{:.2f}".format)):
        lines.append(f"{label:<18}" + "".join(f"{fmt(r[key]):>10}" for r in rows))
    return "\n".join(lines)


def main(argv: List[str]) -> None:
    rows = run(argv)
    print(format_rows(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
