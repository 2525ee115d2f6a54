"""One replica of the TF-Serving-compatible server on Ray Serve (``tfscale serve serving.engine=ray``).

A replica is the embedded server without its sockets: a :class:`~orchestrator.serving.manager.ModelManager`
that reads the repository from its URI (a local path, ``gs://``, ``s3://``) and polls it, the REST answers
of :class:`~orchestrator.serving.rest.RestApi` behind Ray Serve's HTTP proxy, and the servicers of
:mod:`~orchestrator.serving.grpc_service` behind Ray Serve's gRPC proxy. Paths, bodies, status codes and
error bodies are therefore those of the embedded server. Each replica loads a newly published version on its
own poll with the embedded server's graceful swap (load and warm, switch, drain, unload), so a version swap
rolls through the replicas without a failed request; while it rolls, replicas may answer from either version.

The gRPC proxy carries TF Serving's ``PredictionService`` and ``ModelService`` through the stock
``tensorflow_serving.apis`` add-functions (:data:`GRPC_SERVICER_FUNCTIONS`): it hands each call to the
replica method of the same name, with the request message already parsed, and sends back what the
replica returns; a status set on the call's context becomes the call's status.

The engine that deploys these replicas is :mod:`orchestrator.launch.ray_serve`. Importing this module imports
neither Ray nor TensorFlow.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Tuple

log = logging.getLogger("tfscale.serving")

#: The gRPC ``add_*Servicer_to_server`` functions Ray Serve's gRPC proxy registers (import paths).
GRPC_SERVICER_FUNCTIONS = (
    "tensorflow_serving.apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server",
    "tensorflow_serving.apis.model_service_pb2_grpc.add_ModelServiceServicer_to_server",
)
#: gRPC method -> (service, module and class of its response message), for answering an aborted call.
_GRPC_METHODS: Dict[str, Tuple[str, str, str]] = {
    "Predict": ("prediction", "predict_pb2", "PredictResponse"),
    "Classify": ("prediction", "classification_pb2", "ClassificationResponse"),
    "Regress": ("prediction", "regression_pb2", "RegressionResponse"),
    "GetModelMetadata": ("prediction", "get_model_metadata_pb2", "GetModelMetadataResponse"),
    "GetModelStatus": ("models", "get_model_status_pb2", "GetModelStatusResponse"),
    "HandleReloadConfigRequest": ("models", "model_management_pb2", "ReloadConfigResponse"),
}


class _Aborted(Exception):
    """A servicer ended its call with a status (``context.abort``)."""


class _CallContext:
    """What the servicers of :mod:`grpc_service` use of a ``grpc.ServicerContext``, over Ray Serve's
    ``RayServegRPCContext``: ``abort`` sets the call's status and ends the servicer method."""

    def __init__(self, serve_context: Any):
        self._context = serve_context

    def abort(self, code: Any, details: str) -> None:
        self._context.set_code(code)
        self._context.set_details(details)
        raise _Aborted(details)

    def invocation_metadata(self) -> List[Tuple[str, str]]:
        return list(self._context.invocation_metadata())

    def auth_context(self) -> Dict[str, Any]:
        return dict(self._context.auth_context() or {})

    def peer(self) -> str:
        return str(self._context.peer())


