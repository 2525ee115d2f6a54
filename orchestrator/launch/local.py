"""``backend=local``: the experiment runs on this machine, in one task process."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional

from orchestrator.launch.base import Backend

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

log = logging.getLogger(__name__)


class LocalBackend(Backend):
    """One task on this machine, always in a task process of its own: ``tfscale`` itself never trains.

    A plain ``tfscale`` run trains in the task process ``tfscale`` forked at start-up (see
    :mod:`orchestrator.launch.warm_task`). When that one cannot be used — the topology sets a variable
    TensorFlow reads at import time, ``TFSCALE_WARM_TASK=0``, or the second job of a ``-m`` sweep — a fresh
    task process is spawned with the right environment; it speaks the same protocol, so the run reports the
    same way.
    """

    name = "local"

    def check(self, cfg: ExperimentConfig) -> None:
        return None

    def run(self, cfg: ExperimentConfig, run_dir: Path, *, run_uri: Optional[str] = None) -> Dict[str, Any]:
        from orchestrator.launch import warm_task

        task = warm_task.take()
        if task is not None:
            why = task.unsuitable_because(cfg)
            if why is not None:
                log.info("training in a spawned task process instead of the warm one: %s", why)
                task.discard()
                task = None
        if task is None:
            task = warm_task.spawn(cfg, run_dir)
        return task.run(cfg, run_dir, _overrides(), _logging_config(), record_uri=run_uri)


def _logging_config() -> Optional[dict]:
    """Hydra's job logging set-up of this run, for the task process to apply the same way."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        conf = OmegaConf.to_container(HydraConfig.get().job_logging, resolve=True)
    except Exception:  # not running under Hydra
        return None
    return conf if isinstance(conf, dict) and conf.get("root") is not None else None


def _overrides() -> list:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not running under Hydra (tests calling run directly)
        return []
