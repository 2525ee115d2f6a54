"""The task process ``tfscale`` forks at start-up (orchestrator/launch/warm_task.py), or spawns when the fork cannot
be used: it trains the run (``tfscale`` itself never does), and it never outlives its parent — after success, a
config error, SIGKILL of the parent or Ctrl-C."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfscale_testing import tfscale_env


def _token() -> str:
    """An override that is unique to one test, so its processes can be found by command line."""
    return f"trainer.seed={random.randrange(10**8, 10**9)}"


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = next((line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")), "")
        except OSError:
            continue
        if token in cmdline.split("\0") and "zombie" not in state:
            found.append(int(entry.name))
    return found


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _popen(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", *args], cwd=cwd, env=tfscale_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_dir(cwd: Path) -> Path:
    dirs = sorted((cwd / "runs").glob("*/*/"))
    assert dirs, f"no run directory under {cwd}"
    return dirs[-1]


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_config_error_leaves_no_task_process(tmp_path):
    token = _token()
    start = time.perf_counter()
    proc = _popen([token, "trainer.epochs=-1"], tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    assert "trainer.epochs" in err
    assert time.perf_counter() - start < 1.5
    assert _processes_with(token) == []
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()


@pytest.mark.slow
@pytest.mark.parametrize("env, overrides, warm", [
    ({}, [], True),
    ({"TFSCALE_WARM_TASK": "0"}, [], False),  # switched off
    ({}, ["topology.gpus=[]"], False),  # CUDA_VISIBLE_DEVICES must be set before TensorFlow is imported
])
def test_which_process_trains(tmp_path, env, overrides, warm):
    token = _token()
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = _popen([token, "trainer.epochs=2", *overrides], tmp_path, TMPDIR=str(temp), **env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    # What the run wrote to temporary files (autograph's converted functions, among others) is gone with it.
    assert sorted(p.name for p in temp.rglob("*")) == []
    record = json.loads((_run_dir(tmp_path) / "provenance.json").read_text())
    metrics = json.loads((_run_dir(tmp_path) / "metrics.json").read_text())
    # The forked task process or a spawned one trains, never tfscale's own process.
    assert record["pid"] != proc.pid
    assert f"tfscale: model version {metrics['model_version']}" in out  # the parent reports the task's result
    assert metrics["model_version"].endswith("0001")
    assert record["seed"] == int(token.split("=")[1])
    log = (_run_dir(tmp_path) / "tfscale.log").read_text()
    assert "data digits loaded" in log  # digits needs no TensorFlow: the parent loads it while the task imports
    assert "topology auto applied" in log  # the task's own log lines reach the run's log either way
    assert ("instead of the warm one" in log) is (not warm and bool(overrides))
    if overrides:
        assert "CUDA_VISIBLE_DEVICES=-1 must be set before TensorFlow is imported" in log
    assert _processes_with(token) == []


def _start_long_run(tmp_path: Path, token: str, **env: str) -> tuple[subprocess.Popen, Path]:
    proc = _popen([token, "trainer.epochs=500"], tmp_path, **env)
    _wait_for(lambda: (tmp_path / "runs").exists() and any((tmp_path / "runs").glob("*/*/epochs.jsonl")),
              120, "the first epoch")
    return proc, _run_dir(tmp_path)


def _task_processes(run_dir: Path) -> list[int]:
    """Spawned task processes of ``run_dir`` (``python -m orchestrator.launch.task_main RUN_DIR ...``)."""
    return [pid for pid in _processes_with("orchestrator.launch.task_main")
            if str(run_dir.resolve()) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")]


@pytest.mark.slow
def test_killed_parent_takes_the_task_process_with_it(tmp_path):
    token = _token()
    proc, _ = _start_long_run(tmp_path, token)
    assert len(_processes_with(token)) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_for(lambda: _processes_with(token) == [], 15, "the task process to exit")


@pytest.mark.slow
def test_killed_parent_takes_a_spawned_task_process_with_it(tmp_path):
    token = _token()
    proc, run_dir = _start_long_run(tmp_path, token, TFSCALE_WARM_TASK="0")
    assert _processes_with(token) == [proc.pid]  # tfscale alone: the task is not a fork of it
    (task,) = _task_processes(run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_for(lambda: _task_processes(run_dir) == [], 15, "the spawned task process to exit")


@pytest.mark.slow
def test_interrupted_run_stops_its_task_and_publishes_nothing(tmp_path):
    token = _token()
    proc, run_dir = _start_long_run(tmp_path, token)
    proc.send_signal(signal.SIGINT)  # to the parent only, as a supervisor would
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "tfscale: interrupted" in err
    _wait_for(lambda: _processes_with(token) == [], 15, "the task process to exit")
    models = tmp_path / "models"
    assert not models.exists() or not any(models.rglob("saved_model.pb")), list(models.rglob("*"))
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_warm_and_cold_runs_train_identically(tmp_path):
    results = []
    for env in ({}, {"TFSCALE_WARM_TASK": "0"}):
        cwd = tmp_path / (env.get("TFSCALE_WARM_TASK") or "warm")
        cwd.mkdir()
        proc = _popen(["trainer.epochs=3", "trainer.deterministic=true"], cwd, **env)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
        results.append(json.loads((_run_dir(cwd) / "metrics.json").read_text()))
    warm, cold = results
    for key in ("history", "test", "validation", "epochs", "replicas", "logical_devices"):
        assert warm[key] == cold[key], key
