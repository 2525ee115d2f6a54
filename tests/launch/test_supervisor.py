"""The process supervisor (orchestrator/runtime/supervisor.py) with real processes: groups are stopped whole,
children die with a parent that was SIGKILLed, what is left at exit is stopped, and SIGTERM unwinds like Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.runtime import supervisor

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _python(code: str) -> subprocess.Popen:
    """A Python process running ``code`` that uses the supervisor; its stdout lines are read by the test."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _pids(proc: subprocess.Popen, n: int) -> list[int]:
    return [int(proc.stdout.readline()) for _ in range(n)]


def test_stop_ends_the_whole_group():
    child = supervisor.start(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=supervisor.PIPE)
    grandchild = int(child.stdout.readline())
    assert child.poll() is None and _alive(grandchild)
    assert child.stop(timeout=5) == -signal.SIGTERM
    assert _wait_gone([child.pid, grandchild], 2) == []
    assert child not in supervisor.live()


def test_what_the_group_left_is_killed_when_the_leader_exits():
    child = supervisor.start(["sh", "-c", "sleep 60 & echo $!"], stdout=supervisor.PIPE)
    grandchild = int(child.stdout.readline())
    assert child.wait(timeout=10) == 0
    assert _wait_gone([grandchild], 2) == []


def test_stop_escalates_to_sigkill_after_the_timeout():
    child = supervisor.start([sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                                    "print('ready', flush=True)\ntime.sleep(60)"], stdout=supervisor.PIPE)
    assert child.stdout.readline().strip() == b"ready"
    start = time.monotonic()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - start < 5


def test_run_captures_output_and_stops_a_command_that_times_out():
    before = list(supervisor.live())  # a session fixture (an emulator) may hold children of its own
    done = supervisor.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(supervisor.CalledProcessError):
        supervisor.run(["false"], check=True)
    start = time.monotonic()
    with pytest.raises(supervisor.TimeoutExpired):
        supervisor.run(["sh", "-c", "sleep 60 & sleep 60"], timeout=0.5)
    assert time.monotonic() - start < 5
    assert supervisor.live() == before


@pytest.mark.parametrize("how", ["start", "fork_child"])
def test_children_die_with_a_parent_that_was_sigkilled(how):
    # The intermediate process starts a child that starts a grandchild, each through the supervisor; then
    # the intermediate is SIGKILLed: no clean-up code runs anywhere, the kernel takes the chain down.
    if how == "start":
        body = """
            inner = supervisor.start([sys.executable, "-c",
                "import sys, time; from orchestrator.runtime import supervisor; "
                "c = supervisor.start(['sleep', '60']); print(c.pid, flush=True); time.sleep(60)"],
                stdout=supervisor.PIPE, text=True)
            grandchild = inner.stdout.readline().strip()
            print(inner.pid, flush=True)
            print(grandchild, flush=True)
        """
    else:
        body = """
            r, w = os.pipe()
            def main():
                c = supervisor.start(['sleep', '60'])
                os.write(w, f"{c.pid}\\n".encode())
                time.sleep(60)
                return 0
            inner = supervisor.fork_child(main)
            print(inner.pid, flush=True)
            print(os.read(r, 64).decode().strip(), flush=True)
        """
    proc = _python("import os, sys, time\nfrom orchestrator.runtime import supervisor\n" + textwrap.dedent(body)
                   + "time.sleep(60)\n")
    try:
        inner, grandchild = _pids(proc, 2)
        assert _alive(inner) and _alive(grandchild)
        proc.kill()
        proc.wait(timeout=10)
        assert _wait_gone([inner, grandchild], 10) == []
    finally:
        proc.kill()
        proc.wait()


def test_children_still_running_at_exit_are_stopped():
    proc = _python("""
        from orchestrator.runtime import supervisor
        c = supervisor.start(["sh", "-c", "sleep 60 & sleep 60"])
        print(c.pid, flush=True)
    """)
    (leader,) = _pids(proc, 1)
    assert proc.wait(timeout=20) == 0
    assert _wait_gone([leader], 5) == []
    assert not _group_members(leader)


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def test_sigterm_unwinds_like_ctrl_c_exits_143_and_leaves_no_child():
    proc = _python("""
        import sys, time
        from orchestrator.runtime import supervisor
        supervisor.install_signal_handlers()
        c = supervisor.start(["sh", "-c", "sleep 60 & sleep 60"])
        try:
            print(c.pid, flush=True)
            time.sleep(60)
        except KeyboardInterrupt as exc:
            print("tfscale:", supervisor.interruption(exc), file=sys.stderr)
            sys.exit(supervisor.exit_code(exc))
        finally:
            print("cleaned up", flush=True)
    """)
    (leader,) = _pids(proc, 1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    assert "tfscale: terminated" in err and "cleaned up" in out
    assert _wait_gone([leader], 5) == [] and not _group_members(leader)


def test_exit_codes_follow_the_shell_convention():
    assert supervisor.exit_code(KeyboardInterrupt()) == 130
    assert supervisor.interruption(KeyboardInterrupt()) == "interrupted"
    assert supervisor.exit_code(supervisor.Terminated()) == 143


def test_run_forked_runs_the_functions_at_once_and_names_those_that_did_not_finish(tmp_path):
    def write(name):
        def draw():
            time.sleep(0.3)
            (tmp_path / name).write_text(str(os.getpid()))
        return draw

    def fail():
        raise RuntimeError("no figure")

    before = set(supervisor.live())
    started = time.monotonic()
    failed = supervisor.run_forked([write("a"), write("b"), fail, write("c")])
    assert time.monotonic() - started < 0.85  # three sleeps of 0.3 s side by side, not one after the other
    assert failed == [2]
    pids = {(tmp_path / n).read_text() for n in "abc"}
    assert str(os.getpid()) in pids and len(pids) == 3  # the first here, the others in children
    assert set(supervisor.live()) <= before  # every child reaped


def test_run_forked_kills_a_function_that_runs_past_the_timeout():
    started = time.monotonic()
    assert supervisor.run_forked([lambda: None, lambda: time.sleep(30)], timeout=0.5) == [1]
    assert time.monotonic() - started < 5


BLOCKED = "hashlib.pbkdf2_hmac('sha256', b'x', b'y', 2**31 - 1)"


@pytest.mark.parametrize("body, how", [
    # pbkdf2 runs in C for minutes without returning to the interpreter, as a collective op waiting for a
    # peer that is gone does: the Python SIGTERM handler cannot run.
    (BLOCKED, "its handler never ran"),
    # the handler ran, and the unwinding blocks in native code (ops waiting for peers that stop too)
    (f"try:\n    time.sleep(60)\nfinally:\n    {BLOCKED}", "still unwinding"),
])
def test_a_process_blocked_in_native_code_is_gone_soon_after_sigterm(body, how):
    code = ("import hashlib, time\nfrom orchestrator.runtime import supervisor\n"
            "supervisor.exit_after_sigterm(1.0)\nprint('ready', flush=True)\n"
            f"{body}\nprint('finished', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 143 and "finished" not in out
        assert 0.9 < time.monotonic() - sent < 5
        assert f"1s after SIGTERM, {how}" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
