"""Helpers of the cluster tests: run the real ``tfscale`` script, find leftover task processes, read run records."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

QUIET = ["trainer.verbose=2", "trainer.tensorboard=false"]


def tfscale_argv() -> List[str]:
    exe = shutil.which("tfscale")
    return [exe] if exe else [sys.executable, "-m", "orchestrator.app.cli"]


def env() -> dict:
    e = dict(os.environ)
    e["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return e


def run(args: Sequence[str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    """``tfscale ARGS`` in ``cwd``, as a user runs it."""
    return subprocess.run([*tfscale_argv(), *args, *QUIET], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env())


def start(args: Sequence[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*tfscale_argv(), *args, *QUIET], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env())


def task_processes(cwd: Path) -> List[int]:
    """PIDs of task processes started for runs under ``cwd`` (their command names the run directory)."""
    found = []
    needle = str(Path(cwd).resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "orchestrator.launch.task_main" in cmd and needle in cmd and state != "Z":
            found.append(int(entry.name))
    return found


def _environ(pid: int) -> Dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def task_pid(cwd: Path, role: str, index: int, attempt: int = 0) -> Optional[int]:
    """PID of the task process that is ``role:index`` (by its TF_CONFIG) in ``attempt`` of a run under ``cwd``."""
    for pid in task_processes(cwd):
        env = _environ(pid)
        try:
            task = json.loads(env.get("TF_CONFIG", "{}")).get("task")
        except ValueError:
            continue
        if task == {"type": role, "index": index} and env.get("TFSCALE_ATTEMPT") == str(attempt):
            return pid
    return None


def run_killing_task(args: Sequence[str], cwd: Path, task: str, epoch: int, timeout: float = 400) -> subprocess.CompletedProcess:
    """``tfscale ARGS`` in ``cwd``; SIGKILLs the process of ``task`` (``worker:1``) from outside once its log
    shows it started ``epoch`` in the run's first attempt: an abrupt task death, as a crash or an OOM kill."""
    role, index = task.split(":")
    slug = f"{role}-{index}"
    proc = subprocess.Popen([*tfscale_argv(), *args, *QUIET], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env())
    killed: List[int] = []

    def kill_when_in_epoch() -> None:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            logs = list(Path(cwd, "runs").glob(f"*/*/tasks/{slug}.log"))
            if logs and f"Epoch {epoch}/" in logs[0].read_text(errors="replace"):
                pid = task_pid(cwd, role, int(index), attempt=0)
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:  # it ended between the look-up and the kill: look again
                        continue
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_in_epoch, daemon=True)
    killer.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    killer.join(timeout=5)
    assert killed, f"{task} never reached epoch {epoch}:\n{out[-3000:]}{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_no_tasks(cwd: Path, seconds: float = 15) -> List[int]:
    """Task processes still alive after ``seconds`` (an empty list when everything was cleaned up)."""
    deadline = time.monotonic() + seconds
    while True:
        left = task_processes(cwd)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def run_dir(cwd: Path) -> Path:
    dirs = sorted(Path(cwd, "runs").glob("*/*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def metrics(cwd: Path) -> dict:
    return json.loads((run_dir(cwd) / "metrics.json").read_text())


def versions(cwd: Path) -> List[str]:
    base = Path(cwd, "models", "digits_mlp")
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def epochs_logged(cwd: Path) -> List[int]:
    lines = (run_dir(cwd) / "epochs.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def interrupt_when_training(proc: subprocess.Popen, cwd: Path, timeout: float = 240) -> None:
    """Send SIGINT (Ctrl-C) to ``tfscale`` once every task of the run has started printing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(Path(cwd, "runs").glob("*/*/tasks/*.log"))
        if len(logs) >= 2 and all(p.stat().st_size > 0 for p in logs) and len(task_processes(cwd)) >= 2:
            break
        time.sleep(0.3)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGINT)
