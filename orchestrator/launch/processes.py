"""``backend=processes``: every task of the cluster is its own OS process on this machine.

The supervision of a cluster job — launch every task with its TF_CONFIG, watch them, restart the job after
a task died (``backend.max_restarts``), stop everything at the end — is the same wherever the tasks run, so
it lives here in :class:`ClusterBackend`; this module's :class:`ProcessesBackend` starts tasks as local
child processes and ``backend=ray`` (``ray_backend.py``) starts them from Ray actors.

A job is done when its training tasks finished: every chief and worker task, except those of the roles the
strategy runs as servers (``Strategy.server_roles``: the ps and worker tasks of parameter_server), which
never end by themselves and are stopped then; the evaluator gets ``backend.evaluator_grace_s`` to evaluate
the last checkpoint.
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import sys
import threading
import time
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from orchestrator.launch.base import Backend
from orchestrator.errors import ConfigError, TaskFailedError
from orchestrator.runtime import supervisor
from orchestrator.artifacts import storage
from orchestrator.artifacts.run_record import RunRecord
import strategies
from strategies import tf_config
from strategies.tf_config import TaskSpec

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

log = logging.getLogger(__name__)

#: Seconds the other tasks of a job get between SIGTERM and SIGKILL once one of its tasks died (at most
#: ``backend.stop_timeout_s``): a restart begins seconds after a failure instead of a full stop timeout later.
FAILED_JOB_GRACE_S = 2.0

ATTEMPT_ENV = "TFSCALE_ATTEMPT"
POLL_SECONDS = 0.2
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def task_command(run_dir: Path) -> List[str]:
    """The command every task runs: the task entry point on the run directory."""
    return [sys.executable, "-m", "orchestrator.launch.task_main", str(Path(run_dir).resolve())]


def task_environment(base: Dict[str, str], tf_config_json: str, attempt: int) -> Dict[str, str]:
    """Environment of a task process: the caller's, plus its TF_CONFIG and the restart attempt."""
    env = dict(base)
    env["TF_CONFIG"] = tf_config_json
    env[ATTEMPT_ENV] = str(attempt)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the task log as they are printed
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the task binds it a moment later)."""
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def log_tail(path: Path, chars: int = 2000) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


class _Echo:
    """Writes a task's output to its log file and, line by line with a ``[role:index]`` prefix, to stdout."""

    _lock = threading.Lock()

    def __init__(self, task: TaskSpec, log_path: Path, stream: bool):
        self.prefix = f"[{task.name}] "
        self.file = open(log_path, "ab")
        self.stream = stream
        self._partial = b""

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.file.write(data)
        self.file.flush()
        if not self.stream:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if lines:
            text = "".join(self.prefix + line.decode(errors="replace") + "\n" for line in lines)
            with self._lock:
                sys.stdout.write(text)
                sys.stdout.flush()

    def close(self) -> None:
        if self._partial and self.stream:
            self.write(b"\n")
        self.file.close()


class TaskHandle:
    """A launched task, wherever it runs."""

    def __init__(self, task: TaskSpec, log_path: Path):
        self.task = task
        self.log_path = log_path

    @abstractmethod
    def poll(self) -> Optional[int]:
        """The task's exit code, or None while it runs (also moves its new output into the log)."""

    @abstractmethod
    def stop(self, timeout: float) -> None:
        """Terminate the task and everything it started (SIGTERM, SIGKILL after ``timeout``)."""

    def terminate(self) -> bool:
        """Ask the task to stop (SIGTERM) without waiting, where that can be done at once; :meth:`stop` follows.
        True if it was asked (or had ended)."""
        return False


