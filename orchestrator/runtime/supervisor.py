"""The one place tfscale starts processes, and how they end.

Every process tfscale starts — task processes, the smoke-test model server, trial jobs, short commands such
as ``git`` — is started here, so every one of them keeps the same promises:

- It runs in its own process group (a new session), so stopping it stops whatever it started too:
  :meth:`Child.stop` signals the whole group (SIGTERM, SIGKILL after a timeout) and kills what is left in
  the group even after the leader exited.
- It dies with its parent: the kernel sends it SIGKILL when the process that started it dies
  (``PR_SET_PDEATHSIG``, Linux), so even ``kill -9`` of ``tfscale`` leaves nothing behind. Children start
  their own children through this module too, so the chain holds down to the grandchildren.
- It is registered until it ended: whatever is still running when the interpreter exits is stopped.
- :func:`install_signal_handlers` turns SIGTERM into the same path as Ctrl-C (a :class:`Terminated`, which is a
  ``KeyboardInterrupt``), so every ``finally`` and every clean-up of a run also runs on ``kill``; the caller
  exits with :func:`exit_code` (130 for Ctrl-C, 143 for SIGTERM).

The only exception is a process the user asked to outlive tfscale (``start(..., outlive_parent=True)``, e.g. a
model server with ``deploy.tf_serving.keep_running=true``): it is neither tied to its parent nor stopped at exit.
"""
from __future__ import annotations

import atexit
import functools
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from subprocess import DEVNULL, PIPE, STDOUT, CalledProcessError, CompletedProcess, SubprocessError, TimeoutExpired
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

__all__ = ["Child", "Terminated", "start", "run", "fork_child", "watch_parent", "stop_all", "install_signal_handlers",
           "exit_code", "interruption", "DEVNULL", "PIPE", "STDOUT", "CalledProcessError", "CompletedProcess",
           "SubprocessError", "TimeoutExpired"]

_PR_SET_PDEATHSIG = 1
#: Seconds the children still running at interpreter exit get between SIGTERM and SIGKILL.
EXIT_GRACE_S = 5.0

_live: Dict[int, "Child"] = {}
_live_lock = threading.Lock()
_prctl: Any = None  # libc's prctl, resolved in the parent: a forked child must not load libraries


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C: the run unwinds, cleans up, and the process exits 143."""

    signum = signal.SIGTERM


def exit_code(interrupt: BaseException) -> int:
    """The exit status of a process ended by ``interrupt``: 128 + the signal (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))


def interruption(interrupt: BaseException) -> str:
    """``'terminated'`` for SIGTERM, ``'interrupted'`` for Ctrl-C: the word the CLI prints on its way out."""
    return "terminated" if isinstance(interrupt, Terminated) else "interrupted"


_handler_installed = False
_terminating = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _terminating
    if _terminating:  # the first SIGTERM's clean-up is running; SIGKILL is the way to cut it short
        return
    _terminating = True
    raise Terminated()


_watchdog_fd: Optional[int] = None


def exit_after_sigterm(after_s: float) -> None:
    """Make sure this process is gone ``after_s`` seconds after a SIGTERM (exit status 143).

    For a task of a synchronous cluster job: told to stop while a collective op waits for a peer that is gone,
    its main thread is blocked in native code, where Python cannot run the SIGTERM handler at all; and a task
    whose handler did run can block again while it unwinds (the strategy's ops wait for peers that are
    stopping too). Either way it would wait for its backend's SIGKILL, a full stop timeout later. The C-level
    handler writes every signal's number to a wake-up fd (``signal.set_wakeup_fd``), which a thread watches:
    ``after_s`` after a SIGTERM, a process still there exits at once, saying whether its handler had run.
    Installs :func:`install_signal_handlers` too. Main thread only; idempotent.
    """
    global _watchdog_fd
    if _watchdog_fd is not None or threading.current_thread() is not threading.main_thread():
        return
    install_signal_handlers()
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread after all
        os.close(r)
        os.close(w)
        return
    _watchdog_fd = w

    def watch() -> None:
        while True:
            try:
                data = os.read(r, 64)
            except InterruptedError:
                continue
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                time.sleep(after_s)
                how = "still unwinding" if _terminating else "its handler never ran (blocked in native code)"
                try:
                    os.write(2, f"[pid {os.getpid()}] {after_s:g}s after SIGTERM, {how}: exiting\n".encode())
                finally:
                    os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="tfscale-sigterm-watchdog", daemon=True).start()


