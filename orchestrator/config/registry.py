"""Plugins by name: every backend and deploy target as an import path, loaded only when chosen.

Validation asks a plugin to ``check`` a config through these tables without importing the packages that
run the plugin (``orchestrator.launch``, ``orchestrator.deploy``): the config layer knows plugins by name,
as Hydra knows its launchers, and the dependency between the layers points one way.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict

from orchestrator.errors import ConfigError

BACKENDS: Dict[str, str] = {
    "local": "orchestrator.launch.local:LocalBackend",
    "processes": "orchestrator.launch.processes:ProcessesBackend",
    "ray": "orchestrator.launch.ray_cluster:RayBackend",
    "vertex": "orchestrator.launch.vertex_job:VertexBackend",
}

DEPLOY_TARGETS: Dict[str, str] = {
    "none": "orchestrator.deploy.base:NoDeploy",
    "vertex": "orchestrator.deploy.vertex:VertexDeploy",
    "tf_serving": "orchestrator.deploy.tf_serving:TfServingTarget",
    "tfjs": "orchestrator.deploy.tfjs:TfjsTarget",
}


def load(registry: Dict[str, str], name: str, key: str) -> Any:
    """Instantiate the class registered as ``name``; ConfigError naming ``key`` and the choices otherwise."""
    name = getattr(name, "value", name)  # an Enum member of the schema, or its plain value
    try:
        path = registry[name]
    except KeyError:
        raise ConfigError(key, name, f"Use one of: {', '.join(sorted(registry))}.") from None
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)()


def backend(name: str) -> Any:
    """The backend registered as ``name`` (ConfigError on ``backend.name`` listing the valid ones)."""
    return load(BACKENDS, name, "backend.name")


def deploy_target(name: str) -> Any:
    """The deploy target registered as ``name`` (ConfigError on ``deploy.target`` otherwise)."""
    return load(DEPLOY_TARGETS, name, "deploy.target")
