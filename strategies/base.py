"""The interface every tf.distribute strategy implements in tfscale.

A strategy answers three questions. Two are asked before TensorFlow is imported, during validation:
``check`` (can it run on this topology/cluster/backend? raise :class:`ConfigError` with the fix if not) and
``replicas`` (how many replicas a global batch is split across). The third, ``build``, runs in the task
process after the topology was applied and returns the ``tf.distribute.Strategy``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from strategies.devices import DevicePlan


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may look at: the whole config, the device plan of one task, and the cluster."""

    cfg: Any
    devices: DevicePlan
    cluster_workers: int = 0  # training workers in the cluster (chief + workers), 0 = no cluster
    cluster_ps: int = 0


class Strategy(ABC):
    """One tf.distribute strategy. Subclasses are stateless; instances come from :func:`strategies.get`."""

    name: ClassVar[str]
    needs_cluster: ClassVar[bool] = False

    @abstractmethod
    def check(self, ctx: StrategyContext) -> None:
        """Raise ConfigError naming key, value and fix if the strategy cannot run as configured."""

    @abstractmethod
    def replicas(self, ctx: StrategyContext) -> int:
        """Number of replicas the global batch is split across (batch_size must be divisible by it)."""

    @abstractmethod
    def build(self, ctx: StrategyContext, tf: Any) -> Any:
        """Create the ``tf.distribute.Strategy`` (called in the task process, topology applied)."""


def device_list(ctx: StrategyContext, configured: Optional[list]) -> list:
    """The devices a multi-device strategy spans: the configured list, or every accelerator device."""
    return list(configured) if configured else ctx.devices.accelerator_devices
