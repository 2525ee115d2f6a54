"""Vertex AI SDK clients built from the ``vertex`` config.

Credentials come from Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` or the gcloud ADC
file); tfscale never reads, prints or records them. With ``vertex.insecure=true`` the clients talk
plaintext gRPC to ``vertex.api_endpoint`` without credentials — only for a local test server.
"""
from __future__ import annotations

from typing import Any

_SERVICES = {
    "job": ("JobServiceClient", "job_service", "JobServiceGrpcTransport"),
    "model": ("ModelServiceClient", "model_service", "ModelServiceGrpcTransport"),
    "endpoint": ("EndpointServiceClient", "endpoint_service", "EndpointServiceGrpcTransport"),
    "prediction": ("PredictionServiceClient", "prediction_service", "PredictionServiceGrpcTransport"),
}


def api_endpoint(v: Any) -> str:
    """The regional API host (or the configured one)."""
    return v.api_endpoint or f"{v.region}-aiplatform.googleapis.com"


def client(v: Any, service: str) -> Any:
    """An ``aiplatform_v1`` client for ``service`` (job, model, endpoint, prediction)."""
    import importlib

    from google.cloud import aiplatform_v1

    cls_name, module, transport_name = _SERVICES[service]
    cls = getattr(aiplatform_v1, cls_name)
    if v.insecure:
        import grpc

        transports = importlib.import_module(f"google.cloud.aiplatform_v1.services.{module}.transports")
        channel = grpc.insecure_channel(v.api_endpoint)
        return cls(transport=getattr(transports, transport_name)(channel=channel))
    return cls(client_options={"api_endpoint": api_endpoint(v)})
