"""Time to a config error: tfscale's pre-flight against the same mistake found the way it was before it.

Three mistakes, each run twice side by side in one run (this machine is noisy, so only ratios within one run
mean anything):

1. a misspelt layer argument (``activaton``);
2. a wrong-typed one (``rate: "0.25"`` on the CNN's Dropout: tf_keras takes the string and fails in the first
   training step);
3. ``quantization=int8`` of a model with an op the converter cannot quantize (``RandomFourierFeatures``'
   ``COS``, which TFLite has no int8 kernel for).

``pre-flight`` is the default run; ``without`` is ``trainer.preflight=false``, where a mistake surfaces where
training meets it: the layer's constructor, the first step, or the conversion after the last epoch. Both run
``--epochs`` epochs if they get that far. For each: wall seconds to the error, exit status, whether an epoch
was logged and a version published, and the error's first line; then the ratio without / pre-flight.

Usage: ``python benchmarks/failfast.py [--epochs 150] [--repeats 1]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "misspelt argument": ["+model.layers.1.activaton=relu"],
    "wrong-typed argument": ["model=cnn", 'model.layers.7.rate="0.25"'],
    "int8, op without int8 kernel": ["quantization=int8", "model.layers=[{_target_: tf_keras.layers.experimental.RandomFourierFeatures, output_dim: 64}]"],
}
COMMON = ["trainer.verbose=0", "trainer.tensorboard=false"]


def attempt(args: list, work: Path) -> dict:
    """Run tfscale once in a fresh directory; what a user would see of the failure."""
    work.mkdir(parents=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tfscale: error:")]
    tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or [""]
    return {"seconds": seconds, "code": proc.returncode, "line": (errors or tail)[0],
            "one_line": len(errors) == 1 and "Traceback" not in proc.stderr,
            "epochs": any(work.glob("runs/*/*/epochs.jsonl")), "published": any(work.glob("models/*/[0-9]*"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150, help="epochs of both runs (the late errors come after them)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    results = {name: {"pre-flight": [], "without": []} for name in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "orchestrator.app.cli", "--cfg", "job"], cwd=tmp, capture_output=True)  # warm caches
        n = 0
        for _ in range(args.repeats):
            for name, overrides in CASES.items():
                for side, extra in (("pre-flight", []), ("without", ["trainer.preflight=false"])):
                    n += 1
                    run = attempt([*overrides, *COMMON, f"trainer.epochs={args.epochs}", *extra], Path(tmp) / str(n))
                    results[name][side].append(run)
    print(f"{'mistake':<30}{'side':<12}{'seconds':>9}{'exit':>6}{'1 line':>8}{'epochs':>8}{'published':>11}   error")
    for name, sides in results.items():
        for side, runs in sides.items():
            last = runs[-1]
            print(f"{name:<30}{side:<12}{statistics.median(r['seconds'] for r in runs):>9.2f}{last['code']:>6}"
                  f"{'yes' if last['one_line'] else 'no':>8}{'yes' if last['epochs'] else 'no':>8}"
                  f"{'yes' if last['published'] else 'no':>11}   {last['line'][:110]}")
    print()
    for name, sides in results.items():
        pre = statistics.median(r["seconds"] for r in sides["pre-flight"])
        late = statistics.median(r["seconds"] for r in sides["without"])
        print(f"time to error, without / pre-flight, {name:<30}: {late / pre:6.2f}x  ({late:.1f}s vs {pre:.1f}s; "
              f"{args.epochs} epochs)")


if __name__ == "__main__":
    main()
