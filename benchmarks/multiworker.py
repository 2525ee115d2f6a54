"""2 MultiWorkerMirrored workers against 1, same global batch, seed and op determinism.

Both runs go through the real ``tfscale`` command with ``backend=processes``: the 1-worker run is the same
cluster with ``cluster.worker.count=1``, so the only difference is how each global batch is split. With the
same global batch, synchronous all-reduce computes the same mean gradient, so the final losses should agree
to within float rounding; the script checks they are within 1 % and prints the per-step time of each.

    python benchmarks/multiworker.py [--epochs 5] [--batch 64]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def run(workers: int, epochs: int, batch: int, seed: int) -> dict:
    cwd = Path(tempfile.mkdtemp(prefix=f"tfscale-bench-{workers}w-"))
    exe = shutil.which("tfscale")
    argv = [exe] if exe else [sys.executable, "-m", "orchestrator.app.cli"]
    args = ["backend=processes", "cluster=workers_2", f"cluster.worker.count={workers}", "strategy=multi_worker_mirrored",
            f"trainer.epochs={epochs}", f"trainer.batch_size={batch}", f"trainer.seed={seed}", "trainer.deterministic=true",
            "trainer.tensorboard=false", "trainer.verbose=0", "backend.stream_logs=false", "export.enabled=false"]
    try:
        proc = subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if proc.returncode:
            raise SystemExit(f"{workers}-worker run failed:\n{proc.stderr[-3000:]}")
        metrics = json.loads(next(cwd.glob("runs/*/*/metrics.json")).read_text())
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    steps = -(-int(metrics["examples_per_second"] * metrics["fit_seconds"] / max(1, metrics["epochs"])) // batch) * metrics["epochs"]
    return {"loss": metrics["train"]["loss"], "test_accuracy": metrics["test"].get("accuracy"),
            "fit_seconds": metrics["fit_seconds"], "steps": steps, "ms_per_step": 1000 * metrics["fit_seconds"] / steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="global batch (split across workers)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    one = run(1, args.epochs, args.batch, args.seed)
    two = run(2, args.epochs, args.batch, args.seed)
    rel = abs(two["loss"] - one["loss"]) / abs(one["loss"])
    print(f"global batch {args.batch}, {args.epochs} epochs, seed {args.seed}, deterministic ops")
    for name, r in (("1 worker ", one), ("2 workers", two)):
        print(f"  {name}: final loss {r['loss']:.6f}  test accuracy {r['test_accuracy']:.4f}  "
              f"fit {r['fit_seconds']:.1f}s  {r['ms_per_step']:.1f} ms/step over {r['steps']} steps")
    print(f"  loss difference: {100 * rel:.3f} % (limit 1 %)")
    print(f"  per-step overhead of 2 workers: {two['ms_per_step'] - one['ms_per_step']:+.1f} ms/step "
          f"({two['ms_per_step'] / one['ms_per_step']:.2f}x)")
    return 0 if rel <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
