"""``backend=ray``: one Ray actor per task of the cluster, each starting its task in a fresh process.

Ray Train's TensorflowTrainer writes only ``worker`` roles into TF_CONFIG, so tfscale places plain actors
itself: every actor asks for its role's resources (optionally inside a placement group), reports its node
IP and a free port there, and only then — with every address known — the full TF_CONFIG (chief, worker,
ps; the evaluator beside the cluster) is built by :mod:`strategies.tf_config` and each actor starts
``python -m orchestrator.launch.task_main RUN_DIR`` with it. The task runs in its own process so that its
topology is applied before TensorFlow initialises; the actor relays its output, which the driver writes to
``RUN_DIR/tasks/<role>-<index>.log``. Supervision and restarts are :class:`ClusterBackend`'s.

On a cluster tfscale did not start (see :mod:`orchestrator.launch.ray_session`) the project's code travels
as a Ray ``runtime_env``, and the task command is built on the node (its interpreter, its copy of the
packages). When the tasks cannot see this machine's files — several nodes, or Ray Client — the run lives in
a bucket: ``RUN_DIR`` is the run's URI, each task works in a scratch directory on its node and the chief
uploads its record there (:mod:`orchestrator.launch.task_main`); a local ``runs_dir`` or
``export.model_base`` is then a config error, raised once attached and before anything trains.
``provenance.json`` records the node ID and host of every task.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from orchestrator.artifacts import storage
from orchestrator.launch.processes import (ClusterBackend, TaskHandle, _Echo, task_environment)
from orchestrator.errors import ConfigError, TaskFailedError
from strategies import tf_config
from strategies.tf_config import TaskSpec

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

log = logging.getLogger(__name__)

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")
_ADDRESS = re.compile(r"^(auto|ray://[^\s:/]+:\d+|[^\s:/]+:\d+)$")
RPC_TIMEOUT_S = 30.0


class TaskActor:
    """Holds one task's resources on its node and runs the task there in a child process."""

    def __init__(self):
        self.proc = None
        self.log_path = None
        self.offset = 0
        self.scratch = None

    def address(self, port: int = 0) -> str:
        """``node_ip:port`` this task will listen on (a free port unless one is given)."""
        import ray

        from orchestrator.launch.processes import free_port

        ip = ray.util.get_node_ip_address()
        return f"{ip}:{port or free_port('0.0.0.0')}"

    def node(self) -> Dict[str, Any]:
        """The node this actor (and so its task) runs on: node ID, IP, host, and where its tfscale code came from."""
        from orchestrator.launch.ray_session import node_facts

        return {**node_facts(), "code": str(Path(__file__).resolve().parents[2])}

    def start(self, location: str, extra_env: Dict[str, str], cwd: str) -> int:
        """Start ``python -m orchestrator.launch.task_main LOCATION`` with this node's interpreter and packages.

        ``PYTHONPATH`` is this worker's: on a node without tfscale it holds the packages Ray's runtime_env
        unpacked. A ``LOCATION`` that is a URI gets a scratch directory on this node, also its working
        directory (removed by :meth:`cleanup`); a local one runs in ``cwd`` when this node has it.
        """
        import tempfile

        from orchestrator.launch.ray_session import NODE_ENV, node_facts
        from orchestrator.runtime import supervisor

        argv = [sys.executable, "-m", "orchestrator.launch.task_main", location]
        if storage.is_remote(location):
            self.scratch = tempfile.mkdtemp(prefix="tfscale-task-")
            argv += ["--scratch", self.scratch]
            cwd = self.scratch
        fd, self.log_path = tempfile.mkstemp(prefix="tfscale-task-", suffix=".log")
        env = dict(os.environ)
        env.update(extra_env)
        root = str(Path(__file__).resolve().parents[2])  # where this worker imported orchestrator from
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env[NODE_ENV] = json.dumps(node_facts())
        self.offset = 0
        try:
            self.proc = supervisor.start(argv, env=env, cwd=cwd if os.path.isdir(cwd) else None, stdout=fd,
                                         stderr=supervisor.STDOUT)
        finally:
            os.close(fd)
        return self.proc.pid

    def poll(self):
        """(exit code or None, output written since the last poll)."""
        code = self.proc.poll() if self.proc else None
        data = b""
        if self.log_path:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            self.offset += len(data)
        return code, data

    def stop(self, timeout: float) -> Optional[int]:
        if self.proc is None:
            return None
        return self.proc.stop(timeout)

    def cleanup(self) -> None:
        import shutil

        if self.log_path and os.path.exists(self.log_path):
            os.unlink(self.log_path)
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


