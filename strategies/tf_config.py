"""The one TF_CONFIG builder: cluster config + task identity → the JSON every backend sets.

A TensorFlow cluster is a set of tasks, each with a type (``chief``, ``worker``, ``ps``, ``evaluator``) and an
index, told the whole cluster and its own identity through ``TF_CONFIG``. tfscale declares it in the
``cluster`` group in one of two forms:

* role counts with per-role resources (``cluster.worker.count: 2``), optionally with explicit addresses
  (``cluster.worker.hosts: ["10.0.0.2:2222", ...]``);
* TensorFlow's plain dict form, as is: ``cluster.spec: {worker: ["a:2222", "b:2222"], ps: ["a:2221"]}``.

Addresses with port ``0`` mean "pick a free port when the task is launched". The evaluator follows
TensorFlow's convention: it gets ``task.type = evaluator`` but is never listed in the cluster dict the
training tasks see (a training strategy would otherwise wait for it to join its collectives).

Everything here runs before TensorFlow is imported: :func:`check_cluster` rejects a bad cluster with a
:class:`ConfigError` naming the field, the value and the fix.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from orchestrator.errors import ConfigError
from strategies.base import ClusterSettings, ExperimentSettings

ROLES = ("chief", "worker", "ps", "evaluator")
TRAINING_ROLES = ("chief", "worker", "ps")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class TaskSpec:
    """One task of the cluster: its identity, the resources of its role and a declared address (if any)."""

    role: str
    index: int
    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: Optional[int] = None
    topology: Optional[Dict[str, Any]] = None
    address: Optional[str] = None  # declared host:port; None or port 0 = chosen at launch

    @property
    def name(self) -> str:
        """``worker:1`` — how logs and errors name the task."""
        return f"{self.role}:{self.index}"

    @property
    def slug(self) -> str:
        """``worker-1`` — the task's file name in ``RUN_DIR/tasks/``."""
        return f"{self.role}-{self.index}"

    @property
    def fixed_port(self) -> bool:
        return self.address is not None and split_address(self.address)[1] != 0


def split_address(address: str) -> Tuple[str, int]:
    """``host:port`` → (host, port); ValueError if malformed."""
    m = _ADDRESS.match(str(address))
    if not m or int(m.group("port")) > 65535:
        raise ValueError(address)
    return m.group("host"), int(m.group("port"))


def is_loopback(address: str) -> bool:
    host = split_address(address)[0]
    return host in LOOPBACK_HOSTS or host.startswith("127.")


