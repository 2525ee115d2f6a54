"""Hydra plugin shim of tfscale's study sweeper and trial launchers.

Hydra discovers plugins only in the ``hydra_plugins`` namespace package; the implementation lives in
:mod:`orchestrator.launch.sweeper` and :mod:`orchestrator.launch.hydra_launchers`. Hydra's plugin scan imports
:mod:`hydra_plugins.tfscale_sweeper.tfscale_sweeper`, which registers the configs ``hydra/sweeper=tfscale``,
``hydra/launcher=tfscale_processes`` and ``hydra/launcher=tfscale_ray``. This package re-exports nothing, so
that the scan finds each plugin class once (``tfscale --info plugins``).
"""
