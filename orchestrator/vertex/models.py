"""Vertex Model Registry and endpoints: versions of one parent model, canary traffic, rollback, prediction.

Every published SavedModel version is copied to Cloud Storage and uploaded as a new version of the same
parent model (found by display name), served by a TensorFlow serving container. The new version gets the
alias ``v<N>`` and takes the moving aliases (``deploy.vertex.aliases``, ``latest`` by default). It is then
deployed to an endpoint (created on first use, reused afterwards) with ``canary_percent`` of the traffic;
the rest stays on the version that had the most traffic. :func:`rollback` moves traffic and aliases back.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig


def location(v: Any) -> str:
    return f"projects/{v.project}/locations/{v.region}"


def model_display_name(cfg: ExperimentConfig) -> str:
    return cfg.deploy.vertex.model_display_name or str(cfg.export.model_name)


def endpoint_display_name(cfg: ExperimentConfig) -> str:
    return cfg.deploy.vertex.endpoint_display_name or f"{model_display_name(cfg)}-endpoint"


def artifact_uri(cfg: ExperimentConfig, version_dir: Path) -> str:
    """Where the version's SavedModel is copied: ``<artifact_dir>/<model>/<version>``."""
    base = cfg.deploy.vertex.artifact_dir or f"gs://{cfg.vertex.bucket}/tfscale/models"
    return f"{base.rstrip('/')}/{model_display_name(cfg)}/{Path(version_dir).name}"


def _find(items: Any, display_name: str) -> Optional[Any]:
    for item in items:
        if item.display_name == display_name:
            return item
    return None


def upload_version(cfg: ExperimentConfig, version_dir: Path, *, labels: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Stage ``version_dir`` and upload it as a new version of the parent model; move the aliases to it."""
    from google.cloud import aiplatform_v1

    from orchestrator.vertex.clients import client
    from orchestrator.vertex.packaging import stage

    v, d = cfg.vertex, cfg.deploy.vertex
    models = client(v, "model")
    name = model_display_name(cfg)
    uri = stage(Path(version_dir), artifact_uri(cfg, version_dir))
    existing = _find(models.list_models(request={"parent": location(v), "filter": f'display_name="{name}"'}), name)
    version_alias = f"v{int(Path(version_dir).name)}" if Path(version_dir).name.isdigit() else None
    model = aiplatform_v1.Model(
        display_name=name, artifact_uri=uri, labels=dict(labels or {}),
        version_aliases=[version_alias] if version_alias else [],
        container_spec=aiplatform_v1.ModelContainerSpec(image_uri=d.serving_image))
    request = aiplatform_v1.UploadModelRequest(parent=location(v), model=model,
                                               parent_model=existing.name if existing else "")
    response = models.upload_model(request=request).result()
    previous = {}
    moving = [a for a in d.aliases if a != version_alias]
    for alias in moving:
        holder = _alias_holder(models, response.model, alias)
        if holder:
            previous[alias] = holder
    if moving:
        models.merge_version_aliases(name=f"{response.model}@{response.model_version_id}", version_aliases=moving)
    return {"model": response.model, "version_id": response.model_version_id, "artifact_uri": uri,
            "aliases": ([version_alias] if version_alias else []) + moving, "previous_alias_versions": previous}


def _alias_holder(models: Any, model_name: str, alias: str) -> Optional[str]:
    """The version id currently holding ``alias`` (None if no version does)."""
    from google.api_core import exceptions

    try:
        return models.get_model(name=f"{model_name}@{alias}").version_id
    except exceptions.NotFound:
        return None


def ensure_endpoint(cfg: ExperimentConfig) -> Any:
    """The endpoint named ``endpoint_display_name``, created if it does not exist yet."""
    from google.cloud import aiplatform_v1

    from orchestrator.vertex.clients import client

    v = cfg.vertex
    endpoints = client(v, "endpoint")
    name = endpoint_display_name(cfg)
    found = _find(endpoints.list_endpoints(request={"parent": location(v), "filter": f'display_name="{name}"'}), name)
    if found is not None:
        return found
    return endpoints.create_endpoint(parent=location(v), endpoint=aiplatform_v1.Endpoint(display_name=name)).result()


def canary_split(current: Mapping[str, int], canary_percent: int) -> Dict[str, int]:
    """Traffic after deploying a new model ("0" in a DeployModelRequest) with ``canary_percent``.

    The rest goes to the deployed model that had the most traffic; every other one gets none.
    """
    live = max(current.items(), key=lambda kv: kv[1])[0] if current and any(current.values()) else None
    if live is None or canary_percent >= 100:
        return {"0": 100}
    return {"0": int(canary_percent), live: 100 - int(canary_percent)}


def deploy_version(cfg: ExperimentConfig, model: str, version_id: str, endpoint: Any) -> Dict[str, Any]:
    """Deploy ``model@version_id`` to ``endpoint`` with the configured machines and canary share."""
    from google.cloud import aiplatform_v1

    from orchestrator.vertex.clients import client

    v, d = cfg.vertex, cfg.deploy.vertex
    machine = aiplatform_v1.MachineSpec(machine_type=d.machine_type)
    if d.accelerator_type:
        machine.accelerator_type = d.accelerator_type
        machine.accelerator_count = int(d.accelerator_count or 1)
    deployed = aiplatform_v1.DeployedModel(
        model=f"{model}@{version_id}", display_name=f"{model_display_name(cfg)}-v{version_id}",
        dedicated_resources=aiplatform_v1.DedicatedResources(machine_spec=machine, min_replica_count=int(d.min_replicas),
                                                             max_replica_count=int(d.max_replicas)))
    current = dict(endpoint.traffic_split)
    split = canary_split(current, int(d.canary_percent))
    response = client(v, "endpoint").deploy_model(endpoint=endpoint.name, deployed_model=deployed, traffic_split=split).result()
    new_id = response.deployed_model.id
    previous = next((k for k in split if k != "0"), None) or (max(current, key=current.get) if current else None)
    return {"endpoint": endpoint.name, "deployed_model_id": new_id, "previous_deployed_model_id": previous,
            "traffic_split": {(new_id if k == "0" else k): pct for k, pct in split.items()}}


def set_traffic(cfg: ExperimentConfig, endpoint_name: str, split: Mapping[str, int]) -> Dict[str, int]:
    """Replace the endpoint's traffic split (deployed model id -> percent, summing to 100)."""
    from google.cloud import aiplatform_v1
    from google.protobuf import field_mask_pb2

    from orchestrator.vertex.clients import client

    if sum(split.values()) != 100:
        raise ValueError(f"A traffic split must sum to 100, but got {dict(split)} (sum {sum(split.values())}).")
    endpoint = aiplatform_v1.Endpoint(name=endpoint_name, traffic_split=dict(split))
    updated = client(cfg.vertex, "endpoint").update_endpoint(endpoint=endpoint, update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]))
    return dict(updated.traffic_split)