_REMOTE_ACTOR = None


def remote_actor() -> Any:
    """:class:`TaskActor` as a Ray actor class (Ray is imported only once the backend runs)."""
    global _REMOTE_ACTOR
    if _REMOTE_ACTOR is None:
        import ray

        _REMOTE_ACTOR = ray.remote(max_restarts=0)(TaskActor)
    return _REMOTE_ACTOR


class ActorTask(TaskHandle):
    """A task started by a Ray actor; polls relay its output into the run's task log."""

    def __init__(self, task: TaskSpec, actor: Any, log_path: Path, stream: bool):
        super().__init__(task, log_path)
        self.actor = actor
        self._echo = _Echo(task, log_path, stream)
        self._code: Optional[int] = None

    def poll(self) -> Optional[int]:
        import ray

        if self._code is not None:
            return self._code
        try:
            code, data = ray.get(self.actor.poll.remote(), timeout=RPC_TIMEOUT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            # The actor (or its node) is gone: report it like a killed task so the job can restart.
            self._echo.write(f"\ntfscale: actor of {self.task.name} lost: {exc}\n".encode())
            self._code = -9
            return self._code
        self._echo.write(data)
        self._code = code
        return code

    def stop(self, timeout: float) -> None:
        import ray

        try:
            ray.get(self.actor.stop.remote(timeout), timeout=timeout + RPC_TIMEOUT_S)
            _, data = ray.get(self.actor.poll.remote(), timeout=RPC_TIMEOUT_S)
            self._echo.write(data)
            ray.get(self.actor.cleanup.remote(), timeout=RPC_TIMEOUT_S)
        except Exception as exc:  # the actor may already be dead; it is killed below either way
            log.debug("stopping %s: %s", self.task.name, exc)
        finally:
            ray.kill(self.actor, no_restart=True)
            self._echo.close()


class RayBackend(ClusterBackend):
    """The cluster's tasks as Ray actors (a local Ray by default, or an existing cluster)."""

    name = "ray"

    def __init__(self):
        self._started_ray = False
        self._pg = None
        self._location: Any = None  # what the tasks are given: the run directory, or the run's URI
        self._placed: Dict[str, Dict[str, Any]] = {}

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        b = cfg.backend
        if b.ray_address is not None and not _ADDRESS.match(str(b.ray_address)):
            raise ConfigError("backend.ray_address", b.ray_address, "Use null (start a local Ray), 'auto', 'host:port' or 'ray://host:port'.")
        address = os.environ.get("RAY_ADDRESS")
        if b.ray_address is None and address and not _ADDRESS.match(address):
            raise ConfigError("RAY_ADDRESS", address, "Use 'auto', 'host:port' or 'ray://host:port', or unset it.")
        if any(not str(r).strip() for r in b.runtime_env.pip):
            raise ConfigError("backend.runtime_env.pip", list(b.runtime_env.pip), "Give pip requirement strings, e.g. ['tensorflow==2.21.*'].")
        if b.placement_strategy is not None and b.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError("backend.placement_strategy", b.placement_strategy, f"Use one of: {', '.join(PLACEMENT_STRATEGIES)}, or null for no placement group.")
        if b.ray_num_cpus is not None and b.ray_num_cpus < 1:
            raise ConfigError("backend.ray_num_cpus", b.ray_num_cpus, "Give a positive CPU count, or null.")

    # ------------------------------------------------------------------------------------------ Ray
    def prepare(self, cfg: ExperimentConfig, run_dir: Path, tasks: List[TaskSpec]) -> None:
        import ray

        from orchestrator.launch import ray_session

        b = cfg.backend
        address = str(b.ray_address) if b.ray_address else None
        attached = ray_session.attaches(address)
        if not ray.is_initialized():
            # Task processes are ordinary processes on this machine: offer a local Ray at least the CPUs the
            # roles ask for, so a cluster bigger than the core count still gets scheduled.
            wanted = sum(t.cpus for t in tasks)
            runtime_env = None
            if attached:
                r = b.runtime_env
                runtime_env = ray_session.project_runtime_env(list(r.pip), dict(r.env_vars)) if r.py_modules else \
                    {k: v for k, v in (("pip", list(r.pip)), ("env_vars", dict(r.env_vars))) if v} or None
            ray_session.connect(address, int(b.ray_num_cpus or max(os.cpu_count() or 1, -(-wanted // 1))),
                                runtime_env=runtime_env)
            self._started_ray = not attached
        if attached:
            _check_fits(cfg, tasks, ray_session.alive_nodes())
        self._location = self._where_tasks_keep_the_run(cfg, run_dir, address)
        if b.placement_strategy:
            from ray.util.placement_group import placement_group

            self._pg = placement_group([_bundle(t) for t in tasks], strategy=str(b.placement_strategy))
            try:
                ray.get(self._pg.ready(), timeout=float(b.start_timeout_s))
            except ray.exceptions.GetTimeoutError:
                raise TaskFailedError(f"Ray could not place {len(tasks)} tasks ({[_bundle(t) for t in tasks]}) with "
                                      f"placement_strategy={b.placement_strategy} within {b.start_timeout_s}s; "
                                      f"cluster resources: {ray.cluster_resources()}") from None

    def _where_tasks_keep_the_run(self, cfg: ExperimentConfig, run_dir: Path, address: Optional[str]) -> Any:
        """The run directory when every task sees it, else the run's URI (a local one is a config error)."""
        from orchestrator.artifacts.run_record import RunRecord
        from orchestrator.launch import ray_session

        if ray_session.shares_this_filesystem(address):
            return Path(run_dir).resolve()
        nodes = ray_session.alive_nodes()
        where = (f"The Ray cluster at {ray_session.address_of(address)} has {len(nodes)} node(s)"
                 + (" and is reached through Ray Client" if str(ray_session.address_of(address)).startswith("ray://") else "")
                 + ", which do not share this machine's files")
        # No run URI: this run's directory is a local one (the runs_dir given, or a study trial's directory).
        local = {"runs_dir": self.run_uri or (str(run_dir) if storage.is_remote(cfg.runs_dir) else str(cfg.runs_dir))}
        if cfg.export.enabled:
            local["export.model_base"] = str(cfg.export.model_base)
        for key, value in local.items():
            if not storage.is_remote(value):
                raise ConfigError(key, value, f"{where}: give a storage URI, e.g. runs_dir=gs://BUCKET/runs "
                                  "export.model_base=gs://BUCKET/models (s3:// works too).")
        from orchestrator.training.roles import has_evaluator

        if has_evaluator(cfg):
            raise ConfigError("cluster.evaluator.count", 1, f"{where}, and the evaluator reads the chief's checkpoints "
                              "from its directory: drop the evaluator (e.g. cluster=ps_2x1) or use a single-node cluster.")
        RunRecord(self.run_uri).write_config(cfg)  # what every task starts from, before any starts
        return self.run_uri

    def record_dir(self, run_dir: Path) -> Any:
        return self._location if self._location is not None else run_dir

    def task_facts(self) -> Dict[str, Any]:
        return dict(self._placed)

    def _actor(self, cfg: ExperimentConfig, task: TaskSpec, position: int) -> Any:
        options: Dict[str, Any] = {"num_cpus": task.cpus, "num_gpus": task.gpus}
        if task.memory_mb:
            options["memory"] = int(task.memory_mb) * 1024 * 1024
        if self._pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=self._pg, placement_group_bundle_index=position)
        elif task.fixed_port and not tf_config.is_loopback(task.address):
            # A declared host pins the task to that node (Ray's built-in node:<ip> resource).
            options["resources"] = {f"node:{tf_config.split_address(task.address)[0]}": 0.001}
        return remote_actor().options(**options).remote()

    def launch(self, cfg: ExperimentConfig, run_dir: Path, tasks: List[TaskSpec], attempt: int) -> List[TaskHandle]:
        import ray

        actors = [self._actor(cfg, t, i) for i, t in enumerate(tasks)]
        handles: List[TaskHandle] = []
        try:
            ports = [tf_config.split_address(t.address)[1] if t.fixed_port else 0 for t in tasks]
            refs = [a.address.remote(p) for a, p in zip(actors, ports)]
            try:
                found = ray.get(refs, timeout=float(cfg.backend.start_timeout_s))
            except ray.exceptions.GetTimeoutError:
                raise TaskFailedError(f"Ray did not schedule the {len(tasks)} task actors within backend.start_timeout_s="
                                      f"{cfg.backend.start_timeout_s}s (asked: {[_bundle(t) for t in tasks]}; "
                                      f"available: {ray.available_resources()}).") from None
            addresses = {t.name: a for t, a in zip(tasks, found)}
            nodes = ray.get([a.node.remote() for a in actors], timeout=RPC_TIMEOUT_S)
            self._placed = {t.name: {**n, "address": addresses[t.name]} for t, n in zip(tasks, nodes)}
            configs = tf_config.tf_configs(tasks, addresses)
            for t, actor in zip(tasks, actors):
                log_path = run_dir / "tasks" / f"{t.slug}.log"
                if attempt:
                    with open(log_path, "ab") as f:
                        f.write(f"\n===== tfscale: restart {attempt} =====\n".encode())
                env = task_environment({}, configs[t.name], attempt)
                env.pop("PYTHONPATH")  # the node's own (see TaskActor.start)
                handle = ActorTask(t, actor, log_path, bool(cfg.backend.stream_logs))
                handles.append(handle)
                pid = ray.get(actor.start.remote(str(self._location), env, os.getcwd()), timeout=RPC_TIMEOUT_S)
                log.info("started %s (pid %d) at %s on node %s", t.name, pid, addresses[t.name],
                         self._placed[t.name]["node_id"][:12])
        except BaseException:
            started = {id(h.actor) for h in handles}
            for h in handles:
                h.stop(float(cfg.backend.stop_timeout_s))
            for a in actors:
                if id(a) not in started:
                    ray.kill(a, no_restart=True)
            raise
        return handles

    def release(self) -> None:
        import ray

        try:
            if self._pg is not None:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self._pg)
                self._pg = None
        finally:
            if self._started_ray or ray.is_initialized():
                # Our own local Ray stops with us; for an existing cluster this only disconnects.
                ray.shutdown()
            self._started_ray = False


def _check_fits(cfg: ExperimentConfig, tasks: List[TaskSpec], nodes: List[Dict[str, Any]]) -> None:
    """Refuse, before anything starts, a job whose tasks ask for more CPUs/GPUs than the cluster has.

    Ray would otherwise keep the actors pending until ``backend.start_timeout_s``.
    """
    for kind, unit in (("cpus", "CPUs"), ("gpus", "GPUs")):
        per_node = [n[kind] for n in nodes]
        asked = {t.name: float(getattr(t, kind) or 0) for t in tasks}
        largest = max(per_node, default=0.0)
        for t in tasks:
            if asked[t.name] > largest + 1e-9:
                raise ConfigError(f"cluster.{t.role}.{kind}", asked[t.name], f"No node of the Ray cluster has {asked[t.name]:g} {unit} "
                                  f"(largest: {largest:g}); ask for at most {largest:g} per task (fractions are allowed).")
        total = sum(asked.values())
        if total > sum(per_node) + 1e-9:
            detail = ", ".join(f"{name} {value:g}" for name, value in asked.items())
            raise ConfigError("cluster", cfg.cluster.name, f"Its {len(tasks)} tasks ask for {total:g} {unit} ({detail}) but the "
                              f"Ray cluster has {sum(per_node):g} on {len(nodes)} node(s) ({', '.join(f'{c:g}' for c in per_node)}). "
                              f"Lower cluster.<role>.{kind} (fractions are allowed, e.g. cluster.worker.{kind}=0.5) or add nodes.")


def _bundle(task: TaskSpec) -> Dict[str, float]:
    bundle = {"CPU": task.cpus or 0.01}
    if task.gpus:
        bundle["GPU"] = task.gpus
    return bundle
