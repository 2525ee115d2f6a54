"""Backends by ``backend.name``; each is imported only when chosen."""
from __future__ import annotations

from orchestrator.backends.base import Backend
from orchestrator.registry import load

BACKENDS = {
    "local": "orchestrator.backends.local:LocalBackend",
    "processes": "orchestrator.backends.processes:ProcessesBackend",
    "ray": "orchestrator.backends.ray_backend:RayBackend",
    "vertex": "orchestrator.backends.vertex:VertexBackend",
}


def get(name: str) -> Backend:
    """The backend registered as ``name`` (ConfigError on ``backend.name`` listing the valid ones)."""
    return load(BACKENDS, name, "backend.name")


__all__ = ["Backend", "BACKENDS", "get"]