class ServingReplica:
    """A Ray Serve deployment class: the models of the repository, answering REST and gRPC requests.

    ``settings`` is a :class:`~orchestrator.config.serving.ServingConfig` as a plain dict, with the repository
    given by absolute paths or URIs (the replica's working directory is Ray's, not the caller's). The
    constructor loads and warms every model before it returns, so Ray Serve routes no request to a replica
    that has nothing loaded.
    """

    def __init__(self, settings: Dict[str, Any]):
        from omegaconf import OmegaConf

        from orchestrator.config.serving import ServingConfig
        from orchestrator.serving.grpc_service import build_services
        from orchestrator.serving.limits import InflightLimiter
        from orchestrator.serving.manager import ModelManager
        from orchestrator.serving.rest import RestApi
        from orchestrator.serving.server import model_source

        s = OmegaConf.merge(OmegaConf.structured(ServingConfig), settings)
        logging.getLogger("tfscale").setLevel(getattr(logging, str(s.log_level).upper(), logging.INFO))
        entries, source = model_source(s)
        self.manager = ModelManager(entries, batching=s.batching, warmup=s.warmup, entries_source=source,
                                    unload_grace_s=s.unload_grace_s)
        self.manager.poll_once()
        self.manager.start_polling(s.file_system_poll_wait_seconds)
        inflight = InflightLimiter(s.max_inflight_requests)  # REST and gRPC together, as in the embedded server
        # No Prometheus page here: a scrape through the proxy would see one replica at random.
        self.rest = RestApi(self.manager, allow_nonfinite=s.allow_nonfinite, max_body_bytes=s.max_body_bytes,
                            metrics_path=None, max_json_depth=s.max_json_depth,
                            max_request_elements=s.max_request_elements, inflight=inflight)
        prediction, models = build_services(self.manager, s.allow_nonfinite, inflight, s.max_request_elements,
                                            s.max_request_bytes)  # no admin policy: config reload is refused
        self._servicers = {"prediction": prediction, "models": models}
        # REST handlers run here, off the replica's event loop, as the embedded server's worker threads do.
        self._pool = ThreadPoolExecutor(max_workers=s.rest_max_workers, thread_name_prefix="rest")
        log.info("replica serving %s", ", ".join(f"{n} {self.manager.loaded_versions(n)}" for n in self.manager.model_names()))

    # ------------------------------------------------------------------------------------------- REST
    async def __call__(self, request: Any) -> Any:
        """One HTTP request from Ray Serve's proxy (a Starlette request): TF Serving's REST API."""
        from starlette.responses import Response

        started = time.perf_counter()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        loop = asyncio.get_running_loop()
        if request.method == "GET":
            reply = await loop.run_in_executor(self._pool, self.rest.get, path)
        elif request.method == "POST":
            raw = await request.body()
            if len(raw) > self.rest.max_body_bytes:
                reply = self.rest.error(self.rest.body_too_large(len(raw)))
            else:
                reply = await loop.run_in_executor(self._pool, self.rest.post, path, raw, started)
        else:
            from orchestrator.serving.status import ErrorCode, RequestError

            reply = self.rest.error(RequestError(ErrorCode.UNIMPLEMENTED, f"Unsupported method ('{request.method}')"))
        return Response(content=reply.body, status_code=reply.status, media_type=reply.content_type)

    # ------------------------------------------------------------------------------------------- gRPC
    def _grpc(self, method: str, request: Any, grpc_context: Any) -> Any:
        service, module, response = _GRPC_METHODS[method]
        call: Callable[[Any, Any], Any] = getattr(self._servicers[service], method)
        try:
            return call(request, _CallContext(grpc_context))
        except _Aborted:
            # The status is on the context; the proxy sends it with this empty message.
            import importlib

            return getattr(importlib.import_module(f"tensorflow_serving.apis.{module}"), response)()

    def Predict(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802 - gRPC method names
        """``PredictionService.Predict``."""
        return self._grpc("Predict", request, grpc_context)

    def Classify(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """``PredictionService.Classify``."""
        return self._grpc("Classify", request, grpc_context)

    def Regress(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """``PredictionService.Regress``."""
        return self._grpc("Regress", request, grpc_context)

    def GetModelMetadata(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """``PredictionService.GetModelMetadata``."""
        return self._grpc("GetModelMetadata", request, grpc_context)

    def GetModelStatus(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """``ModelService.GetModelStatus``."""
        return self._grpc("GetModelStatus", request, grpc_context)

    def HandleReloadConfigRequest(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """``ModelService.HandleReloadConfigRequest``: refused (each replica reads models.config itself)."""
        return self._grpc("HandleReloadConfigRequest", request, grpc_context)

    def __del__(self) -> None:
        # Ray Serve calls this when it stops the replica: stop polling, unload, remove downloaded copies.
        manager = getattr(self, "manager", None)
        if manager is not None:
            manager.stop()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
