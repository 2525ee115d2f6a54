"""The interface of a deploy target: what happens to a model version once it is published."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig


class DeployTarget(ABC):
    """Takes a published SavedModel version somewhere (TF Serving, Vertex AI, TF.js, ...).

    ``check`` runs during validation (no TensorFlow, nothing contacted). ``deploy`` runs in the chief task
    after the version was published; what it returns is recorded under ``deploy`` in metrics.json.
    """

    name: ClassVar[str]

    @abstractmethod
    def check(self, cfg: ExperimentConfig) -> None:
        """Raise ConfigError if the target's settings are invalid."""

    @abstractmethod
    def deploy(self, cfg: ExperimentConfig, version_dir: Path, run_dir: Path) -> Dict[str, Any]:
        """Deploy the version at ``version_dir``; return facts for the run record."""


class NoDeploy(DeployTarget):
    """The model version is published to the repository and nothing more."""

    name = "none"

    def check(self, cfg: ExperimentConfig) -> None:
        return None

    def deploy(self, cfg: ExperimentConfig, version_dir: Path, run_dir: Path) -> Dict[str, Any]:
        return {}
