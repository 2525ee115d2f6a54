"""Task processes of a single local run: forked warm before the config is composed, or spawned.

Importing TensorFlow and tf_keras takes seconds; composing and validating the config takes a few tenths of
a second. ``tfscale`` therefore forks its task process first thing: the child imports the training stack
while the parent composes, validates and creates the run directory, and then trains the run the parent
hands it. On a machine with two or more cores the composition costs no wall time at all.

The child only imports modules: it neither lists devices nor runs an op, so the device topology is still
applied before TensorFlow's runtime initialises. Environment variables TensorFlow reads at *import* time
(``CUDA_VISIBLE_DEVICES`` among them) are the exception: when the run's topology would change one of them,
the forked child is not used and :func:`spawn` starts ``python -m orchestrator.launch.task_main RUN_DIR
--job-fd N --reply-fd M`` with that environment in place. Both kinds speak the same protocol over two pipes
(the job in, one reply out) and run the same code (:func:`task_process_main`), so a run reports the same
summary, the same error line and the same exit code whichever of them trained it. The ``tfscale`` process
itself never trains.

Guarantees:

- The parent never imports TensorFlow, so config errors and ``--cfg``/``--help`` stay fast and light;
  an unused child is killed when the parent exits.
- A task process dies with its parent (``PR_SET_PDEATHSIG`` plus a watch on the job pipe, see
  :mod:`orchestrator.runtime.supervisor`), and the parent stops and reaps it on every way out — success,
  failure, Ctrl-C, SIGTERM — so no process is left behind.
- ``TFSCALE_WARM_TASK=0`` turns the fork off (every run then spawns its task process).

A study's trial forked by a warm trial process (:mod:`orchestrator.launch.trial_pool`) has TensorFlow imported
already: it forks its task process from that state (:func:`fork_imported`), which starts training at once;
the same import-time check decides whether the run may use it.
"""
from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from orchestrator.errors import TaskFailedError, TfscaleError
from orchestrator.runtime import supervisor

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

#: Environment that tfscale always sets before TensorFlow is imported (see ``topology.set_process_environment``).
IMPORT_ENV = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "TF_USE_LEGACY_KERAS": "1"}
#: Variables TensorFlow, CUDA or oneDNN read when TensorFlow is imported or its platform is loaded.
IMPORT_TIME_PREFIXES = ("CUDA_", "TF_", "XLA_", "NVIDIA_", "LD_", "OMP_", "KMP_", "MKL_")

_HEADER = struct.Struct("!Q")
_current: Optional["TaskProcess"] = None
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


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


def start() -> Optional["TaskProcess"]:
    """Fork the warm task process (once per ``tfscale`` process); None where fork is unavailable or off."""
    global _current
    if _current is not None or not enabled() or "tensorflow" in sys.modules:
        return _current
    if threading.active_count() > 1:  # forking a threaded process (an embedding application) is unsafe
        return None
    _current = _fork(dict(os.environ), preimported=False)
    return _current


def fork_imported(import_env: Dict[str, str]) -> "TaskProcess":
    """Fork the task process from this process, which imported the training stack already (:func:`preload`).

    For a trial forked by a warm trial process (:mod:`orchestrator.launch.trial_pool`): the task process
    then starts with TensorFlow imported and nothing initialised, so it begins training at once.
    ``import_env`` is the environment TensorFlow was imported with; a run whose topology needs another
    value of a variable read at import time does not use this process (:meth:`TaskProcess.unsuitable_because`).
    """
    global _current
    if _current is None:
        _current = _fork(dict(import_env), preimported=True)
    return _current


def _fork(import_env: Dict[str, str], *, preimported: bool) -> "TaskProcess":
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()

    def child_main() -> int:
        os.close(to_child_w)
        os.close(to_parent_r)
        return task_process_main(to_child_r, to_parent_w)

    child = supervisor.fork_child(child_main)
    os.close(to_child_r)
    os.close(to_parent_w)
    return TaskProcess(child, to_child_w, to_parent_r, import_env, forked=True, preimported=preimported)


