"""Validation of the ``vertex`` group and ``deploy.vertex``: every mistake is a ConfigError before anything
is contacted, and without importing the Vertex SDK."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError
from orchestrator.vertex.job_spec import SCALE_TIERS, role_plan

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def check_location(v: Any, what: str) -> None:
    """project, region and bucket are set and well formed."""
    if v is None:
        raise ConfigError("vertex", None, f"{what} needs the vertex config group; add `- vertex: default` to your defaults list.")
    if not v.project:
        raise ConfigError("vertex.project", v.project, f"{what} runs in a Google Cloud project: set vertex.project=<project id>.")
    if not _PROJECT.match(str(v.project)):
        raise ConfigError("vertex.project", v.project, "Use the project ID (6-30 lowercase letters, digits, '-'; starts with a letter), not its name or number.")
    if not v.region:
        raise ConfigError("vertex.region", v.region, f"{what} needs a region: set vertex.region, e.g. vertex.region=us-central1.")
    if not _REGION.match(str(v.region)):
        raise ConfigError("vertex.region", v.region, "Use a Vertex AI region such as us-central1 or europe-west4 (not a zone like us-central1-a).")
    if not v.bucket:
        raise ConfigError("vertex.bucket", v.bucket, f"{what} stages code and artifacts in Cloud Storage: set vertex.bucket=<bucket name>.")
    bucket = str(v.bucket)
    if bucket.startswith("gs://") or not _BUCKET.match(bucket):
        raise ConfigError("vertex.bucket", v.bucket, "Give the bare bucket name (no gs://, no path), e.g. vertex.bucket=my-bucket.")
    if v.insecure and not v.api_endpoint:
        raise ConfigError("vertex.insecure", v.insecure, "A plaintext channel is only for a local test server: set vertex.api_endpoint=host:port too.")


def check_job(cfg: ExperimentConfig) -> None:
    """Everything ``backend=vertex`` needs before it packages or submits anything."""
    v = cfg.vertex
    check_location(v, "backend=vertex")
    if v.scale_tier not in SCALE_TIERS:
        raise ConfigError("vertex.scale_tier", v.scale_tier, f"Use one of: {', '.join(SCALE_TIERS)}.")
    for key in ("chief_machine_type", "executor_image_uri"):
        if not getattr(v, key):
            raise ConfigError(f"vertex.{key}", getattr(v, key), "It must not be empty.")
    if v.accelerator_count < 0:
        raise ConfigError("vertex.accelerator_count", v.accelerator_count, "Use 0 (from the cluster/topology) or a positive count.")
    if not v.poll_interval_s > 0 or v.max_poll_interval_s < v.poll_interval_s:
        raise ConfigError("vertex.poll_interval_s", v.poll_interval_s,
                          f"Use a positive interval no larger than vertex.max_poll_interval_s={v.max_poll_interval_s}.")
    if v.timeout_s is not None and v.timeout_s <= 0:
        raise ConfigError("vertex.timeout_s", v.timeout_s, "Give a positive number of seconds, or null for no limit.")
    if not v.retry_deadline_s > 0:
        raise ConfigError("vertex.retry_deadline_s", v.retry_deadline_s, "Give a positive number of seconds (default 300).")
    if v.display_name is not None and not (0 < len(v.display_name) <= 128):
        raise ConfigError("vertex.display_name", v.display_name, "Use 1 to 128 characters, or null for a generated name.")
    if cfg.cluster.spec:
        raise ConfigError("cluster.spec", dict(cfg.cluster.spec),
                          "Vertex starts the machines and sets TF_CONFIG itself; describe the cluster with role counts (cluster.worker.count=...) instead of host lists.")
    if any(getattr(cfg.cluster, r).hosts for r in ("chief", "worker", "ps", "evaluator")):
        raise ConfigError("cluster", cfg.cluster.name, "Vertex assigns hosts itself; remove cluster.<role>.hosts and give counts.")
    from orchestrator.vertex.job_spec import ROLES, machine_spec

    counts = role_plan(cfg)
    for role in ROLES:
        if counts[role]:
            machine_spec(cfg, role)
    if v.tuning:
        from orchestrator.vertex.tuning import load_study

        load_study(cfg)
        if v.max_failed_trial_count is not None and v.max_failed_trial_count < 0:
            raise ConfigError("vertex.max_failed_trial_count", v.max_failed_trial_count, "Use 0 or more, or null for the study's own budget.")


def check_deploy(cfg: ExperimentConfig) -> None:
    """Everything ``deploy=vertex`` needs before training starts."""
    check_location(cfg.vertex, "deploy=vertex")
    d = cfg.deploy.vertex
    if not d.serving_image:
        raise ConfigError("deploy.vertex.serving_image", d.serving_image, "Name a TensorFlow serving container, e.g. us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest.")
    if d.min_replicas < 1 or d.max_replicas < d.min_replicas:
        raise ConfigError("deploy.vertex.min_replicas", d.min_replicas,
                          f"Need 1 <= min_replicas <= max_replicas, but got min_replicas={d.min_replicas}, max_replicas={d.max_replicas}.")
    if not 0 <= d.canary_percent <= 100:
        raise ConfigError("deploy.vertex.canary_percent", d.canary_percent, "It is a share of the endpoint's traffic: use 0 to 100.")
    if d.accelerator_count and not d.accelerator_type:
        raise ConfigError("deploy.vertex.accelerator_type", None, "deploy.vertex.accelerator_count > 0 needs an accelerator type, e.g. NVIDIA_TESLA_T4.")
    if not cfg.export.enabled:
        raise ConfigError("export.enabled", False, "deploy=vertex uploads the exported SavedModel; use export=saved_model.")
