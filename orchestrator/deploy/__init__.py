"""Deploy targets by ``deploy.target``; each is imported only when chosen."""
from __future__ import annotations

from orchestrator.config.registry import DEPLOY_TARGETS as TARGETS
from orchestrator.config.registry import deploy_target as get
from orchestrator.deploy.base import DeployTarget

__all__ = ["DeployTarget", "TARGETS", "get"]