def spawn(cfg: ExperimentConfig, run_dir: Any) -> "TaskProcess":
    """Start a fresh task process for ``cfg``, the environment TensorFlow reads at import time already in place."""
    from orchestrator.training.topology import set_process_environment

    env = dict(os.environ)
    env.update(IMPORT_ENV)
    set_process_environment(cfg.topology, env=env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    argv = [sys.executable, "-m", "orchestrator.launch.task_main", str(Path(run_dir).resolve()),
            "--job-fd", str(to_child_r), "--reply-fd", str(to_parent_w)]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        child = supervisor.start(argv, env=env, pass_fds=(to_child_r, to_parent_w), exit_grace=0.0)
    except BaseException:
        os.close(to_child_w)
        os.close(to_parent_r)
        raise
    finally:
        os.close(to_child_r)
        os.close(to_parent_w)
    return TaskProcess(child, to_child_w, to_parent_r, env, forked=False)


def take() -> Optional["TaskProcess"]:
    """The warm task process, handed out once (a second job in the same process spawns its own)."""
    global _current
    task, _current = _current, None
    return task


def release() -> None:
    """Stop the warm task process if nobody took it (a backend that starts its own processes)."""
    task = take()
    if task is not None:
        task.discard()


class TaskProcess:
    """Parent-side handle of a task process: the forked warm one (:func:`start`) or a spawned one (:func:`spawn`)."""

    def __init__(self, child: supervisor.Child, to_child: int, from_child: int, env: Dict[str, str], *, forked: bool,
                 preimported: bool = False):
        self.child = child
        self.pid = child.pid
        self.forked = forked
        self.preimported = preimported  # forked after the training stack was imported (a warm trial)
        self._to_child = to_child
        self._from_child = from_child
        self._env = env  # what the task runs with; for the forked one, the parent's environment at fork time
        self._closed = False

    def unsuitable_because(self, cfg: ExperimentConfig) -> Optional[str]:
        """Why this run cannot use this process, which may have imported TensorFlow already (None if it can)."""
        if not self.forked:
            return None
        if not self.preimported and "tensorflow" in sys.modules:
            return "TensorFlow is already imported here"
        from orchestrator.training.topology import set_process_environment

        wanted = dict(IMPORT_ENV)
        wanted.update(set_process_environment(cfg.topology, env={}))
        seen = dict(self._env, **IMPORT_ENV)
        for key, value in wanted.items():
            if seen.get(key) != value:
                return f"{key}={value} must be set before TensorFlow is imported"
        for key in set(os.environ) | set(self._env):
            if key.startswith(IMPORT_TIME_PREFIXES) and key not in IMPORT_ENV and os.environ.get(key) != self._env.get(key):
                return f"{key} changed after the task process imported TensorFlow"
        return None

    def run(self, cfg: ExperimentConfig, run_dir: Any, overrides: List[str], logging_config: Optional[dict],
            record_uri: Optional[str] = None) -> Dict[str, Any]:
        """Train ``cfg`` in the task process; returns its metrics or re-raises its error.

        ``record_uri``: where the run record ends up when the caller uploads ``run_dir`` there afterwards
        (``runs_dir=gs://...``); a published version names it, not the local scratch directory."""
        from orchestrator.training.task import load_run_config

        # Typed and resolved here, while the child is still importing TensorFlow: the forked child starts
        # training from exactly what a spawned one reads from config.resolved.yaml, without paying for the merge.
        try:
            typed = load_run_config(run_dir)
            job = {"cfg": typed if self.forked else None, "splits": _preload_data(typed), "run_dir": str(run_dir),
                   "overrides": list(overrides), "logging": logging_config, "record_uri": record_uri,
                   "env": dict(os.environ) if self.forked else self._env, "argv": list(sys.argv), "cwd": os.getcwd()}
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                _send(self._to_child, job)
            except OSError:
                reply = None
            else:
                reply = _recv(self._from_child)
            self._close()
            status = self.child.wait()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (supervisor.Terminated)
            self.discard(grace=10.0)  # let the task finish its own clean-up first
            raise
        except BaseException:
            self.discard()
            raise
        if reply is None:
            raise TaskFailedError(f"The task process {_describe(status)} before reporting a result; see the output "
                                  f"above and {run_dir}.")
        kind, payload = reply
        if kind == "ok":
            return payload
        if kind == "error":
            raise RemoteTaskError(payload["message"], payload["exit_code"], payload["type"])
        if kind == "interrupted":
            raise KeyboardInterrupt
        raise TaskFailedError(f"The task process failed:\n{payload}")

    def discard(self, grace: float = 0.0) -> None:
        """Stop and reap the task process if it is still there (idempotent).

        With ``grace``, the child first gets SIGINT and that many seconds to unwind (it removes what it
        had half-written and stops what it started); SIGKILL follows if it is still running.
        """
        self._close()
        self.child.stop(grace, sig=signal.SIGINT if grace > 0 else signal.SIGKILL)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass


def _describe(status: int) -> str:
    return f"was killed by signal {-status}" if status < 0 else f"exited with code {status}"


#: Data larger than this is loaded by the task process itself rather than sent through the pipe.
MAX_SENT_DATA_BYTES = 256 * 2**20


#: Data a study's driver loads once and hands to each trial in its job (:func:`study_data`) up to this size.
MAX_STUDY_DATA_BYTES = 64 * 2**20

_offered: Optional[Tuple[str, Any]] = None  # in a trial: (data key, splits) its study's driver loaded
_study_data: Dict[str, Any] = {}  # in a study's driver: the splits of each data key (None: trials load their own)


def data_key(cfg: Any) -> str:
    """What identifies the data a run trains on: its ``data`` node, resolved, and whether its targets are values."""
    import json

    from omegaconf import OmegaConf

    from orchestrator.training.data import targets_are_values

    node = OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg.data) else cfg.data
    return json.dumps([node, targets_are_values(cfg)], sort_keys=True, default=str)


