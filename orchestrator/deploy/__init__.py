"""Deploy targets by ``deploy.target``; each is imported only when chosen."""
from __future__ import annotations

from orchestrator.deploy.base import DeployTarget
from orchestrator.registry import load

TARGETS = {
    "none": "orchestrator.deploy.base:NoDeploy",
    "vertex": "orchestrator.deploy.vertex:VertexDeploy",
    "tf_serving": "orchestrator.deploy.tf_serving:TfServingTarget",
    "tfjs": "orchestrator.deploy.tfjs:TfjsTarget",
}


def get(name: str) -> DeployTarget:
    """The deploy target registered as ``name`` (ConfigError on ``deploy.target`` otherwise)."""
    return load(TARGETS, name, "deploy.target")


__all__ = ["DeployTarget", "TARGETS", "get"]