# ---------------------------------------------------------------------------------------- reading
def _plain(value: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # omegaconf is a dependency; plain dicts also work without it
        pass
    return value


def declared_hosts(cluster: ClusterSettings) -> Dict[str, List[str]]:
    """Addresses declared per role: ``cluster.spec`` as is, plus any ``cluster.<role>.hosts`` lists."""
    hosts: Dict[str, List[str]] = {}
    spec = _plain(cluster.spec) or {}
    for role, addresses in spec.items():
        hosts[str(role)] = [str(a) for a in (addresses or [])]
    for role in ROLES:
        node = getattr(cluster, role)
        if node.hosts:
            hosts[role] = [str(a) for a in node.hosts]
    return hosts


def role_counts(cluster: ClusterSettings) -> Dict[str, int]:
    """Number of tasks per role (evaluator included), from ``spec``, ``hosts`` or the role counts."""
    counts: Dict[str, int] = {}
    hosts = declared_hosts(cluster)
    for role in ROLES:
        n = len(hosts[role]) if role in hosts else getattr(cluster, role).count
        if n:
            counts[role] = n
    return counts


def cluster_from_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    """Role counts of a cluster announced through TF_CONFIG (by a backend or a platform), or {}.

    The evaluator is counted from ``task.type`` because TensorFlow's convention keeps it out of the
    cluster dict.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not raw:
        return {}
    try:
        conf = json.loads(raw)
    except ValueError:
        return {}
    counts = {role: len(hosts) for role, hosts in (conf.get("cluster") or {}).items() if hosts}
    if (conf.get("task") or {}).get("type") == "evaluator":
        counts["evaluator"] = max(1, counts.get("evaluator", 0))
    return counts


def has_cluster(cluster: ClusterSettings) -> bool:
    """Whether the config declares a cluster at all (``cluster=none`` declares no task)."""
    return bool(role_counts(cluster))


def plan_tasks(cluster: ClusterSettings) -> List[TaskSpec]:
    """Every task of the cluster in launch order (ps first, so workers find their servers up)."""
    hosts = declared_hosts(cluster)
    counts = role_counts(cluster)
    tasks = []
    for role in ("ps", "chief", "worker", "evaluator"):
        node = getattr(cluster, role)
        topology = _plain(node.topology)
        for i in range(counts.get(role, 0)):
            address = hosts[role][i] if role in hosts else None
            tasks.append(TaskSpec(role=role, index=i, cpus=node.cpus, gpus=node.gpus,
                                  memory_mb=node.memory_mb, topology=topology, address=address))
    return tasks


# ------------------------------------------------------------------------------------- validation
def check_cluster(cfg: ExperimentSettings) -> Dict[str, int]:
    """Check the ``cluster`` group on its own; return the role counts.

    Raises ConfigError on: unknown roles, spec and role counts both given, malformed or duplicate
    addresses, more than one chief or evaluator, an evaluator inside the training cluster, negative
    resources and role topologies that do not merge. Whether the roles fit the strategy is the
    strategy's own ``check``.
    """
    c = cfg.cluster
    spec = _plain(c.spec) or {}
    unknown = sorted(set(spec) - set(ROLES))
    if unknown:
        raise ConfigError("cluster.spec", spec, f"Unknown role(s) {unknown}; TF_CONFIG roles are {', '.join(TRAINING_ROLES)} (and evaluator, declared separately).")
    if "evaluator" in spec:
        raise ConfigError("cluster.spec", spec,
                          "An evaluator is not part of the training cluster TensorFlow sees (it gets TF_CONFIG with task.type=evaluator "
                          "and the cluster without itself). Remove 'evaluator' from cluster.spec and set cluster.evaluator.count=1.")
    for role in ROLES:
        node = getattr(c, role)
        if node.count < 0:
            raise ConfigError(f"cluster.{role}.count", node.count, "Use 0 or more tasks.")
        if node.cpus < 0 or node.gpus < 0 or (node.memory_mb is not None and node.memory_mb <= 0):
            raise ConfigError(f"cluster.{role}.cpus", node.cpus, f"Resources of a role must be >= 0 (cpus={node.cpus}, gpus={node.gpus}) and memory_mb positive or null.")
        if role in spec and (node.count or node.hosts):
            raise ConfigError(f"cluster.{role}.count", node.count or list(node.hosts),
                              f"cluster.spec already lists the {role} tasks; declare them in one place: remove cluster.{role}.count/hosts, or remove '{role}' from cluster.spec.")
        if node.hosts and node.count and node.count != len(node.hosts):
            raise ConfigError(f"cluster.{role}.count", node.count,
                              f"cluster.{role}.hosts lists {len(node.hosts)} address(es) but count is {node.count}; set count={len(node.hosts)} or 0 (count follows hosts).")
    seen: Dict[str, str] = {}
    for role, addresses in declared_hosts(c).items():
        key = "cluster.spec" if role in spec else f"cluster.{role}.hosts"
        if not addresses:
            raise ConfigError(key, addresses, f"The {role} list is empty; list at least one host:port or remove the role.")
        for i, address in enumerate(addresses):
            try:
                split_address(address)
            except ValueError:
                raise ConfigError(f"{key}" + (f".{role}" if key == "cluster.spec" else "") + f"[{i}]", address,
                                  "Give the address as host:port with a port in 0..65535, e.g. 127.0.0.1:2222 (port 0 = pick a free port at launch).") from None
            if split_address(address)[1] == 0:
                continue
            if address in seen:
                raise ConfigError(key, address,
                                  f"{address} is used by both {seen[address]} and {role}:{i}; every task needs its own host:port.")
            seen[address] = f"{role}:{i}"
    counts = role_counts(c)
    if counts.get("chief", 0) > 1:
        raise ConfigError("cluster.chief.count", counts["chief"], "A TensorFlow cluster has at most one chief (it exports and writes the run's metrics); set it to 1 and make the others workers.")
    if counts.get("evaluator", 0) > 1:
        raise ConfigError("cluster.evaluator.count", counts["evaluator"], "TensorFlow runs a single evaluator task beside the cluster; set it to 0 or 1.")
    if counts and not (counts.get("chief", 0) + counts.get("worker", 0)):
        raise ConfigError("cluster.worker.count", 0, "The cluster has no training task: add workers (cluster.worker.count=2) or a chief.")
    for role in ROLES:
        topo = getattr(c, role).topology
        if counts.get(role) and topo:
            check_role_topology(cfg, role)
    return counts


def describe_counts(counts: Mapping[str, int]) -> str:
    """``2 worker, 1 ps`` — role counts for messages."""
    return ", ".join(f"{n} {r}" for r, n in counts.items())


def role_topology(cfg: ExperimentSettings, role: str) -> Any:
    """The topology a task of ``role`` applies: the topology group with the role's overrides merged in
    (a node of the same schema as ``cfg.topology``)."""
    overrides = getattr(cfg.cluster, role).topology if role in ROLES else None
    if not overrides:
        return cfg.topology
    from omegaconf import OmegaConf

    return OmegaConf.merge(cfg.topology, _plain(overrides))


def check_role_topology(cfg: ExperimentSettings, role: str) -> Any:
    """The merged topology of ``role``; ConfigError naming ``cluster.<role>.topology`` if it does not merge."""
    try:
        return role_topology(cfg, role)
    except Exception as exc:  # OmegaConf raises for unknown keys / wrong types of the topology schema
        raise ConfigError(f"cluster.{role}.topology", _plain(getattr(cfg.cluster, role).topology),
                          f"{str(exc).splitlines()[0]}. Use keys of the topology group, e.g. {{cpu_devices: 2}}.") from None


def check_local_hosts(cfg: ExperimentSettings, backend: str) -> None:
    """A backend that launches on this machine can only bind loopback addresses."""
    for role, addresses in declared_hosts(cfg.cluster).items():
        for address in addresses:
            if not is_loopback(address):
                key = "cluster.spec" if role in (_plain(cfg.cluster.spec) or {}) else f"cluster.{role}.hosts"
                raise ConfigError(key, address,
                                  f"backend={backend} starts every task on this machine, so it can only bind 127.0.0.1/localhost; "
                                  "use loopback addresses (port 0 = any free port), or backend=ray to place tasks on other hosts.")


# ---------------------------------------------------------------------------------------- building
def cluster_dict(addresses: Mapping[str, str], tasks: List[TaskSpec]) -> Dict[str, List[str]]:
    """The cluster dict TensorFlow sees: training roles only, each list ordered by task index.

    ``addresses`` maps task names (``worker:1``) to the host:port each task listens on.
    """
    spec: Dict[str, List[str]] = {}
    for role in TRAINING_ROLES:
        members = sorted((t for t in tasks if t.role == role), key=lambda t: t.index)
        if members:
            spec[role] = [addresses[t.name] for t in members]
    return spec


def tf_config(cluster: Mapping[str, List[str]], role: str, index: int) -> Dict[str, Any]:
    """TF_CONFIG of one task. The evaluator gets the cluster without itself, as TensorFlow expects."""
    if role not in ROLES:
        raise ValueError(f"unknown task type {role!r}")
    if role != "evaluator" and index >= len(cluster.get(role, [])):
        raise ValueError(f"{role}:{index} is not in the cluster {dict(cluster)}")
    return {"cluster": {r: list(a) for r, a in cluster.items() if r != "evaluator"},
            "task": {"type": role, "index": int(index)}}


def tf_config_json(cluster: Mapping[str, List[str]], role: str, index: int) -> str:
    """:func:`tf_config` as the JSON string of the ``TF_CONFIG`` environment variable."""
    return json.dumps(tf_config(cluster, role, index), sort_keys=True)


def assign_addresses(tasks: List[TaskSpec], pick: Callable[[TaskSpec], str]) -> Dict[str, str]:
    """Address of every task: the declared one, or ``pick(task)`` (e.g. a free port) where none is fixed."""
    return {t.name: t.address if t.fixed_port else pick(t) for t in tasks}


def tf_configs(tasks: List[TaskSpec], addresses: Mapping[str, str]) -> Dict[str, str]:
    """TF_CONFIG JSON of every task, keyed by task name."""
    cluster = cluster_dict(addresses, tasks)
    return {t.name: tf_config_json(cluster, t.role, t.index) for t in tasks}