def study_data(cfg: Any) -> Optional[Tuple[str, Any]]:
    """``(data key, splits)`` of a trial's config, loaded once per key by the study's driver, for its trials.

    Every trial of a study usually trains on the same data: the driver loads it once (while the warm trial
    process still imports TensorFlow) instead of each trial loading it, and the trials need not import
    scikit-learn. None where each trial loads its own, as a single run would: data that needs TensorFlow or
    is streamed, larger than :data:`MAX_STUDY_DATA_BYTES`, or that fails to load (the trial reports why).
    """
    from orchestrator.training.data import load_splits, loads_without_tensorflow, targets_are_values

    try:
        if not loads_without_tensorflow(cfg.data):
            return None
        key = data_key(cfg)
    except Exception:  # not a tfscale config: its task loads what it needs
        return None
    if key not in _study_data:
        env = dict(os.environ)
        try:
            splits = load_splits(cfg.data, values=targets_are_values(cfg))
        except Exception:  # the trial loads it again and says what is wrong, in its run record
            splits = None
        finally:
            # scikit-learn's import sets KMP_* variables here; trials get this process's environment, and one
            # that differs from the warm process's in a variable TensorFlow reads at import would spawn anew.
            for name in set(os.environ) - set(env):
                del os.environ[name]
            os.environ.update(env)
        _study_data[key] = splits if splits is not None and splits.nbytes <= MAX_STUDY_DATA_BYTES else None
    splits = _study_data[key]
    return None if splits is None else (key, splits)


def offer_data(key: str, splits: Any) -> None:
    """In a trial: the data its study's driver loaded (:func:`study_data`), used if the run's data has this key."""
    global _offered
    _offered = (key, splits)


def _preload_data(cfg: ExperimentConfig) -> Any:
    """The run's data, loaded here if that needs no TensorFlow and this machine has a core to spare.

    Loading (scikit-learn's import alone takes most of a second) then overlaps the child's TensorFlow
    import instead of following it. Errors are the same as in the task: they name the ``data.*`` key.
    A study's trial takes the data its driver loaded (:func:`offer_data`) when it is the run's.
    """
    from orchestrator.training.data import load_splits, loads_without_tensorflow, targets_are_values

    if _offered is not None and loads_without_tensorflow(cfg.data) and data_key(cfg) == _offered[0]:
        return _offered[1]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if cores < 2 or not loads_without_tensorflow(cfg.data):
        return None
    splits = load_splits(cfg.data, values=targets_are_values(cfg))
    if splits.nbytes > MAX_SENT_DATA_BYTES:
        return None
    import logging

    logging.getLogger(__name__).info("data %s loaded (%.1f MB) while the task process imports TensorFlow",
                                     cfg.data.name, splits.nbytes / 2**20)
    return splits


# --------------------------------------------------------------------------------------------- child side

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


