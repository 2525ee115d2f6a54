"""Lazy registries of extension points: entries are import paths, loaded only when chosen."""
from __future__ import annotations

import importlib
from typing import Any, Dict

from orchestrator.errors import ConfigError


def load(registry: Dict[str, str], name: str, key: str) -> Any:
    """Instantiate the class registered as ``name``; ConfigError naming ``key`` and the choices otherwise."""
    try:
        path = registry[name]
    except KeyError:
        raise ConfigError(key, name, f"Use one of: {', '.join(sorted(registry))}.") from None
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)()
