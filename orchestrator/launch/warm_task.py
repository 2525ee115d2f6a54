"""The task process of a single local run, started before the config is composed.

Importing TensorFlow and tf_keras takes seconds; composing and validating the config takes a few tenths of
a second. ``tfscale`` therefore forks its task process first thing: the child imports the training stack
while the parent composes, validates and creates the run directory, and then trains the run the parent
hands it. On a machine with two or more cores the composition costs no wall time at all.

The child only imports modules: it neither lists devices nor runs an op, so the device topology is still
applied before TensorFlow's runtime initialises. Environment variables TensorFlow reads at *import* time
(``CUDA_VISIBLE_DEVICES`` among them) are the exception: when the run's topology would change one of them,
the child is not used and the run goes the cold way (in the parent process).

Guarantees:

- The parent never imports TensorFlow, so config errors and ``--cfg``/``--help`` stay fast and light;
  an unused child is killed when the parent exits.
- The child dies with its parent (``PR_SET_PDEATHSIG`` on Linux, plus a watch on the pipe), and the parent
  kills and reaps the child on every way out — success, failure, Ctrl-C — so no process is left behind.
- ``TFSCALE_WARM_TASK=0`` turns the mechanism off (every run is then cold).
"""
from __future__ import annotations

import atexit
import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from typing import Any, Dict, List, Optional

from orchestrator.errors import TaskFailedError, TfscaleError

#: Environment that tfscale always sets before TensorFlow is imported (see ``topology.set_process_environment``).
IMPORT_ENV = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "TF_USE_LEGACY_KERAS": "1"}
#: Variables TensorFlow, CUDA or oneDNN read when TensorFlow is imported or its platform is loaded.
IMPORT_TIME_PREFIXES = ("CUDA_", "TF_", "XLA_", "NVIDIA_", "LD_", "OMP_", "KMP_", "MKL_")

_HEADER = struct.Struct("!Q")
_current: Optional["WarmTask"] = None


class RemoteTaskError(TfscaleError):
    """A :class:`TfscaleError` raised in the task process, re-raised in the parent with the same message."""

    def __init__(self, message: str, exit_code: int, kind: str):
        super().__init__(message)
        self.exit_code = exit_code
        self.kind = kind


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int) -> Any:
    """One message, or None at end of file."""
    def read(n: int) -> Optional[bytes]:
        chunks, left = [], n
        while left:
            chunk = os.read(fd, left)
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    head = read(_HEADER.size)
    if head is None:
        return None
    body = read(_HEADER.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def enabled(env: Optional[Dict[str, str]] = None) -> bool:
    env = os.environ if env is None else env
    return hasattr(os, "fork") and env.get("TFSCALE_WARM_TASK", "1") not in ("0", "false", "no", "off")


def start() -> Optional["WarmTask"]:
    """Fork the warm task process (once per ``tfscale`` process); None where fork is unavailable or off."""
    global _current
    if _current is not None or not enabled() or "tensorflow" in sys.modules:
        return _current
    if threading.active_count() > 1:  # forking a threaded process (an embedding application) is unsafe
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(to_child_w)
        os.close(to_parent_r)
        _child_main(to_child_r, to_parent_w, parent_pid)
    os.close(to_child_r)
    os.close(to_parent_w)
    _current = WarmTask(pid, to_child_w, to_parent_r, dict(os.environ))
    atexit.register(_current.discard)
    return _current


def take() -> Optional["WarmTask"]:
    """The warm task process, handed out once (a second job in the same process runs cold)."""
    global _current
    task, _current = _current, None
    return task


def release() -> None:
    """Stop the warm task process if nobody took it (a backend that starts its own processes)."""
    task = take()
    if task is not None:
        task.discard()


class WarmTask:
    """Parent-side handle of the forked task process."""

    def __init__(self, pid: int, to_child: int, from_child: int, env_at_fork: Dict[str, str]):
        self.pid = pid
        self._to_child = to_child
        self._from_child = from_child
        self._env_at_fork = env_at_fork
        self._done = False

    def unsuitable_because(self, cfg: Any) -> Optional[str]:
        """Why this run cannot use a process that already imported TensorFlow (None if it can)."""
        from orchestrator.training.topology import set_process_environment

        wanted = dict(IMPORT_ENV)
        wanted.update(set_process_environment(cfg.topology, env={}))
        seen = dict(self._env_at_fork, **IMPORT_ENV)
        for key, value in wanted.items():
            if seen.get(key) != value:
                return f"{key}={value} must be set before TensorFlow is imported"
        for key in set(os.environ) | set(self._env_at_fork):
            if key.startswith(IMPORT_TIME_PREFIXES) and key not in IMPORT_ENV and os.environ.get(key) != self._env_at_fork.get(key):
                return f"{key} changed after the task process imported TensorFlow"
        return None

    def run(self, cfg: Any, run_dir: Any, overrides: List[str], logging_config: Optional[dict]) -> Dict[str, Any]:
        """Train ``cfg`` in the child; returns its metrics or re-raises its error."""
        from orchestrator.training.task import load_run_config

        # Typed and resolved here, while the child is still importing TensorFlow: the child starts training
        # from exactly what a task process reads from config.resolved.yaml, without paying for the merge.
        try:
            typed = load_run_config(run_dir)
            job = {"cfg": typed, "splits": _preload_data(typed), "run_dir": str(run_dir),
                   "overrides": list(overrides), "logging": logging_config, "env": dict(os.environ),
                   "argv": list(sys.argv), "cwd": os.getcwd()}
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                _send(self._to_child, job)
            except OSError:
                reply = None
            else:
                reply = _recv(self._from_child)
            status = self._reap()
        except KeyboardInterrupt:
            self.discard(grace=10.0)  # let the task finish its own clean-up first
            raise
        except BaseException:
            self.discard()
            raise
        if reply is None:
            how = f"was killed by signal {-status}" if status < 0 else f"exited with code {status}"
            raise TaskFailedError(f"The task process {how} before reporting a result; see the output above "
                                  f"and {run_dir}.")
        kind, payload = reply
        if kind == "ok":
            return payload
        if kind == "error":
            raise RemoteTaskError(payload["message"], payload["exit_code"], payload["type"])
        if kind == "interrupted":
            raise KeyboardInterrupt
        raise TaskFailedError(f"The task process failed:\n{payload}")

    def _reap(self) -> int:
        self._close_and_forget()
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)

    def discard(self, grace: float = 0.0) -> None:
        """Stop and reap the child if it is still there (idempotent).

        With ``grace``, the child first gets SIGINT and that many seconds to unwind (it removes what it
        had half-written); SIGKILL follows if it is still running.
        """
        if self._done:
            return
        if grace > 0 and _signal_and_wait(self.pid, signal.SIGINT, grace):
            self._close_and_forget()
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self._reap()
        except ChildProcessError:
            self._close_and_forget()

    def _close_and_forget(self) -> None:
        self._done = True
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass


