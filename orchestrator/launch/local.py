"""``backend=local``: the experiment runs on this machine, in the current process when possible."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from orchestrator.launch.base import Backend
from orchestrator.errors import TaskFailedError

log = logging.getLogger(__name__)


class LocalBackend(Backend):
    """One task on this machine.

    A plain ``tfscale`` run trains in the task process ``tfscale`` forked at start-up (see
    :mod:`orchestrator.launch.warm_task`). Otherwise the task runs in this process if TensorFlow has not been
    imported yet (so the topology can still be applied); otherwise — e.g. the second job of a ``-m`` sweep — in a fresh child process, because a
    process's devices cannot change once TensorFlow initialised.
    """

    name = "local"

    def check(self, cfg: Any) -> None:
        return None

    def run(self, cfg: Any, run_dir: Path) -> Dict[str, Any]:
        from orchestrator.launch import warm_task

        warm = warm_task.take()
        if warm is not None:
            why = warm.unsuitable_because(cfg) if "tensorflow" not in sys.modules else "TensorFlow is already imported here"
            if why is None:
                return warm.run(cfg, run_dir, _overrides(), _logging_config())
            log.info("training in this process instead of the warm task process: %s", why)
            warm.discard()
        if "tensorflow" not in sys.modules:
            from orchestrator.training.task import run_training

            return run_training(cfg, run_dir, overrides=_overrides())
        log_path = run_dir / "task.log"
        with open(log_path, "w") as task_log:
            proc = subprocess.run([sys.executable, "-m", "orchestrator.launch.task_main", str(run_dir)], stdout=task_log,
                                  stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = log_path.read_text()[-2000:]
            raise TaskFailedError(f"The task process exited with code {proc.returncode}. See {log_path}:\n{tail}")
        return json.loads((run_dir / "metrics.json").read_text())


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
