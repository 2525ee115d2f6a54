"""The interface of a backend: where the tasks of one run execute."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Optional

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig


class Backend(ABC):
    """Runs one experiment's tasks (one process, a cluster of processes, Ray actors, a Vertex job).

    ``check`` is called during validation, before TensorFlow is imported and before anything is
    launched; ``run`` launches the tasks, waits for them, and returns the chief's metrics. A backend
    must leave no process or actor behind on success, failure or Ctrl-C.
    """

    name: ClassVar[str]
    #: Starts every task of a TF_CONFIG cluster itself; validation tells the cluster strategies whether the
    #: chosen backend does (``StrategyContext.backend_launches_cluster``).
    launches_clusters: ClassVar[bool] = False

    @abstractmethod
    def check(self, cfg: ExperimentConfig) -> None:
        """Raise ConfigError if this backend cannot run the config as given."""

    @abstractmethod
    def run(self, cfg: ExperimentConfig, run_dir: Path, *, run_uri: Optional[str] = None) -> Dict[str, Any]:
        """Run the experiment's tasks; return the chief's metrics (what it wrote to metrics.json).

        ``run_dir`` is a local directory (Hydra's output directory). ``run_uri``: where the run record is kept
        when that is a bucket (``runs_dir=gs://...``); ``tfscale`` uploads ``run_dir`` there after ``run``
        returns, so a backend whose tasks run on this machine can ignore it, and one whose tasks cannot see
        ``run_dir`` has them read and write the URI.
        """
