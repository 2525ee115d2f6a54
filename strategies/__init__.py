"""tf.distribute strategies behind one interface (:class:`strategies.base.Strategy`).

``get(name)`` returns the strategy for ``strategy.name``; nothing here imports TensorFlow at module level.
"""
from __future__ import annotations

from typing import Dict

from orchestrator.errors import ConfigError
from strategies.base import Strategy, StrategyContext
from strategies.local import CentralStorageStrategy, DefaultStrategy, MirroredStrategy, OneDeviceStrategy
from strategies.multi_worker import MultiWorkerMirroredStrategy, ParameterServerStrategy, TPUStrategy

STRATEGIES: Dict[str, type] = {cls.name: cls for cls in (
    DefaultStrategy, OneDeviceStrategy, MirroredStrategy, CentralStorageStrategy,
    MultiWorkerMirroredStrategy, ParameterServerStrategy, TPUStrategy)}


def get(name: str) -> Strategy:
    """The strategy registered as ``name``; ConfigError listing the valid names otherwise."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ConfigError("strategy.name", name, f"Use one of: {', '.join(STRATEGIES)}.") from None


__all__ = ["Strategy", "StrategyContext", "STRATEGIES", "get"]
