"""Where a run executes: the backends (local, processes, Ray, Vertex), the warm task process, and the Hydra
sweeper and launchers that run a study's trials. Each backend is imported only when chosen."""
from __future__ import annotations

from orchestrator.config.registry import BACKENDS
from orchestrator.config.registry import backend as get
from orchestrator.launch.base import Backend

__all__ = ["Backend", "BACKENDS", "get"]
