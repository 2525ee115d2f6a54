"""Files of a TF Serving deployment, written and read with TF Serving's own protos.

- ``models.config``: a text-format ``ModelServerConfig`` with a ``model_config_list``; updating one model
  keeps the entries of every other model.
- the batching parameters file (``BatchingParameters``) and the monitoring config (``MonitoringConfig``).
- the launch plan (``tensorflow_model_server`` and ``docker run`` command lines) and a Kubernetes
  Deployment + Service manifest.

Every file is written through :mod:`orchestrator.artifacts.publish` (temporary sibling, fsync, rename), so a
server polling its config never reads half a file, and a server running as another user can read it.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from orchestrator.artifacts.publish import write_text
from orchestrator.errors import ConfigError
from orchestrator.serving.repository import ModelEntry, VersionPolicy

if TYPE_CHECKING:
    from orchestrator.config.serving import TfServingDeployConfig

MODELS_CONFIG = "models.config"
CONTAINER_MODELS_CONFIG = "models.container.config"
BATCHING_FILE = "batching_parameters.config"
MONITORING_FILE = "monitoring.config"
CONTAINER_BASE = "/models"


# ------------------------------------------------------------------------------------- models.config
def _model_server_config_pb2():
    from tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2


def entry_to_proto(entry: ModelEntry, msg: Any) -> None:
    """Fill a ``ModelConfig`` message from ``entry``."""
    msg.Clear()
    msg.name = entry.name
    msg.base_path = entry.base_path
    msg.model_platform = entry.platform
    policy = entry.policy
    if policy.policy == "all":
        msg.model_version_policy.all.SetInParent()
    elif policy.policy == "specific":
        msg.model_version_policy.specific.versions.extend(int(v) for v in policy.versions)
    else:
        msg.model_version_policy.latest.num_versions = int(policy.num_versions)
    for label, version in sorted(entry.labels.items()):
        msg.version_labels[str(label)] = int(version)


def entry_from_proto(msg: Any) -> ModelEntry:
    """A :class:`ModelEntry` from a ``ModelConfig`` message (TF Serving's defaults where unset)."""
    which = msg.model_version_policy.WhichOneof("policy_choice")
    if which == "all":
        policy = VersionPolicy("all")
    elif which == "specific":
        policy = VersionPolicy("specific", versions=tuple(int(v) for v in msg.model_version_policy.specific.versions))
    else:
        n = msg.model_version_policy.latest.num_versions if which == "latest" else 1
        policy = VersionPolicy("latest", num_versions=n or 1)
    return ModelEntry(msg.name, msg.base_path, policy, {k: int(v) for k, v in msg.version_labels.items()},
                      msg.model_platform or "tensorflow")


def parse_models_config(text: str, source: str = MODELS_CONFIG) -> List[ModelEntry]:
    """Entries of a text-format ``ModelServerConfig``; ConfigError naming ``source`` if it does not parse."""
    from google.protobuf import text_format

    pb2 = _model_server_config_pb2()
    cfg = pb2.ModelServerConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise ConfigError("serving.model_config_file", source, f"It is not a text-format ModelServerConfig ({e}); fix or delete it.") from None
    if cfg.WhichOneof("config") == "custom_model_config":
        raise ConfigError("serving.model_config_file", source, "Only model_config_list is supported; list the models there.")
    return [entry_from_proto(m) for m in cfg.model_config_list.config]


def read_models_config(path: str | os.PathLike) -> List[ModelEntry]:
    """Entries of the ``models.config`` at ``path`` ([] if the file does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    return parse_models_config(p.read_text(), str(p))


def models_config_text(entries: List[ModelEntry]) -> str:
    """Text-format ``ModelServerConfig`` of ``entries``."""
    from google.protobuf import text_format

    cfg = _model_server_config_pb2().ModelServerConfig()
    for entry in entries:
        entry_to_proto(entry, cfg.model_config_list.config.add())
    return text_format.MessageToString(cfg)


def write_models_config(path: str | os.PathLike, entries: List[ModelEntry]) -> Path:
    """Write ``entries`` as the whole ``models.config`` at ``path``."""
    p = Path(path)
    write_text(p, models_config_text(entries))
    return p


def update_models_config(path: str | os.PathLike, entry: ModelEntry) -> List[ModelEntry]:
    """Insert or replace ``entry`` (by name) in the ``models.config`` at ``path``, keeping other models."""
    entries = [e for e in read_models_config(path) if e.name != entry.name]
    entries.append(entry)
    entries.sort(key=lambda e: e.name)
    write_models_config(path, entries)
    return entries


# ------------------------------------------------------------------------- batching and monitoring
def batching_text(batching: Any) -> str:
    """Text-format ``BatchingParameters`` from a :class:`~orchestrator.config.serving.BatchingConfig`."""
    from google.protobuf import text_format

    from orchestrator.serving.protos import batching_parameters_class

    msg = batching_parameters_class()()
    msg.max_batch_size.value = int(batching.max_batch_size)
    msg.batch_timeout_micros.value = int(batching.batch_timeout_micros)
    msg.num_batch_threads.value = int(batching.num_batch_threads)
    msg.max_enqueued_batches.value = int(batching.max_enqueued_batches)
    return text_format.MessageToString(msg)


def parse_batching(text: str) -> Any:
    """Parse a batching parameters file into a ``BatchingParameters`` message."""
    from google.protobuf import text_format

    from orchestrator.serving.protos import batching_parameters_class

    return text_format.Parse(text, batching_parameters_class()())


def monitoring_text(monitoring: Any) -> str:
    """Text-format ``MonitoringConfig`` (Prometheus endpoint)."""
    from google.protobuf import text_format

    from orchestrator.serving.protos import monitoring_config_class

    msg = monitoring_config_class()()
    msg.prometheus_config.enable = bool(monitoring.prometheus)
    msg.prometheus_config.path = str(monitoring.path)
    return text_format.MessageToString(msg)


def parse_monitoring(text: str) -> Any:
    """Parse a monitoring config file into a ``MonitoringConfig`` message."""
    from google.protobuf import text_format

    from orchestrator.serving.protos import monitoring_config_class

    return text_format.Parse(text, monitoring_config_class()())


# -------------------------------------------------------------------------------------- launch plan
def server_args(*, grpc_port: int, rest_port: int, config_file: str, batching_file: Optional[str],
                monitoring_file: Optional[str], poll_seconds: int) -> List[str]:
    """Flags of ``tensorflow_model_server`` for this deployment."""
    args = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_config_file={config_file}",
            f"--model_config_file_poll_wait_seconds={max(int(poll_seconds), 1) if poll_seconds else 0}"]
    if batching_file:
        args += ["--enable_batching=true", f"--batching_parameters_file={batching_file}"]
    if monitoring_file:
        args.append(f"--monitoring_config_file={monitoring_file}")
    args.append(f"--file_system_poll_wait_seconds={int(poll_seconds)}")
    return args


def launch_plan(d: TfServingDeployConfig, model_base: Path) -> Dict[str, Any]:
    """The binary and container command lines of a deployment described by ``deploy.tf_serving`` ``d``.

    The binary reads ``models.config`` (host paths); the container mounts the repository at ``/models``
    and reads ``models.container.config``, whose base paths point inside the container.
    """
    base = Path(model_base).resolve()
    batching = d.batching.enabled
    monitoring = d.monitoring.prometheus
    binary_args = server_args(grpc_port=d.grpc_port, rest_port=d.rest_port, config_file=str(base / MODELS_CONFIG),
                              batching_file=str(base / BATCHING_FILE) if batching else None,
                              monitoring_file=str(base / MONITORING_FILE) if monitoring else None,
                              poll_seconds=d.file_system_poll_wait_seconds)
    container_args = server_args(grpc_port=8500, rest_port=8501, config_file=f"{CONTAINER_BASE}/{CONTAINER_MODELS_CONFIG}",
                                 batching_file=f"{CONTAINER_BASE}/{BATCHING_FILE}" if batching else None,
                                 monitoring_file=f"{CONTAINER_BASE}/{MONITORING_FILE}" if monitoring else None,
                                 poll_seconds=d.file_system_poll_wait_seconds)
    binary = [d.binary, *binary_args]
    docker = ["docker", "run", "--rm", "-p", f"{d.grpc_port}:8500", "-p", f"{d.rest_port}:8501",
              "-v", f"{base}:{CONTAINER_BASE}", d.image, *container_args]
    return {"binary": binary, "binary_command": shlex.join(binary), "container_args": container_args,
            "docker": docker, "docker_command": shlex.join(docker)}


def kubernetes_manifest(d: TfServingDeployConfig, model_base: Path, app: str, model: Optional[str] = None) -> List[Dict[str, Any]]:
    """A Deployment (``d.replicas`` pods of ``d.image``, repository mounted at /models) and its Service.

    A pod is ready once ``GET /v1/models/<model>`` answers 200 on the REST port (the model server knows the
    model and has a version of it); before that the Service sends it no traffic. It is alive while its gRPC
    port accepts connections. Without ``model`` readiness falls back to the gRPC port too.
    """
    base = Path(model_base).resolve()
    labels = {"app": app}
    volume: Dict[str, Any] = {"name": "model-repository"}
    if d.volume_claim:
        volume["persistentVolumeClaim"] = {"claimName": d.volume_claim, "readOnly": True}
    else:
        volume["hostPath"] = {"path": str(base), "type": "Directory"}
    args = launch_plan(d, base)["container_args"]
    readiness: Dict[str, Any] = ({"httpGet": {"path": f"/v1/models/{model}", "port": 8501}} if model
                                 else {"tcpSocket": {"port": 8500}})
    readiness.update(initialDelaySeconds=5, periodSeconds=5)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": app, "labels": labels},
        "spec": {
            "replicas": int(d.replicas),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{
                        "name": "tensorflow-serving", "image": d.image, "args": args,
                        "ports": [{"name": "grpc", "containerPort": 8500}, {"name": "rest", "containerPort": 8501}],
                        "volumeMounts": [{"name": "model-repository", "mountPath": CONTAINER_BASE, "readOnly": True}],
                        "readinessProbe": readiness,
                        "livenessProbe": {"tcpSocket": {"port": 8500}, "initialDelaySeconds": 30, "periodSeconds": 10,
                                          "failureThreshold": 6},
                    }],
                    "volumes": [volume],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": app, "labels": labels},
        "spec": {"selector": labels, "ports": [
            {"name": "grpc", "port": int(d.grpc_port), "targetPort": 8500},
            {"name": "rest", "port": int(d.rest_port), "targetPort": 8501}]},
    }
    return [deployment, service]
