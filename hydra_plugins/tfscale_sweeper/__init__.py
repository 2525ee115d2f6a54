"""Hydra plugin shim of tfscale's study sweeper and trial launchers.

Hydra discovers plugins only in the ``hydra_plugins`` namespace package; the implementation lives in
:mod:`orchestrator.launch.sweeper` and :mod:`orchestrator.launch.hydra_launchers`. Importing this package registers the configs
``hydra/sweeper=tfscale``, ``hydra/launcher=tfscale_processes`` and ``hydra/launcher=tfscale_ray``.
"""
from hydra_plugins.tfscale_sweeper.tfscale_sweeper import (
    TfscaleProcessesLauncher,
    TfscaleProcessesLauncherConf,
    TfscaleRayLauncher,
    TfscaleRayLauncherConf,
    TfscaleSweeper,
    TfscaleSweeperConf,
)

__all__ = [
    "TfscaleProcessesLauncher",
    "TfscaleProcessesLauncherConf",
    "TfscaleRayLauncher",
    "TfscaleRayLauncherConf",
    "TfscaleSweeper",
    "TfscaleSweeperConf",
]
