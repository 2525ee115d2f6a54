"""The CustomJob request of an experiment, as a Vertex AI REST/JSON-shaped dict (camelCase).

Worker pools follow the cluster: pool 0 is the chief, pool 1 the workers, pool 2 the parameter servers and
pool 3 the evaluator (Vertex sets TF_CONFIG with exactly these roles for TensorFlow). A scale tier
(``vertex.scale_tier``) names a preset AI Platform documented; CUSTOM takes everything from the cluster,
the topology and ``vertex.*_machine_type``. Nothing here imports the SDK: :func:`to_proto` does, lazily.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

ROLES = ("chief", "worker", "ps", "evaluator")  # index = worker pool number


@dataclass(frozen=True)
class PoolPreset:
    """One worker pool of a scale tier."""

    machine_type: str
    replicas: int
    accelerator_type: Optional[str] = None
    accelerator_count: int = 0


# The machines AI Platform Training documented for its predefined tiers (the "master" is the chief).
SCALE_TIERS: Dict[str, Dict[str, PoolPreset]] = {
    "BASIC": {"chief": PoolPreset("n1-standard-4", 1)},
    "STANDARD_1": {"chief": PoolPreset("n1-highcpu-8", 1), "worker": PoolPreset("n1-highcpu-8", 4),
                   "ps": PoolPreset("n1-standard-4", 3)},
    "PREMIUM_1": {"chief": PoolPreset("n1-highcpu-16", 1), "worker": PoolPreset("n1-highcpu-16", 19),
                  "ps": PoolPreset("n1-highmem-8", 11)},
    "BASIC_GPU": {"chief": PoolPreset("n1-standard-8", 1, "NVIDIA_TESLA_K80", 1)},
    "BASIC_TPU": {"chief": PoolPreset("n1-standard-4", 1), "worker": PoolPreset("cloud-tpu", 1, "TPU_V2", 8)},
    "CUSTOM": {},
}

PYTHON_MODULE = "orchestrator.app.cli"
JOB_RUN_DIR = "run"
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def sanitize_label(text: Any, *, key: bool = False) -> str:
    """A Vertex label key or value: lowercase letters, digits, ``_`` and ``-``, at most 63 characters.

    Keys must also start with a letter, so one that does not gets an ``x`` in front.
    """
    out = re.sub(r"[^a-z0-9_-]", "_", str(text).lower())[:63]
    if key and not re.match(r"^[a-z]", out):
        out = ("x" + out)[:63]
    return out


def job_labels(cfg: ExperimentConfig, git_sha: Optional[str]) -> Dict[str, str]:
    """Labels of the job: the user's, plus the experiment name and the commit it was launched from."""
    labels = {sanitize_label(k, key=True): sanitize_label(v) for k, v in (cfg.vertex.labels or {}).items()}
    labels["tfscale-experiment"] = sanitize_label(cfg.experiment.name)
    if git_sha:
        labels["git-sha"] = sanitize_label(git_sha)
    return labels


def role_plan(cfg: ExperimentConfig) -> Dict[str, int]:
    """Replicas per role (chief, worker, ps, evaluator), as the job's pools will hold them.

    A cluster without a chief is given one by promoting the first worker: TensorFlow treats worker 0 of a
    chief-less cluster as the chief anyway, and Vertex requires pool 0 to hold exactly one replica.
    """
    from strategies.multi_worker import role_counts

    tier = SCALE_TIERS[cfg.vertex.scale_tier]
    clustered = cfg.cluster.name != "none" or bool(cfg.cluster.spec)
    if clustered:
        counts = dict(role_counts(cfg.cluster))
    else:
        counts = {role: preset.replicas for role, preset in tier.items()}
    if not counts.get("chief"):
        counts["chief"] = 1
        if counts.get("worker"):
            counts["worker"] -= 1
    if counts["chief"] != 1:
        raise ConfigError("cluster.chief.count", counts["chief"], "A Vertex job has exactly one chief (worker pool 0); use 1.")
    if counts.get("evaluator", 0) > 1:
        raise ConfigError("cluster.evaluator.count", counts["evaluator"], "A Vertex job has at most one evaluator (worker pool 3); use 0 or 1.")
    return {role: int(counts.get(role, 0)) for role in ROLES}


