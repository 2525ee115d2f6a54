"""The interface every tf.distribute strategy implements in tfscale.

A strategy answers three questions. Two are asked before TensorFlow is imported, during validation:
``check`` (can it run on this topology/cluster/backend? raise :class:`ConfigError` with the fix if not) and
``replicas`` (how many replicas a global batch is split across). The third, ``build``, runs in the task
process after the topology was applied and returns the ``tf.distribute.Strategy``. ``fit_input`` says what
``model.fit`` gets from the data; the class attributes say how the tasks of a cluster take part.

Strategies read the config through the Protocols below (the orchestrator's typed schema satisfies them),
so this package depends on nothing of the orchestrator but its error types.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, List, Mapping, NamedTuple, Optional, Protocol, Tuple

from strategies.devices import DevicePlan


# ------------------------------------------------------------------------- what strategies read
class StrategySettings(Protocol):
    """The ``strategy`` node: which strategy and its settings (each strategy reads only its own)."""

    @property
    def name(self) -> str: ...
    @property
    def device(self) -> Optional[str]: ...
    @property
    def devices(self) -> Optional[List[str]]: ...
    @property
    def cross_device_ops(self) -> str: ...
    @property
    def parameter_device(self) -> Optional[str]: ...
    @property
    def communication(self) -> str: ...
    @property
    def num_shards(self) -> int: ...
    @property
    def min_shard_bytes(self) -> int: ...
    @property
    def max_shards(self) -> int: ...
    @property
    def tpu(self) -> Optional[str]: ...
    @property
    def tpu_zone(self) -> Optional[str]: ...
    @property
    def tpu_project(self) -> Optional[str]: ...


class TopologySettings(Protocol):
    """The part of a ``topology`` node strategies read."""

    @property
    def cpu_devices(self) -> int: ...
    @property
    def inter_op_threads(self) -> int: ...
    @property
    def intra_op_threads(self) -> int: ...


class RoleSettings(Protocol):
    """One role of the ``cluster`` node: how many tasks (or their hosts), their resources and topology."""

    @property
    def count(self) -> int: ...
    @property
    def cpus(self) -> float: ...
    @property
    def gpus(self) -> float: ...
    @property
    def memory_mb(self) -> Optional[int]: ...
    @property
    def topology(self) -> Mapping[str, Any]: ...
    @property
    def hosts(self) -> Optional[List[str]]: ...


class ClusterSettings(Protocol):
    """The ``cluster`` node: role counts, or TensorFlow's plain ``spec`` dict."""

    @property
    def name(self) -> str: ...
    @property
    def chief(self) -> RoleSettings: ...
    @property
    def worker(self) -> RoleSettings: ...
    @property
    def ps(self) -> RoleSettings: ...
    @property
    def evaluator(self) -> RoleSettings: ...
    @property
    def spec(self) -> Mapping[str, List[str]]: ...
    @property
    def host(self) -> str: ...


class BackendSettings(Protocol):
    """The part of the ``backend`` node strategies read (to name it in messages)."""

    @property
    def name(self) -> str: ...


class ExperimentSettings(Protocol):
    """The groups of an experiment a strategy reads."""

    @property
    def strategy(self) -> StrategySettings: ...
    @property
    def topology(self) -> TopologySettings: ...
    @property
    def cluster(self) -> ClusterSettings: ...
    @property
    def backend(self) -> BackendSettings: ...


# -------------------------------------------------------------------------------- the interface
@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may look at: the config, the device plan of one task, and the cluster."""

    cfg: ExperimentSettings
    devices: DevicePlan
    cluster_workers: int = 0  # training workers in the cluster (chief + workers), 0 = no cluster
    cluster_ps: int = 0
    backend_launches_cluster: bool = False  # the chosen backend starts the cluster's tasks with their TF_CONFIG


@dataclass(frozen=True)
class FitData:
    """The training data of one task: the pipeline the orchestrator built, and what to build another from."""

    train: Any  # tf.data.Dataset of shuffled global batches
    validation: Any  # tf.data.Dataset of the validation split, or None
    x: Any  # the training split's arrays
    y: Any
    batch_size: int  # the global batch
    seed: int
    shuffle_buffer: int
    steps_per_epoch: Optional[int]  # trainer.steps_per_epoch; None = one pass over the data


class FitInput(NamedTuple):
    """What ``model.fit`` is given."""

    x: Any
    steps_per_epoch: Optional[int]
    validation_data: Any


class Strategy(ABC):
    """One tf.distribute strategy. Subclasses are stateless; instances come from :func:`strategies.get`.

    In a cluster every task of a training role (chief, worker, ps) either trains — runs ``fit`` in a
    strategy it builds — or, for a role in ``server_roles``, serves: it runs the ``tf.distribute.Server``
    that ``build`` returns for it until the job ends, driven by the training tasks. The job is done when
    the training tasks are.
    """

    name: ClassVar[str]
    #: Trains on a TF_CONFIG cluster of tasks (launched by a backend, or announced by the platform).
    needs_cluster: ClassVar[bool] = False
    #: Roles whose tasks serve instead of training.
    server_roles: ClassVar[Tuple[str, ...]] = ()
    #: The trained variables live on server tasks, so the trainer evaluates and exports a one-process copy.
    variables_on_servers: ClassVar[bool] = False

    @abstractmethod
    def check(self, ctx: StrategyContext) -> None:
        """Raise ConfigError naming key, value and fix if the strategy cannot run as configured."""

    @abstractmethod
    def replicas(self, ctx: StrategyContext) -> int:
        """Number of replicas the global batch is split across (batch_size must be divisible by it)."""

    @abstractmethod
    def build(self, ctx: StrategyContext, tf: Any) -> Any:
        """Create what this task runs (called in the task process, topology applied): the
        ``tf.distribute.Strategy``, or on a task of a ``server_roles`` role its started ``tf.distribute.Server``."""

    def fit_input(self, data: FitData, tf: Any, keras: Any) -> FitInput:
        """What ``model.fit`` gets (in the task process): by default the orchestrator's pipeline, as configured."""
        return FitInput(data.train, data.steps_per_epoch, data.validation)


def device_list(ctx: StrategyContext, configured: Optional[list]) -> list:
    """The devices a multi-device strategy spans: the configured list, or every accelerator device."""
    return list(configured) if configured else ctx.devices.accelerator_devices
