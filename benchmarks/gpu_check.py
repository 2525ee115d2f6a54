"""The GPU paths of tfscale on a real GPU: memory growth, a memory limit, virtual GPUs under MirroredStrategy,
mixed precision against float32, NCCL all-reduce, and two study trials sharing one GPU.

    python benchmarks/gpu_check.py [--epochs 3] [--timeout 240]

Every check runs the real ``tfscale`` command (or, for the memory limit, tfscale's own topology code in a fresh
process) in a scratch directory and reads what the run recorded; the script prints one row per check and exits
1 if a check failed. On a machine without an NVIDIA GPU it prints "no GPU: skipped" and exits 0, so it can sit
in any test run.

* ``topology=gpu_growth`` (on GPU 0): trains; the run's devices include the GPU.
* ``topology.gpu_memory_limit_mb``: a process with a 1024 MiB limit can hold 512 MiB and cannot hold 2 GiB.
* ``topology=gpu_split2 strategy=mirrored``: 2 replicas on 2 virtual GPUs of one physical GPU.
* ``trainer.mixed_precision=mixed_float16`` against float32: the fastest epoch's step time of each on a wide MLP.
* ``strategy.cross_device_ops=nccl``: MirroredStrategy all-reducing with NCCL (across physical GPUs; NCCL does
  not accept two virtual devices of one GPU, which the row says when there is only one).
* ``hydra.launcher.trials_per_gpu=2``: a 2-trial study whose trials run at the same time on one GPU, each
  in its own ``topology.gpu_memory_limit_mb`` slice.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUIET = ("trainer.verbose=0", "trainer.tensorboard=false")

# tfscale's topology applied in a fresh process, then allocations under and over the limit.
MEMORY_PROBE = """
import json, sys
from omegaconf import OmegaConf
from orchestrator.config.schema import TopologyConfig
from orchestrator.training.topology import apply_topology
limit = int(sys.argv[1])
applied = apply_topology(OmegaConf.structured(TopologyConfig(gpu_memory_limit_mb=limit)))
import tensorflow as tf
def holds(mib):
    try:
        with tf.device("/GPU:0"):
            x = tf.ones([mib * 256 * 1024], tf.float32)  # mib MiB of float32
            float(tf.reduce_sum(x[:1]))
        return True
    except tf.errors.ResourceExhaustedError:
        return False
print(json.dumps({"devices": applied["logical_devices"], "half": holds(limit // 2), "double": holds(2 * limit)}))
"""


def tfscale(cwd: Path, *args: str, timeout: float) -> Tuple[subprocess.CompletedProcess, float]:
    """Run ``tfscale ARGS`` in ``cwd``; the finished process and its wall seconds."""
    start = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)
    return proc, time.perf_counter() - start


def metrics(cwd: Path) -> Dict[str, Any]:
    """The newest run's metrics.json under ``cwd``."""
    return json.loads(sorted(cwd.glob("runs/*/*/metrics.json"))[-1].read_text())


def failure(proc: subprocess.CompletedProcess) -> str:
    """The last line of a failed command's error output."""
    lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
    return f"exit {proc.returncode}: {lines[-1][:160] if lines else '(no output)'}"


# -------------------------------------------------------------------------------------------- checks
Row = Tuple[str, str]  # result (ok | FAIL | skip), detail


def check_growth(work: Path, a: argparse.Namespace) -> Row:
    proc, _ = tfscale(work, "topology=gpu_growth", "topology.gpus=[0]", f"trainer.epochs={a.epochs}", *QUIET,
                      "export.enabled=false", timeout=a.timeout)
    if proc.returncode:
        return "FAIL", failure(proc)
    devices = metrics(work)["logical_devices"]
    ok = any("GPU" in d for d in devices)
    return ("ok" if ok else "FAIL"), f"memory growth; devices {', '.join(devices)}"


def check_memory_limit(work: Path, a: argparse.Namespace) -> Row:
    limit = 1024
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(limit)], cwd=work, capture_output=True, text=True,
                          timeout=a.timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)})
    if proc.returncode:
        return "FAIL", failure(proc)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = got["half"] and not got["double"]
    return ("ok" if ok else "FAIL"), (f"limit {limit} MiB: {limit // 2} MiB {'fits' if got['half'] else 'does NOT fit'}, "
                                      f"{2 * limit} MiB {'refused' if not got['double'] else 'was NOT refused'}")


def check_split_mirrored(work: Path, a: argparse.Namespace) -> Row:
    proc, _ = tfscale(work, "topology=gpu_split2", "strategy=mirrored", f"trainer.epochs={a.epochs}", *QUIET,
                      "export.enabled=false", timeout=a.timeout)
    if proc.returncode:
        return "FAIL", failure(proc)
    m = metrics(work)
    gpus = [d for d in m["logical_devices"] if "GPU" in d]
    ok = m["replicas"] == 2 * max(1, a.gpus) and len(gpus) == m["replicas"]
    return ("ok" if ok else "FAIL"), (f"{m['replicas']} replicas on {', '.join(gpus)} ({a.gpus} physical GPU(s)); "
                                      f"test accuracy {m['test'].get('accuracy', float('nan')):.3f}")