def promoted_chief(cfg: ExperimentConfig) -> bool:
    """Whether pool 0 holds worker 0 of a chief-less cluster (it then gets the workers' machines)."""
    from strategies.multi_worker import role_counts

    if cfg.cluster.name == "none" and not cfg.cluster.spec:
        return False
    counts = role_counts(cfg.cluster)
    return not counts.get("chief") and bool(counts.get("worker"))


def machine_spec(cfg: ExperimentConfig, role: str) -> Dict[str, Any]:
    """``machineSpec`` of a role's pool: the tier's preset, else the configured machine type and accelerator."""
    v = cfg.vertex
    preset = SCALE_TIERS[v.scale_tier].get(role)
    if preset is None and role == "chief" and promoted_chief(cfg):
        role = "worker"
    if preset is not None:
        spec: Dict[str, Any] = {"machineType": preset.machine_type}
        if preset.accelerator_type:
            spec.update(acceleratorType=preset.accelerator_type, acceleratorCount=preset.accelerator_count)
        return spec
    machine = getattr(v, f"{role}_machine_type", None) if role != "chief" else None
    spec = {"machineType": machine or v.chief_machine_type}
    count = accelerator_count(cfg, role)
    if count:
        if not v.accelerator_type:
            raise ConfigError("vertex.accelerator_type", None,
                              f"The {role} asks for {count} GPU(s) (cluster.{role}.gpus or topology.gpus); name the "
                              f"accelerator, e.g. vertex.accelerator_type=NVIDIA_TESLA_T4, or ask for no GPU.")
        spec.update(acceleratorType=v.accelerator_type, acceleratorCount=count)
    return spec