class ClusterBackend(Backend):
    """Launches the cluster's tasks, supervises them and restarts the job after a task died.

    Subclasses say how tasks get addresses and how they are started (:meth:`prepare`, :meth:`launch`) and
    what to release at the end (:meth:`release`).
    """

    launches_clusters = True
    #: The run's URI when its record is kept in a bucket (set by :meth:`run`; see :meth:`Backend.run`).
    run_uri: Optional[str] = None

    def check(self, cfg: ExperimentConfig) -> None:
        if not tf_config.has_cluster(cfg.cluster) and cfg.cluster.name != "none":
            # A cluster group was chosen and its counts were set to 0: name the count, not the group.
            example = {"workers_2": 2, "chief_workers_2": 2}.get(str(cfg.cluster.name), 1)
            raise ConfigError("cluster.worker.count", cfg.cluster.worker.count,
                              f"cluster={cfg.cluster.name} now declares no task, and backend={self.name} launches the "
                              f"cluster's tasks: use at least 1 worker (e.g. cluster.worker.count={example}), or "
                              "backend=local for a single process.")
        if not tf_config.has_cluster(cfg.cluster):
            raise ConfigError("cluster", cfg.cluster.name,
                              f"backend={self.name} launches a TensorFlow cluster, but none is declared. Choose one, e.g. "
                              "`cluster=workers_2 strategy=multi_worker_mirrored` or `cluster=ps_2x1 strategy=parameter_server`; "
                              "for a single process use backend=local.")
        tf_config.check_cluster(cfg)
        b = cfg.backend
        for key in ("start_timeout_s", "stop_timeout_s", "evaluator_grace_s"):
            if getattr(b, key) < 0:
                raise ConfigError(f"backend.{key}", getattr(b, key), "Use a duration in seconds >= 0.")

    # ------------------------------------------------------------------ what subclasses provide
    def prepare(self, cfg: ExperimentConfig, run_dir: Path, tasks: List[TaskSpec]) -> None:
        """Acquire what the job's tasks run on (called once per job)."""

    @abstractmethod
    def launch(self, cfg: ExperimentConfig, run_dir: Path, tasks: List[TaskSpec], attempt: int) -> List[TaskHandle]:
        """Start every task of one attempt with its TF_CONFIG; return their handles."""

    def release(self) -> None:
        """Release what :meth:`prepare` acquired (called once, also after failure or Ctrl-C)."""

    def record_dir(self, run_dir: Path) -> Any:
        """Where the tasks write the run record (the chief's metrics): ``run_dir`` unless they cannot see it."""
        return run_dir

    def task_facts(self) -> Dict[str, Any]:
        """Per task, where it ran (added to ``provenance.json`` under ``tasks``); {} when there is nothing to add."""
        return {}

    # ------------------------------------------------------------------------------ supervision
    def run(self, cfg: ExperimentConfig, run_dir: Path, *, run_uri: Optional[str] = None) -> Dict[str, Any]:
        run_dir = Path(run_dir)
        (run_dir / "tasks").mkdir(parents=True, exist_ok=True)
        self.run_uri = run_uri
        tasks = tf_config.plan_tasks(cfg.cluster)
        handles: List[TaskHandle] = []
        restarts = 0

        def stop_all(grace: Optional[float] = None) -> None:
            # Tasks that can be told at once are, and then share one deadline: a task blocked in a collective op
            # waits for its peers, which must not wait their turn behind it. Others get the grace each.
            grace = float(cfg.backend.stop_timeout_s) if grace is None else grace
            told = True
            for h in handles:
                try:
                    told = h.terminate() and told
                except Exception as exc:
                    told = False
                    log.warning("stopping %s: %s", h.task.name, exc)
            deadline = time.monotonic() + grace
            for h in handles:
                try:
                    h.stop(max(0.0, deadline - time.monotonic()) if told else grace)
                except Exception as exc:  # keep stopping the others whatever one of them raised
                    log.warning("stopping %s: %s", h.task.name, exc)
            handles.clear()

        atexit.register(stop_all)
        supervisor.install_signal_handlers()  # SIGTERM unwinds like Ctrl-C, through stop_all below
        try:
            self.prepare(cfg, run_dir, tasks)
            while True:
                handles.extend(self.launch(cfg, run_dir, tasks, restarts))
                failure = self._supervise(cfg, handles)
                # After a task died the others are not waited for long: the tasks of a synchronous job block in
                # collective ops that never return (SIGTERM cannot unwind them), and the job restarts from its
                # last backup (or fails) whatever they do now.
                stop_all(None if failure is None else min(float(cfg.backend.stop_timeout_s), FAILED_JOB_GRACE_S))
                if failure is None:
                    break
                handle, code = failure
                if restarts >= int(cfg.backend.max_restarts):
                    more = f" after {restarts} restart(s)" if restarts else ""
                    raise TaskFailedError(f"Task {handle.task.name} {describe_exit(code)}{more}. See its log: {handle.log_path}\n"
                                          f"{log_tail(handle.log_path)}")
                restarts += 1
                log.warning("task %s %s; restarting the job's tasks from the last backup (restart %d of %d)",
                            handle.task.name, describe_exit(code), restarts, cfg.backend.max_restarts)
                print(f"tfscale: task {handle.task.name} {describe_exit(code)}; restart {restarts}/{cfg.backend.max_restarts}",
                      flush=True)
        finally:
            stop_all()
            try:
                self.release()
            finally:
                atexit.unregister(stop_all)
        record = RunRecord(self.record_dir(run_dir))
        if record.metrics() is None:
            chief = _primary(tasks)
            raise TaskFailedError(f"The chief {chief.name} ended without writing {record.path('metrics.json')}. "
                                  f"See its log: {run_dir / 'tasks' / (chief.slug + '.log')}")
        placed = self.task_facts()
        if placed:
            record.add_provenance({"tasks": placed})
        # The logs' lasting place: the bucket when the run is kept there (tfscale uploads run_dir after this).
        logs = run_uri or run_dir
        return record.add_facts({"restarts": restarts, "backend": self.name,
                                 "tasks": {t.name: str(storage.join(logs, "tasks", f"{t.slug}.log")) for t in tasks}})

    def _supervise(self, cfg: ExperimentConfig, handles: Sequence[TaskHandle]) -> Optional[Tuple[TaskHandle, int]]:
        """Wait for the job to finish; return the first failed task and its exit code, or None on success."""
        servers = strategies.get(cfg.strategy.name).server_roles

        def trains(t: TaskSpec) -> bool:
            return t.role in ("chief", "worker") and t.role not in servers

        done_at: Optional[float] = None
        while True:
            codes = {h.task.name: h.poll() for h in handles}
            for h in handles:
                code = codes[h.task.name]
                if code is None or (code == 0 and (trains(h.task) or h.task.role == "evaluator")):
                    continue
                # A server that returns, or any task that fails, ends this attempt.
                return h, code
            training_done = all(codes[h.task.name] == 0 for h in handles if trains(h.task))
            if training_done:
                evaluator = [h for h in handles if h.task.role == "evaluator" and codes[h.task.name] is None]
                if not evaluator:
                    return None
                done_at = done_at or time.monotonic()
                if time.monotonic() - done_at > cfg.backend.evaluator_grace_s:
                    log.warning("the evaluator did not finish within backend.evaluator_grace_s=%s after training; stopping it",
                                cfg.backend.evaluator_grace_s)
                    return None
            time.sleep(POLL_SECONDS)


