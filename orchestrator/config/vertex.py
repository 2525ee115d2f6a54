"""Schemas of the ``vertex`` config group and of ``deploy.vertex``.

Plain dataclasses, importable without the Vertex SDK: ``tfscale backend=vertex`` config errors are answered
from these and :mod:`orchestrator.vertex.checks` before anything from ``google.cloud`` is imported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class VertexConfig:
    """Where and how a run is sent to Vertex AI (AI Platform) as a CustomJob or HyperparameterTuningJob.

    ``project``, ``region`` and ``bucket`` are required by ``backend=vertex`` and ``deploy=vertex``.
    Credentials are never part of the config: the SDK finds them through Application Default Credentials
    (``GOOGLE_APPLICATION_CREDENTIALS`` or ``gcloud auth application-default login``).
    """

    project: Optional[str] = None
    region: Optional[str] = None
    bucket: Optional[str] = None  # bucket name, without gs://
    staging_dir: Optional[str] = None  # where the sdist is staged; null = gs://<bucket>/tfscale/staging
    output_dir: Optional[str] = None  # the job's base_output_directory; null = gs://<bucket>/tfscale/jobs/<display_name>
    display_name: Optional[str] = None  # null = tfscale-<experiment.name>-<timestamp>
    scale_tier: str = "CUSTOM"  # BASIC | STANDARD_1 | PREMIUM_1 | BASIC_GPU | BASIC_TPU | CUSTOM
    chief_machine_type: str = "n1-standard-4"
    worker_machine_type: Optional[str] = None  # null = chief_machine_type
    ps_machine_type: Optional[str] = None  # null = chief_machine_type
    evaluator_machine_type: Optional[str] = None  # null = chief_machine_type
    accelerator_type: Optional[str] = None  # e.g. NVIDIA_TESLA_T4; null = no accelerator
    accelerator_count: int = 0  # per replica; 0 = from cluster.<role>.gpus or topology.gpus
    boot_disk_size_gb: Optional[int] = None
    executor_image_uri: str = "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest"
    image: Optional[str] = None  # a custom training container; replaces the python package
    service_account: Optional[str] = None
    network: Optional[str] = None  # projects/<number>/global/networks/<name>
    labels: Dict[str, str] = field(default_factory=dict)
    dry_run: bool = False  # print the request and the gcloud command; contact nothing
    wait: bool = True  # follow the job until it ends
    poll_interval_s: float = 10.0
    max_poll_interval_s: float = 60.0
    timeout_s: Optional[float] = None  # give up following (and cancel) after this long; null = no limit
    retry_deadline_s: float = 300.0  # how long a poll retries UNAVAILABLE / DEADLINE_EXCEEDED before giving up
    api_endpoint: Optional[str] = None  # null = <region>-aiplatform.googleapis.com
    insecure: bool = False  # plaintext gRPC to api_endpoint (local test servers only)
    tuning: bool = False  # run the study as a HyperparameterTuningJob
    study_file: Optional[str] = None  # study YAML (native, AI Platform or Vertex form); null = the study group
    study_param_map: Dict[str, str] = field(default_factory=dict)  # AI Platform parameterName -> config key
    max_failed_trial_count: Optional[int] = None  # null = the study's max_failed_trials


@dataclass
class VertexDeployConfig:
    """``deploy=vertex``: upload each published version as a Model version and serve it from an Endpoint."""

    model_display_name: Optional[str] = None  # null = export.model_name
    endpoint_display_name: Optional[str] = None  # null = <model_display_name>-endpoint
    serving_image: str = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
    artifact_dir: Optional[str] = None  # null = gs://<vertex.bucket>/tfscale/models
    aliases: List[str] = field(default_factory=lambda: ["latest"])  # moved to the new version
    machine_type: str = "n1-standard-2"
    accelerator_type: Optional[str] = None
    accelerator_count: int = 0
    min_replicas: int = 1
    max_replicas: int = 1
    canary_percent: int = 100  # traffic share of the new version; the rest stays on the current one
    deploy: bool = True  # false: upload the model version only