def accelerator_count(cfg: ExperimentConfig, role: str) -> int:
    """Accelerators per replica of ``role``: vertex.accelerator_count, else the role's gpus, else topology.gpus."""
    if cfg.vertex.accelerator_count:
        return int(cfg.vertex.accelerator_count)
    role_gpus = getattr(cfg.cluster, role).gpus if cfg.cluster.name != "none" else 0
    if role_gpus:
        return int(-(-float(role_gpus) // 1))
    gpus = cfg.topology.gpus
    return len(gpus) if gpus else 0


def trainer_args(overrides: Sequence[str], *, run_dir: Optional[str] = None) -> List[str]:
    """Arguments of the program inside the job: the run's overrides, run locally on each replica.

    Overrides that only concern launching (``backend``, ``vertex.*``, ``hydra.*``) are dropped; inside the
    job every replica runs ``backend=local`` and reads its role from the TF_CONFIG Vertex sets. ``run_dir``:
    where the chief keeps the run record (``hydra.run.dir``; see :func:`job_run_dir`).
    """
    kept = []
    for ov in overrides:
        key = ov.lstrip("+~").partition("=")[0]
        if key in ("backend", "vertex") or key.startswith(("backend.", "vertex.", "hydra.")):
            continue
        kept.append(ov)
    if run_dir:
        kept.append(f"hydra.run.dir={run_dir}")
    return kept + ["backend=local"]


def program_spec(cfg: ExperimentConfig, args: Sequence[str], package_uris: Sequence[str], *, python_module: str = PYTHON_MODULE,
                 env: Optional[Dict[str, str]] = None) -> Tuple[str, Dict[str, Any]]:
    """``("containerSpec", ...)`` when ``vertex.image`` is set, else ``("pythonPackageSpec", ...)``."""
    env_list = [{"name": k, "value": str(val)} for k, val in (env or {}).items()]
    if cfg.vertex.image:
        spec: Dict[str, Any] = {"imageUri": cfg.vertex.image, "command": ["python", "-m", python_module], "args": list(args)}
        key = "containerSpec"
    else:
        spec = {"executorImageUri": cfg.vertex.executor_image_uri, "packageUris": list(package_uris),
                "pythonModule": python_module, "args": list(args)}
        key = "pythonPackageSpec"
    if env_list:
        spec["env"] = env_list
    return key, spec


def worker_pool_specs(cfg: ExperimentConfig, program: Tuple[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The ``workerPoolSpecs`` list; an unused pool before a used one is an empty spec, as Vertex requires."""
    counts = role_plan(cfg)
    used = [i for i, role in enumerate(ROLES) if counts[role]]
    pools: List[Dict[str, Any]] = []
    for i, role in enumerate(ROLES[: max(used) + 1]):
        if not counts[role]:
            pools.append({})
            continue
        pool: Dict[str, Any] = {"machineSpec": machine_spec(cfg, role), "replicaCount": counts[role], program[0]: program[1]}
        if cfg.vertex.boot_disk_size_gb:
            pool["diskSpec"] = {"bootDiskType": "pd-ssd", "bootDiskSizeGb": int(cfg.vertex.boot_disk_size_gb)}
        pools.append(pool)
    return pools


def default_display_name(cfg: ExperimentConfig) -> str:
    """``tfscale-<experiment>-<UTC time>`` (Vertex allows up to 128 characters)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"tfscale-{cfg.experiment.name}-{stamp}"[:128]


def output_dir(cfg: ExperimentConfig, display_name: str) -> str:
    """The job's base output directory (Vertex sets AIP_MODEL_DIR etc. under it)."""
    return cfg.vertex.output_dir or f"gs://{cfg.vertex.bucket}/tfscale/jobs/{display_name}"


def job_run_dir(cfg: ExperimentConfig, display_name: str) -> str:
    """Where the chief of a CustomJob keeps the run record: ``<base output directory>/run``.

    Beside Vertex's own ``model/``, ``checkpoints/`` and ``logs/`` (``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR``,
    ``AIP_TENSORBOARD_LOG_DIR``); ``tfscale`` reads the job's metrics and provenance back from it.
    """
    return f"{output_dir(cfg, display_name).rstrip('/')}/{JOB_RUN_DIR}"


def console_url(job_name: str) -> str:
    """The Cloud console page of a job (``projects/P/locations/R/customJobs/ID``), as the Vertex SDK (2.x) links it."""
    parts = job_name.split("/")
    fields = dict(zip(parts[::2], parts[1::2]))
    job_id = parts[-1]
    return (f"https://console.cloud.google.com/agent-platform/locations/{fields.get('locations')}/training/{job_id}"
            f"?project={fields.get('projects')}")


def custom_job_spec(cfg: ExperimentConfig, program: Tuple[str, Dict[str, Any]], display_name: str) -> Dict[str, Any]:
    """A ``CustomJobSpec`` dict: pools, output directory, service account, network."""
    spec: Dict[str, Any] = {"workerPoolSpecs": worker_pool_specs(cfg, program),
                            "baseOutputDirectory": {"outputUriPrefix": output_dir(cfg, display_name)}}
    if cfg.vertex.service_account:
        spec["serviceAccount"] = cfg.vertex.service_account
    if cfg.vertex.network:
        spec["network"] = cfg.vertex.network
    return spec


def custom_job(cfg: ExperimentConfig, *, overrides: Sequence[str], package_uris: Sequence[str], display_name: str,
               git_sha: Optional[str]) -> Dict[str, Any]:
    """The whole ``CustomJob`` of the experiment."""
    program = program_spec(cfg, trainer_args(overrides, run_dir=job_run_dir(cfg, display_name)), package_uris)
    return {"displayName": display_name, "jobSpec": custom_job_spec(cfg, program, display_name),
            "labels": job_labels(cfg, git_sha)}


def parent(cfg: ExperimentConfig) -> str:
    """``projects/<project>/locations/<region>``."""
    return f"projects/{cfg.vertex.project}/locations/{cfg.vertex.region}"


def to_proto(message_cls: Any, body: Dict[str, Any]) -> Any:
    """Parse a JSON-shaped dict into an ``aiplatform_v1`` proto-plus message (unknown fields are errors)."""
    from google.protobuf import json_format

    msg = message_cls()
    json_format.ParseDict(body, message_cls.pb(msg))
    return msg


def to_json(message: Any) -> str:
    """``MessageToJson`` of a proto-plus message: the exact request body the API receives."""
    from google.protobuf import json_format

    return json_format.MessageToJson(type(message).pb(message), indent=2)
