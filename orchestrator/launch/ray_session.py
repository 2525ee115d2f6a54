"""The one way tfscale connects to Ray: a local Ray of its own, or an existing cluster."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional


def attaches(address: Optional[str]) -> bool:
    """Whether :func:`connect` joins an existing cluster (``address`` given or ``RAY_ADDRESS`` set)."""
    return bool(address) or bool(os.environ.get("RAY_ADDRESS"))


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> Any:
    """Connect this process to Ray unless it already is; returns the ``ray`` module.

    With ``address`` (or ``RAY_ADDRESS``) it attaches to that cluster and passes no ``num_cpus``/``num_gpus``:
    Ray refuses them for an existing cluster, whose nodes declared their own. Otherwise it starts a local
    Ray with ``num_cpus`` (default: this machine's cores), without dashboard.
    """
    import ray

    if ray.is_initialized():
        return ray
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if attaches(address):
        ray.init(address=address or None, **quiet)
    else:
        ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), include_dashboard=False, **quiet)
    return ray