def _signal_and_wait(pid: int, sig: int, timeout: float) -> bool:
    """Send ``sig`` and wait up to ``timeout`` s for the child to exit; True if it did (and was reaped)."""
    import time

    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


#: Data larger than this is loaded by the task process itself rather than sent through the pipe.
MAX_SENT_DATA_BYTES = 256 * 2**20


def _preload_data(cfg: Any) -> Any:
    """The run's data, loaded here if that needs no TensorFlow and this machine has a core to spare.

    Loading (scikit-learn's import alone takes most of a second) then overlaps the child's TensorFlow
    import instead of following it. Errors are the same as in the task: they name the ``data.*`` key.
    """
    from orchestrator.training.data import load_splits, loads_without_tensorflow

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if cores < 2 or not loads_without_tensorflow(cfg.data):
        return None
    splits = load_splits(cfg.data)
    if splits.nbytes > MAX_SENT_DATA_BYTES:
        return None
    import logging

    logging.getLogger(__name__).info("data %s loaded (%.1f MB) while the task process imports TensorFlow",
                                     cfg.data.name, splits.nbytes / 2**20)
    return splits


# --------------------------------------------------------------------------------------------- child side

def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _watch_parent(fd: int) -> None:
    """After the job arrived, the only thing on the pipe can be its end: the parent is gone."""
    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="tfscale-parent-watch", daemon=True).start()


def _hold_output() -> list:
    """Send fds 1 and 2 to temporary files while TensorFlow is imported.

    Whatever the import prints (TensorFlow's C++ start-up lines, CUDA warnings) belongs to the run: it is
    shown when the run starts, and never appears in the middle of the parent's config error.
    """
    import tempfile

    held = []
    for fd in (1, 2):
        try:
            saved = os.dup(fd)
        except OSError:  # no such stream (a daemon): nothing to hold
            continue
        sink = tempfile.TemporaryFile()
        os.dup2(sink.fileno(), fd)
        held.append((fd, saved, sink))
    return held


def _release_output(held: list) -> None:
    """Put fds 1 and 2 back and write out what the import printed."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, saved, sink in held:
        os.dup2(saved, fd)
        os.close(saved)
        sink.seek(0)
        data = sink.read()
        sink.close()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


def _preload() -> None:
    """Import what a training task uses; nothing here lists devices or initialises the runtime."""
    os.environ.update(IMPORT_ENV)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow  # noqa: F401
        import tf_keras  # noqa: F401

        import orchestrator.training.task  # noqa: F401
        import orchestrator.training.data  # noqa: F401
        import orchestrator.training.models  # noqa: F401
        import orchestrator.artifacts.export  # noqa: F401
    except Exception:  # whatever failed fails again, with its proper error, when the task runs
        pass


def _child_main(rfd: int, wfd: int, parent_pid: int) -> None:
    code = 1
    try:
        _die_with_parent(parent_pid)
        held = _hold_output()
        _preload()
        job = _recv(rfd)
        if job is None:  # the parent did not need us
            code = 0
            return
        _release_output(held)
        _watch_parent(rfd)
        code = _run_job(job, wfd)
    except BaseException:  # noqa: BLE001 - a forked child must never return into the parent's code
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_job(job: Dict[str, Any], wfd: int) -> int:
    import logging
    import logging.config
    from pathlib import Path

    for key in set(os.environ) - set(job["env"]):
        del os.environ[key]
    os.environ.update(job["env"])
    os.environ.update(IMPORT_ENV)
    sys.argv = job["argv"]
    os.chdir(job["cwd"])
    if job["logging"]:
        logging.config.dictConfig(job["logging"])
    try:
        from orchestrator.training.task import run_training

        metrics = run_training(job["cfg"], Path(job["run_dir"]), overrides=job["overrides"], splits=job["splits"])
        reply, code = ("ok", metrics), 0
    except TfscaleError as exc:
        reply = ("error", {"message": str(exc), "exit_code": exc.exit_code, "type": type(exc).__name__})
        code = exc.exit_code
    except KeyboardInterrupt:
        reply, code = ("interrupted", None), 130
    except Exception:  # noqa: BLE001 - reported to the parent, which raises TaskFailedError
        text = traceback.format_exc()
        sys.stderr.write(text)
        reply, code = ("crash", text), 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    _send(wfd, reply)
    return code
