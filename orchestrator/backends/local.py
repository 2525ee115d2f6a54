"""``backend=local``: the experiment runs on this machine, in the current process when possible."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

from orchestrator.backends.base import Backend
from orchestrator.errors import TaskFailedError


class LocalBackend(Backend):
    """One task on this machine.

    The task runs in this process if TensorFlow has not been imported yet (so the topology can still be
    applied); otherwise — e.g. the second job of a ``-m`` sweep — in a fresh child process, because a
    process's devices cannot change once TensorFlow initialised.
    """

    name = "local"

    def check(self, cfg: Any) -> None:
        return None

    def run(self, cfg: Any, run_dir: Path) -> Dict[str, Any]:
        if "tensorflow" not in sys.modules:
            from orchestrator.task import run_training

            return run_training(cfg, run_dir, overrides=_overrides())
        log_path = run_dir / "task.log"
        with open(log_path, "w") as log:
            proc = subprocess.run([sys.executable, "-m", "orchestrator.task_main", str(run_dir)], stdout=log,
                                  stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = log_path.read_text()[-2000:]
            raise TaskFailedError(f"The task process exited with code {proc.returncode}. See {log_path}:\n{tail}")
        return json.loads((run_dir / "metrics.json").read_text())


def _overrides() -> list:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not running under Hydra (tests calling run directly)
        return []