def reclaim_sigterm() -> None:
    """Put this process's SIGTERM handler back at the OS level, after native code replaced it.

    TensorFlow's coordination service (started by MultiWorkerMirroredStrategy in a cluster) installs a C-level
    SIGTERM handler of its own, for preemption notices, which only records the signal: the task would never
    stop on SIGTERM, and never see it in Python. Call this once such a runtime started. Main thread only; a
    no-op where :func:`install_signal_handlers` was not called.
    """
    if _handler_installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def install_signal_handlers() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread, like Ctrl-C raises KeyboardInterrupt.

    Idempotent; a no-op outside the main thread (Python delivers signals to the main thread only). Later
    SIGTERMs are ignored while the first one's clean-up runs, which stops every child within its grace.
    """
    global _handler_installed
    if _handler_installed or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    _handler_installed = True


# ---------------------------------------------------------------------------------------------- children
def pidfd(pid: int) -> Optional[int]:
    """A file descriptor that becomes readable when ``pid`` exits, or None where the system has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class Child:
    """A started process (and its process group): poll, wait, signal, stop.

    The leader is reaped only after the rest of its group was killed, so the group id cannot be taken by an
    unrelated process between the two.
    """

    def __init__(self, pid: int, *, popen: Optional[subprocess.Popen] = None, group: bool = True,
                 exit_grace: float = EXIT_GRACE_S):
        self.pid = pid
        self.popen = popen
        self.group = group
        self.exit_grace = exit_grace
        self.returncode: Optional[int] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Child(pid={self.pid}, returncode={self.returncode})"

    @property
    def stdout(self) -> Optional[IO]:
        return self.popen.stdout if self.popen is not None else None

    def poll(self) -> Optional[int]:
        """The exit code (negative: killed by that signal), or None while it runs."""
        return self._check(block=False)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the exit code; :class:`TimeoutExpired` after ``timeout`` seconds."""
        if timeout is None:
            code = self._check(block=True)
            assert code is not None
            return code
        deadline = time.monotonic() + timeout
        delay = 0.005
        exited = pidfd(self.pid)  # readable once it exited (Linux 5.3+); else look with growing delays
        try:
            while True:
                code = self._check(block=False)
                if code is not None:
                    return code
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutExpired(self.popen.args if self.popen is not None else [str(self.pid)], timeout)
                if exited is not None:
                    select.select([exited], [], [], left)
                else:
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, 0.05)
        finally:
            if exited is not None:
                os.close(exited)

    def send(self, sig: int) -> None:
        """Send ``sig`` to the process group (to the process alone if it has no group of its own)."""
        with self._lock:
            if self.returncode is not None:
                return
            try:
                if self.group:
                    os.killpg(self.pid, sig)
                else:
                    os.kill(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """``sig`` to the group, SIGKILL after ``timeout`` seconds; what the group left is killed; reaped."""
        if self.poll() is None:
            self.send(sig)
            try:
                self.wait(timeout)
            except TimeoutExpired:
                self.send(signal.SIGKILL)
                self.wait()
        assert self.returncode is not None
        return self.returncode

    def _check(self, block: bool) -> Optional[int]:
        if self.returncode is not None:
            return self.returncode
        try:
            if hasattr(os, "waitid"):  # see the exit without reaping: the group id stays reserved meanwhile
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG))
                if info is None:
                    return None
                code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
                self._finish(code, reaped=False)
            else:  # macOS before Python 3.13: reap first
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
                if pid == 0:
                    return None
                self._finish(os.waitstatus_to_exitcode(status), reaped=True)
        except ChildProcessError:  # reaped elsewhere (a Popen method): nothing left to wait for
            self._finish(None, reaped=True)
        return self.returncode

    def _finish(self, code: Optional[int], reaped: bool) -> None:
        """The leader exited: kill what is left of its group, then reap the leader."""
        with self._lock:
            if self.returncode is not None:
                return
            if self.group and code is not None:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if not reaped:
                try:
                    if self.popen is not None:
                        self.popen.wait()
                    else:
                        os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass
            if code is None:
                code = self.popen.returncode if self.popen is not None and self.popen.returncode is not None \
                    else -signal.SIGKILL
            if self.popen is not None and self.popen.returncode is None:
                self.popen.returncode = code  # reaped here: the Popen must not wait for it again
            self.returncode = code
        _unregister(self)


def _register(child: Child) -> None:
    with _live_lock:
        _live[child.pid] = child


def _unregister(child: Child) -> None:
    with _live_lock:
        if _live.get(child.pid) is child:
            del _live[child.pid]


def live() -> List[Child]:
    """Children started here that have not ended yet."""
    with _live_lock:
        return list(_live.values())


def stop_all(grace: Optional[float] = None) -> None:
    """Stop every registered child: SIGTERM to all groups, SIGKILL to what is left after the grace.

    ``grace`` defaults to each child's own (``exit_grace``); runs at interpreter exit.
    """
    children = live()
    if not children:
        return
    deadline = {}
    now = time.monotonic()
    for c in children:
        g = c.exit_grace if grace is None else grace
        if g > 0:
            c.send(signal.SIGTERM)
        deadline[c.pid] = now + g
    for c in children:
        try:
            c.wait(max(0.0, deadline[c.pid] - time.monotonic()))
        except TimeoutExpired:
            c.send(signal.SIGKILL)
            c.wait()


atexit.register(stop_all)


# ---------------------------------------------------------------------------------------- starting
def _load_prctl() -> Any:
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False
    return _prctl


def _tie_to_parent(death_signal: int, parent_pid: int) -> None:
    """In a new child, before anything else: get ``death_signal`` when the parent dies."""
    if _prctl:
        _prctl(_PR_SET_PDEATHSIG, int(death_signal))
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def start(argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None, cwd: Optional[Union[str, os.PathLike]] = None,
          stdin: Any = DEVNULL, stdout: Any = None, stderr: Any = None, pass_fds: Sequence[int] = (),
          text: bool = False, death_signal: int = signal.SIGKILL, exit_grace: float = EXIT_GRACE_S,
          outlive_parent: bool = False) -> Child:
    """Start ``argv`` in a new session, tied to this process (see the module docstring).

    ``stdout``/``stderr`` take what :class:`subprocess.Popen` takes (a file, :data:`PIPE`, :data:`STDOUT`).
    ``death_signal`` is what the kernel sends it when this process dies (SIGTERM lets a ``tfscale`` child
    clean up its own children first). ``exit_grace``: seconds between SIGTERM and SIGKILL at interpreter exit.
    """
    preexec = None
    if not outlive_parent and _load_prctl():
        preexec = functools.partial(_tie_to_parent, death_signal, os.getpid())
    popen = subprocess.Popen(list(argv), env=None if env is None else dict(env), cwd=cwd, stdin=stdin, stdout=stdout,
                             stderr=stderr, pass_fds=tuple(pass_fds), start_new_session=True, preexec_fn=preexec,
                             text=text)
    child = Child(popen.pid, popen=popen, exit_grace=exit_grace)
    if not outlive_parent:
        _register(child)
    return child


def run(argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None, cwd: Optional[Union[str, os.PathLike]] = None,
        timeout: Optional[float] = None, input: Optional[str] = None, check: bool = False) -> CompletedProcess:
    """Run a short command to its end and capture its output as text (``git``, a converter, a build).

    On ``timeout`` the command's group is stopped and :class:`TimeoutExpired` raised; with ``check``, a
    non-zero exit raises :class:`CalledProcessError`. Ctrl-C stops it too.
    """
    child = start(argv, env=env, cwd=cwd, stdin=PIPE if input is not None else DEVNULL, stdout=PIPE, stderr=PIPE,
                  text=True, exit_grace=1.0)
    assert child.popen is not None
    out: Dict[str, str] = {}

    def read(name: str, stream: IO) -> None:
        try:
            out[name] = stream.read()
        except (OSError, ValueError):
            out[name] = ""

    readers = [threading.Thread(target=read, args=(n, s), daemon=True)
               for n, s in (("stdout", child.popen.stdout), ("stderr", child.popen.stderr))]
    for r in readers:
        r.start()
    try:
        if input is not None:
            try:
                child.popen.stdin.write(input)
                child.popen.stdin.close()
            except BrokenPipeError:
                pass
        code = child.wait(timeout)
    except TimeoutExpired:
        child.stop(1.0)
        for r in readers:
            r.join(2.0)
        raise TimeoutExpired(list(argv), timeout, output=out.get("stdout"), stderr=out.get("stderr")) from None
    except BaseException:
        child.stop(1.0)
        raise
    for r in readers:  # the group is gone; a daemon that left it may still hold the pipes
        r.join(5.0)
    for stream in (child.popen.stdout, child.popen.stderr):
        stream.close()
    result = CompletedProcess(list(argv), code, out.get("stdout", ""), out.get("stderr", ""))
    if check:
        result.check_returncode()
    return result


def fork_child(main: Callable[[], int]) -> Child:
    """Fork; the child runs ``main()`` in a new session, tied to this process, and exits with its return value.

    The child never returns into the caller's code: an exception in ``main`` is printed and exits 1. It
    starts with an empty registry (the parent's children are the parent's to stop).
    """
    global _live, _live_lock
    _load_prctl()
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _live, _live_lock = {}, threading.Lock()
            os.setsid()
            _tie_to_parent(signal.SIGKILL, parent)
            code = main()
        except BaseException:  # noqa: BLE001 - a forked child must never return into the parent's code
            traceback.print_exc()
        finally:
            try:
                stop_all()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    child = Child(pid, exit_grace=0.0)  # nothing of a forked task is worth waiting for at exit
    _register(child)
    return child


def run_forked(functions: Sequence[Callable[[], Any]], timeout: float = 60.0) -> List[int]:
    """Run ``functions`` at the same time: the first here, each other one in a forked child; wait for them all.

    For independent CPU-bound work whose results are files (a study's PNG plots). Returns the indices of the
    functions that did not finish: raised, exited otherwise, or ran past ``timeout`` seconds (killed). A
    failure of the first one propagates. Where ``fork`` is missing every function runs here in turn.
    """
    if not hasattr(os, "fork") or len(functions) < 2:
        for function in functions:
            function()
        return []

    def body(function: Callable[[], Any]) -> Callable[[], int]:
        def run() -> int:
            function()
            return 0
        return run

    children = [(index, fork_child(body(function))) for index, function in enumerate(functions) if index]
    failed: List[int] = []
    try:
        functions[0]()
    finally:
        deadline = time.monotonic() + timeout
        for index, child in children:
            try:
                code = child.wait(max(0.0, deadline - time.monotonic()))
            except TimeoutExpired:
                child.stop(0.0, sig=signal.SIGKILL)
                code = -1
            if code != 0:
                failed.append(index)
    return failed


def watch_parent(fd: int) -> None:
    """In a child: exit as soon as ``fd`` (the read end of a pipe the parent holds open) reaches end of file.

    Backs up ``PR_SET_PDEATHSIG`` (which follows the parent *thread*, and exists on Linux only): once the
    parent stopped writing, the only thing the pipe can deliver is its end.
    """
    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="tfscale-parent-watch", daemon=True).start()