def move_alias(cfg: ExperimentConfig, model: str, alias: str, version_id: str) -> None:
    """Point ``alias`` of ``model`` at ``version_id`` (Vertex takes it off the version holding it)."""
    from orchestrator.vertex.clients import client

    client(cfg.vertex, "model").merge_version_aliases(name=f"{model}@{version_id}", version_aliases=[alias])


def rollback(cfg: ExperimentConfig, deployed: Mapping[str, Any]) -> Dict[str, Any]:
    """Undo a deploy recorded as ``deployed`` (the ``deploy`` entry of metrics.json).

    All traffic goes back to the previously live deployed model, and each moved alias back to the
    version that held it before. The new version stays deployed (with no traffic) and uploaded.
    """
    done: Dict[str, Any] = {}
    previous = deployed.get("previous_deployed_model_id")
    if deployed.get("endpoint") and previous:
        done["traffic_split"] = set_traffic(cfg, deployed["endpoint"], {previous: 100})
    for alias, version in (deployed.get("previous_alias_versions") or {}).items():
        move_alias(cfg, deployed["model"], alias, version)
        done.setdefault("aliases", {})[alias] = version
    return done


def predict(cfg: ExperimentConfig, endpoint_name: str, instances: Sequence[Any]) -> List[Any]:
    """Online prediction: JSON-able ``instances`` in, the endpoint's predictions out."""
    from google.protobuf import json_format, struct_pb2

    from orchestrator.vertex.clients import client

    values = [json_format.ParseDict(x, struct_pb2.Value()) for x in instances]
    response = client(cfg.vertex, "prediction").predict(endpoint=endpoint_name, instances=values)
    # Read the raw protobuf: each prediction is a google.protobuf.Value, which MessageToDict makes plain JSON.
    return [json_format.MessageToDict(p) for p in type(response).pb(response).predictions]
