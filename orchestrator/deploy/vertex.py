"""``deploy=vertex``: each published version becomes a Vertex Model version and is served from an endpoint.

See :mod:`orchestrator.vertex.models` for the rules (parent model, aliases, canary traffic, rollback).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

from orchestrator.deploy.base import DeployTarget
from orchestrator.errors import TaskFailedError

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig


class VertexDeploy(DeployTarget):
    """Upload to the Vertex Model Registry and deploy to an endpoint."""

    name = "vertex"

    def check(self, cfg: ExperimentConfig) -> None:
        from orchestrator.vertex.checks import check_deploy

        check_deploy(cfg)

    def deploy(self, cfg: ExperimentConfig, version_dir: Path, run_dir: Path) -> Dict[str, Any]:
        from google.api_core import exceptions

        from orchestrator.artifacts.run_record import git_state
        from orchestrator.vertex import models
        from orchestrator.vertex.job_spec import job_labels

        try:
            facts = models.upload_version(cfg, version_dir, labels=job_labels(cfg, git_state().get("sha")))
            if cfg.deploy.vertex.deploy:
                endpoint = models.ensure_endpoint(cfg)
                facts.update(models.deploy_version(cfg, facts["model"], facts["version_id"], endpoint))
        except exceptions.GoogleAPICallError as exc:
            raise TaskFailedError(f"deploy=vertex failed for {version_dir}: {exc.message or exc}") from exc
        print(f"tfscale: vertex model {facts['model']} version {facts['version_id']}"
              + (f" serving {facts['traffic_split']} on {facts['endpoint']}" if "endpoint" in facts else ""), flush=True)
        return facts
