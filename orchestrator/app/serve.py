"""``tfscale serve``: the serving command with every engine, ``serving.engine=ray`` included.

The Ray Serve engine (:mod:`orchestrator.launch.ray_serve`) connects to Ray, which the serving layer may
not do; this entry point hands it to :func:`orchestrator.serving.cli.main`. It is imported only when
chosen, so ``tfscale serve --cfg`` and the embedded server start as fast as before.
"""
from __future__ import annotations

from typing import Any, List, Optional


def _ray_engine(settings: Any) -> Any:
    from orchestrator.launch.ray_serve import RayServeEngine

    return RayServeEngine(settings)


def main(argv: Optional[List[str]] = None) -> int:
    """``tfscale serve [overrides] [tensorflow_model_server flags]``."""
    from orchestrator.serving.cli import main as serve_main

    return serve_main(argv, engines={"ray": _ray_engine})