def _wide_data(work: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((32768, 1024), dtype=np.float32)
    y = (x[:, :10].argmax(axis=1)).astype("int64")  # learnable, so the loss moves
    path = work / "wide.npz"
    np.savez(path, x=x, y=y)
    return path


def check_mixed_precision(work: Path, a: argparse.Namespace) -> Row:
    data = _wide_data(work)
    steps: Dict[str, float] = {}
    for policy in ("none", "mixed_float16"):
        run = work / policy
        run.mkdir()
        proc, _ = tfscale(run, "data=files", f"data.path={data}", "data.scale=1.0", "model.layers.1.units=4096",
                          "model.layers.2.units=4096", "trainer.batch_size=1024", "trainer.epochs=6",
                          f"trainer.mixed_precision={policy}", *QUIET, "export.enabled=false", timeout=a.timeout)
        if proc.returncode:
            return "FAIL", f"{policy}: {failure(proc)}"
        steps[policy] = metrics(run)["input_pipeline"]["step_seconds"]
    ratio = steps["none"] / steps["mixed_float16"]
    return "ok", (f"step {1000 * steps['none']:.2f} ms float32, {1000 * steps['mixed_float16']:.2f} ms mixed_float16: "
                  f"{ratio:.2f}x")


def check_nccl(work: Path, a: argparse.Namespace) -> Row:
    topology = ["topology=auto"] if a.gpus >= 2 else ["topology=gpu_split2"]
    proc, _ = tfscale(work, *topology, "strategy=mirrored", "strategy.cross_device_ops=nccl", f"trainer.epochs={a.epochs}",
                      *QUIET, "export.enabled=false", timeout=a.timeout)
    if proc.returncode:
        if a.gpus < 2:
            return "skip", f"NCCL needs 2 physical GPUs, this machine has {a.gpus}; on 2 virtual GPUs: {failure(proc)}"
        return "FAIL", failure(proc)
    m = metrics(work)
    return "ok", f"{m['replicas']} replicas all-reduced with NCCL; loss {m['train']['loss']:.4f}"


def check_shared_gpu(work: Path, a: argparse.Namespace) -> Row:
    limit = 4096
    proc, _ = tfscale(work, "-m", "study=digits_lr_units", "study.max_trials=2", "study.max_parallel_trials=2",
                      "hydra.launcher.trials_per_gpu=2", f"topology.gpu_memory_limit_mb={limit}",
                      f"trainer.epochs={max(a.epochs, 30)}", *QUIET, "export.enabled=false", timeout=a.timeout)
    if proc.returncode:
        return "FAIL", failure(proc)
    trials = sorted(work.glob("runs/studies/digits_lr_units/trial_*"))
    spans, devices = [], []
    for trial in trials:
        status = json.loads(next(trial.rglob("status.json")).read_text())
        m = json.loads(next(trial.rglob("metrics.json")).read_text())
        spans.append((_ts(status["started"]), _ts(status["ended"])))
        devices.append(",".join(d.rsplit("/device:", 1)[-1] for d in m["logical_devices"] if "GPU" in d))
    overlap = min(e for _, e in spans) - max(s for s, _ in spans) if len(spans) == 2 else -1
    ok = len(trials) == 2 and all(devices) and overlap > 0
    return ("ok" if ok else "FAIL"), (f"{len(trials)} trials, each on {'/'.join(devices) or 'no GPU'} with {limit} MiB, "
                                      f"running together for {overlap:.0f} s")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


CHECKS: Sequence[Tuple[str, Callable[[Path, argparse.Namespace], Row]]] = (
    ("topology=gpu_growth", check_growth),
    ("topology.gpu_memory_limit_mb", check_memory_limit),
    ("gpu_split2 + mirrored", check_split_mirrored),
    ("mixed_float16 vs float32", check_mixed_precision),
    ("NCCL all-reduce", check_nccl),
    ("2 trials on 1 GPU", check_shared_gpu),
)


def run_checks(a: argparse.Namespace) -> List[Tuple[str, str, float, str]]:
    """Every check in a scratch directory of its own; ``(name, result, seconds, detail)`` rows."""
    rows = []
    for name, check in CHECKS:
        work = Path(tempfile.mkdtemp(prefix="tfscale-gpu-check-"))
        start = time.perf_counter()
        try:
            result, detail = check(work, a)
        except subprocess.TimeoutExpired:
            result, detail = "FAIL", f"no answer within {a.timeout:.0f} s"
        except Exception as exc:  # a check that breaks is a failed row, not the end of the table
            result, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append((name, result, time.perf_counter() - start, detail))
        print(f"  {name}: {result}", file=sys.stderr, flush=True)
    return rows


def format_table(rows: List[Tuple[str, str, float, str]]) -> str:
    """The rows as a fixed-width table."""
    lines = [f"{'check':<30}{'result':<8}{'seconds':>8}  detail"]
    lines += [f"{name:<30}{result:<8}{seconds:>8.1f}  {detail}" for name, result, seconds, detail in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds each tfscale command may take")
    a = parser.parse_args(argv)
    from orchestrator.config.devices import detect_gpus

    a.gpus = detect_gpus()
    if a.gpus == 0:
        print("no GPU: skipped")
        return 0
    print(f"{a.gpus} GPU(s); each check runs tfscale in a scratch directory", flush=True)
    rows = run_checks(a)
    print(format_table(rows))
    return 1 if any(result == "FAIL" for _, result, _, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