def _primary(tasks: Sequence[TaskSpec]) -> TaskSpec:
    """The chief, or worker 0 when the cluster has no chief (TensorFlow's rule)."""
    for role in ("chief", "worker"):
        for t in tasks:
            if t.role == role and t.index == 0:
                return t
    return tasks[0]


# ------------------------------------------------------------------------------------- processes
class LocalProcess(TaskHandle):
    """A task as a child process in its own process group (see the supervisor), its output pumped into the task log."""

    def __init__(self, task: TaskSpec, argv: List[str], env: Dict[str, str], log_path: Path, *, stream: bool,
                 cwd: Optional[str] = None):
        super().__init__(task, log_path)
        self._echo = _Echo(task, log_path, stream)
        self.child = supervisor.start(argv, env=env, cwd=cwd, stdout=supervisor.PIPE, stderr=supervisor.STDOUT)
        self._reader = threading.Thread(target=self._pump, name=f"log-{task.slug}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        stream = self.child.stdout
        for chunk in iter(lambda: stream.read1(65536), b""):
            self._echo.write(chunk)

    @property
    def pid(self) -> int:
        return self.child.pid

    def poll(self) -> Optional[int]:
        code = self.child.poll()
        if code is not None:
            self._reader.join(timeout=5)
        return code

    def terminate(self) -> bool:
        if self.child.poll() is None:
            self.child.send(signal.SIGTERM)
        return True

    def stop(self, timeout: float) -> None:
        # Also kills what the task started in its group, even after the task itself exited.
        self.child.stop(timeout)
        self._reader.join(timeout=5)
        self._echo.close()


class ProcessesBackend(ClusterBackend):
    """Each task of the cluster in its own OS process on this machine, on free loopback ports."""

    name = "processes"

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        tf_config.check_local_hosts(cfg, self.name)

    def launch(self, cfg: ExperimentConfig, run_dir: Path, tasks: List[TaskSpec], attempt: int) -> List[TaskHandle]:
        host = str(cfg.cluster.host)
        addresses = tf_config.assign_addresses(tasks, lambda t: f"{host}:{free_port(host)}")
        configs = tf_config.tf_configs(tasks, addresses)
        handles: List[TaskHandle] = []
        for t in tasks:
            log_path = run_dir / "tasks" / f"{t.slug}.log"
            if attempt:
                with open(log_path, "ab") as f:
                    f.write(f"\n===== tfscale: restart {attempt} =====\n".encode())
            env = task_environment(os.environ, configs[t.name], attempt)
            handles.append(LocalProcess(t, task_command(run_dir), env, log_path, stream=bool(cfg.backend.stream_logs)))
            log.info("started %s (pid %d) at %s", t.name, handles[-1].pid, addresses[t.name])
        return handles
