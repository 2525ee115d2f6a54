"""``kill -TERM`` and ``kill -9`` of a running ``tfscale``: SIGTERM unwinds like Ctrl-C (exit 143), and neither
leaves a process behind — not the task process, not the smoke-test model server it started, not a cluster's tasks."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusters import cluster_testing as ct

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

MWMS = ["backend=processes", "cluster=workers_2", "strategy=multi_worker_mirrored", "trainer.epochs=200"]


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (zombies waiting to be reaped do not count)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _wait_gone(text: str, seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while _processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _processes_mentioning(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _until(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"tfscale ended before {what}:\n{proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_kill_during_the_tf_serving_smoke_test_leaves_no_server(tmp_path, sig):
    rest_port = _free_port()
    # The server is told to serve only a version that never appears, so the smoke test keeps waiting for it
    # with the server up and listening: the kill lands while the server runs, every time.
    proc = ct.start(["deploy=tf_serving", "trainer=quick", "trainer.epochs=1", f"export.model_base={tmp_path}/models",
                     "deploy.tf_serving.launch=embedded", f"deploy.tf_serving.smoke_rest_port={rest_port}",
                     "deploy.tf_serving.version_policy.policy=specific", "deploy.tf_serving.version_policy.versions=[99]"],
                    tmp_path)
    try:
        _until(lambda: _listening(rest_port), proc, 240, "the smoke-test server to listen")
        servers = [p for p in _processes_mentioning("orchestrator.serving") if p in _processes_mentioning(str(tmp_path))]
        assert servers, "no smoke-test server process found"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert proc.returncode == 143, out[-3000:]
            assert "tfscale: terminated" in out
        else:
            assert proc.returncode == -signal.SIGKILL
        assert _wait_gone(str(tmp_path)) == []
        # A dying process leaves the process list (its memory released) just before the kernel closes its files.
        deadline = time.monotonic() + 5
        while _listening(rest_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _listening(rest_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_kill_of_a_training_cluster_run_leaves_no_task(tmp_path, sig):
    proc = ct.start(MWMS, tmp_path)
    try:
        _until(lambda: len(ct.task_processes(tmp_path)) == 2 and bool(list(tmp_path.glob("runs/*/*/epochs.jsonl"))),
               proc, 240, "the cluster to train")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert proc.returncode == 143, out[-3000:]
            assert "tfscale: terminated" in out
            # Each task stopped on its own SIGTERM (TensorFlow's collective runtime had taken the signal over,
            # which left the tasks running until the backend's SIGKILL).
            for log in tmp_path.glob("runs/*/*/tasks/worker-*.log"):
                assert "supervisor.Terminated" in log.read_text(errors="replace"), log.name
        else:
            assert proc.returncode == -signal.SIGKILL
        assert ct.wait_no_tasks(tmp_path, 10) == []
        assert _wait_gone(str(tmp_path)) == []
        assert ct.versions(tmp_path) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