def preload() -> None:
    """Import what a training task uses; nothing here lists devices or initialises the runtime."""
    from orchestrator.runtime import collection

    os.environ.update(IMPORT_ENV)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The collector paused while the imports build TensorFlow's ~400k objects (a quarter of the import's time),
    # and what they made frozen: it lives as long as the process, and the training's garbage collections skip
    # it (a full collection would walk all of it, a quarter of a second each time).
    with collection.paused(freeze=True):
        try:
            import tensorflow  # noqa: F401
            import tf_keras  # noqa: F401

            import orchestrator.training.task  # noqa: F401
            import orchestrator.training.data  # noqa: F401
            import orchestrator.training.models  # noqa: F401
            import orchestrator.artifacts.export  # noqa: F401
        except (Exception, SystemExit):  # whatever failed fails again, with its proper error, when the task runs
            pass


def task_process_main(rfd: int, wfd: int) -> int:
    """Body of a task process, forked or spawned: import the training stack, wait for the job, run it.

    Returns the exit code. The caller exits with ``os._exit`` once it returns: the task has written its
    files, flushed its logs and reported; the interpreter tear-down of a process holding TensorFlow takes
    over half a second and adds nothing.
    """
    # Ctrl-C's handler even where the parent was started with SIGINT ignored: the parent stops a task
    # with SIGINT to let it clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    supervisor.install_signal_handlers()
    code = 1
    held: list = []
    try:
        held = _hold_output()
        preload()  # what it imported is frozen
        job = _recv(rfd)
        if job is None:  # the parent did not need us
            return 0
        _release_output(held)
        held = []
        supervisor.watch_parent(rfd)
        code = _run_job(job, wfd)
    except KeyboardInterrupt as exc:  # stopped before the job arrived: nothing to clean up or report
        if held:
            _release_output(held)
        code = supervisor.exit_code(exc)
    except BaseException:  # noqa: BLE001 - reported through the exit code; the parent raises TaskFailedError
        if held:
            _release_output(held)
        traceback.print_exc()
    finally:
        supervisor.stop_all()
        _remove_private_tempdir()
        sys.stdout.flush()
        sys.stderr.flush()
    return code


_private_tempdir: Optional[str] = None


def _use_private_tempdir() -> None:
    """Point Python's temporary files at a directory of this task's own (inside the job's ``TMPDIR``).

    TensorFlow's autograph writes the source of every function it converts to a temporary file and removes
    it in an ``atexit`` hook, which a task process ending with ``os._exit`` never runs: without this,
    a handful of ``__autograph_generated_file*.py`` per run would pile up in /tmp. The directory goes when
    the task ends (:func:`_remove_private_tempdir`).
    """
    import tempfile

    global _private_tempdir
    tempfile.tempdir = None  # the job's TMPDIR, not what the warm process cached
    _private_tempdir = tempfile.tempdir = tempfile.mkdtemp(prefix="tfscale-task-")


def _remove_private_tempdir() -> None:
    global _private_tempdir
    if _private_tempdir is not None:
        import shutil

        shutil.rmtree(_private_tempdir, ignore_errors=True)
        _private_tempdir = None


def _run_job(job: Dict[str, Any], wfd: int) -> int:
    import logging
    import logging.config

    for key in set(os.environ) - set(job["env"]):
        del os.environ[key]
    os.environ.update(job["env"])
    os.environ.update(IMPORT_ENV)
    _use_private_tempdir()
    sys.argv = job["argv"]
    os.chdir(job["cwd"])
    if job["logging"]:
        logging.config.dictConfig(job["logging"])
    elif not logging.getLogger().handlers:  # a spawned task outside Hydra: log like task_main does
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        from orchestrator.training.task import load_run_config, run_training

        run_dir = Path(job["run_dir"])
        cfg = job["cfg"] if job["cfg"] is not None else load_run_config(run_dir)
        metrics = run_training(cfg, run_dir, overrides=job["overrides"], splits=job["splits"],
                               record_uri=job.get("record_uri"))
        reply, code = ("ok", metrics), 0
    except TfscaleError as exc:
        reply = ("error", {"message": str(exc), "exit_code": exc.exit_code, "type": type(exc).__name__})
        code = exc.exit_code
    except KeyboardInterrupt as exc:
        reply, code = ("interrupted", None), supervisor.exit_code(exc)
    except Exception:  # noqa: BLE001 - reported to the parent, which raises TaskFailedError
        text = traceback.format_exc()
        sys.stderr.write(text)
        reply, code = ("crash", text), 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    _send(wfd, reply)
    return code
