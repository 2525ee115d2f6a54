"""The gRPC API of TF Serving: ``PredictionService`` (Predict, Classify, Regress, GetModelMetadata) and
``ModelService`` (GetModelStatus, HandleReloadConfigRequest), with the ``tensorflow_serving.apis`` messages.

Predict, Classify, Regress and GetModelMetadata run under the in-flight limiter shared with REST: past
``serving.max_inflight_requests`` they get RESOURCE_EXHAUSTED. GetModelStatus (health checks) and
HandleReloadConfigRequest are not capped."""
from __future__ import annotations

import logging
from concurrent import futures
from typing import Any, Dict, Optional, Tuple

import numpy as np

from orchestrator.serving import codec, examples
from orchestrator.serving.admin import AdminPolicy
from orchestrator.serving.config_files import entry_from_proto
from orchestrator.serving.limits import InflightLimiter, check_tensor_proto
from orchestrator.serving.manager import ModelManager
from orchestrator.serving.metrics import ServingMetrics, grpc_interceptor
from orchestrator.serving.status import ErrorCode, RequestError

log = logging.getLogger("tfscale.serving")

_NUMERIC_DT = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.uint8): 4,
               np.dtype(np.int16): 5, np.dtype(np.int8): 6, np.dtype(np.int64): 9, np.dtype(np.bool_): 10,
               np.dtype(np.uint16): 17, np.dtype(np.uint32): 22, np.dtype(np.uint64): 23}


def tensor_proto(arr: np.ndarray) -> Any:
    """A ``TensorProto`` of ``arr``; numeric arrays go straight into ``tensor_content`` (no per-element copy)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    dt = _NUMERIC_DT.get(arr.dtype)
    if dt is None:
        from orchestrator.runtime.tf_env import import_tensorflow

        return import_tensorflow().make_tensor_proto(arr)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in arr.shape])
    return tensor_pb2.TensorProto(dtype=dt, tensor_shape=shape, tensor_content=np.ascontiguousarray(arr).tobytes())


def _spec_of(request: Any) -> Tuple[str, Optional[int], Optional[str]]:
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.name, int(spec.version.value), None
    if choice == "version_label":
        return spec.name, None, spec.version_label
    return spec.name, None, None


def _abort(context: Any, err: RequestError) -> None:
    context.abort(err.code.grpc_code, err.message)


def build_services(manager: ModelManager, allow_nonfinite: bool, inflight: Optional[InflightLimiter] = None,
                   max_request_elements: int = 1 << 24, max_request_bytes: int = 1 << 28,
                   admin: Optional[AdminPolicy] = None) -> Tuple[Any, Any]:
    """The two servicer objects over ``manager``; ``admin`` decides who may reload (default: nobody)."""
    inflight = inflight or InflightLimiter(64)
    admin = admin or AdminPolicy(False, None, (), ())
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                         model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc, regression_pb2)

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        """Predict, Classify, Regress and GetModelMetadata."""

        def Predict(self, request, context):  # noqa: N802 - gRPC method names
            try:
                name, version, label = _spec_of(request)
                with inflight, manager.resolve(name, version, label) as lv:
                    sig = lv.signature(request.model_spec.signature_name)
                    inputs: Dict[str, np.ndarray] = {}
                    total = 0
                    for key, proto in request.inputs.items():
                        if key not in sig.inputs:
                            raise codec.invalid(f"input tensor alias not found in signature: {key}. Inputs expected to "
                                                f"be in the set {{{','.join(sorted(sig.inputs))}}}.")
                        want_dt = sig.inputs[key].dtype.as_datatype_enum
                        if proto.dtype != want_dt:  # checked on the declaration, before anything is allocated
                            raise codec.invalid(f"Expects arg[{key}] to be {sig.inputs[key].dtype.name} but "
                                                f"{tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else 'DT_INVALID'} is provided")
                        declared = [d.size for d in proto.tensor_shape.dim]
                        spec_shape = sig.inputs[key].shape
                        if spec_shape.rank is not None and (len(declared) != spec_shape.rank or any(
                                w is not None and w != d for w, d in zip(spec_shape.as_list(), declared))):
                            raise codec.invalid(f"PredictRequest: input '{key}' has shape {declared}; expected "
                                                f"{codec._expected_shape(sig.inputs[key])}")
                        total += check_tensor_proto(key, proto, max_request_elements, max_request_bytes)
                        if total > max_request_elements:
                            raise codec.invalid(f"PredictRequest: more than {max_request_elements} elements in all "
                                                "inputs (serving.max_request_elements)")
                        try:
                            raw = tf.make_ndarray(proto)
                        except Exception as e:
                            raise codec.invalid(f"input '{key}' is not a valid TensorProto: {e}") from None
                        want = np.dtype(codec._np_dtype(sig.inputs[key]))
                        if raw.dtype != want and not (want == np.object_ and raw.dtype.kind in "OS"):
                            raise codec.invalid(f"Expects arg[{key}] to be {sig.inputs[key].dtype.name} but "
                                                f"{tf.as_dtype(raw.dtype).name} is provided")
                        inputs[key] = codec.to_array(key, raw, sig.inputs[key], allow_nonfinite, "PredictRequest")
                    codec.check_inputs(inputs, sig.inputs, "PredictRequest")
                    outputs = sig.run(inputs)
                    response = predict_pb2.PredictResponse()
                    response.model_spec.name = name
                    response.model_spec.version.value = lv.version
                    response.model_spec.signature_name = sig.name
                wanted = set(request.output_filter)
                unknown = wanted - set(outputs)
                if unknown:
                    raise codec.invalid(f"output tensor alias not found in signature: {sorted(unknown)}; outputs are {sorted(outputs)}")
                for key, value in outputs.items():
                    if not wanted or key in wanted:
                        response.outputs[key].CopyFrom(tensor_proto(value))
                return response
            except RequestError as e:
                _abort(context, e)
            except Exception as e:  # the server stays up whatever a request does
                log.exception("Predict failed")
                _abort(context, RequestError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))

        def _examples(self, request, context, method: str, response: Any, fill: Any) -> Any:
            """Classify or Regress: the request's tf.Examples through a signature of that method."""
            try:
                serialized = examples.serialized_from_input(request.input)
                if sum(len(x) for x in serialized) > max_request_bytes:
                    raise codec.invalid(f"{method}: the examples hold more than {max_request_bytes} bytes "
                                        "(serving.max_request_bytes)")
                name, version, label = _spec_of(request)
                with inflight, manager.resolve(name, version, label) as lv:
                    sig = lv.signature(request.model_spec.signature_name)
                    results = examples.run_method(sig, serialized, method, lv.method_names())
                    response.model_spec.name = name
                    response.model_spec.version.value = lv.version
                    response.model_spec.signature_name = sig.name
                fill(response.result, results)
                return response
            except RequestError as e:
                _abort(context, e)
            except Exception as e:  # the server stays up whatever a request does
                log.exception("%s failed", method)
                _abort(context, RequestError(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))

        def Classify(self, request, context):  # noqa: N802
            return self._examples(request, context, examples.CLASSIFY, classification_pb2.ClassificationResponse(),
                                  examples.fill_classification)

        def Regress(self, request, context):  # noqa: N802
            return self._examples(request, context, examples.REGRESS, regression_pb2.RegressionResponse(),
                                  examples.fill_regression)

        def GetModelMetadata(self, request, context):  # noqa: N802
            try:
                fields = set(request.metadata_field)
                if fields - {"signature_def"} or not fields:
                    raise codec.invalid(f"Metadata field(s) {sorted(fields) or '[]'} not supported; use 'signature_def'")
                name, version, label = _spec_of(request)
                with inflight, manager.resolve(name, version, label) as lv:
                    defs = get_model_metadata_pb2.SignatureDefMap()
                    for k, v in lv.signature_defs().items():
                        defs.signature_def[k].CopyFrom(v)
                    response = get_model_metadata_pb2.GetModelMetadataResponse()
                    response.model_spec.name = name
                    response.model_spec.version.value = lv.version
                    response.metadata["signature_def"].Pack(defs)
                    return response
            except RequestError as e:
                _abort(context, e)

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        """GetModelStatus and HandleReloadConfigRequest."""

        def GetModelStatus(self, request, context):  # noqa: N802
            try:
                name, version, label = _spec_of(request)
                response = get_model_status_pb2.GetModelStatusResponse()
                State = get_model_status_pb2.ModelVersionStatus.State
                # Not capped, as REST's status GET: it only reads states, and health checks ask it.
                for v, st in manager.status(name, version, label):
                    item = response.model_version_status.add(version=v, state=State.Value(st.state))
                    item.status.error_code = 0 if st.error_code == "OK" else 2  # tensorflow.error.Code: OK / UNKNOWN
                    item.status.error_message = st.error
                return response
            except RequestError as e:
                _abort(context, e)

        def HandleReloadConfigRequest(self, request, context):  # noqa: N802
            try:
                # Who asks is settled before the request is even looked at.
                who = admin.authorize(context.invocation_metadata(), context.auth_context(), context.peer())
                response = model_management_pb2.ReloadConfigResponse()
                if request.config.WhichOneof("config") != "model_config_list":
                    response.status.error_code = 3  # INVALID_ARGUMENT
                    response.status.error_message = "Only model_config_list is supported"
                    return response
                entries = [entry_from_proto(m) for m in request.config.model_config_list.config]
                admin.check_paths(entries)
                manager.set_entries(entries)
                log.info("reloaded config over gRPC from %s (%s): %s", context.peer(), who, ", ".join(e.name for e in entries))
                return response
            except RequestError as e:
                _abort(context, e)

    return PredictionService(), ModelService()


def start_grpc(manager: ModelManager, host: str, port: int, *, allow_nonfinite: bool, max_workers: int,
               tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
               inflight: Optional[InflightLimiter] = None, max_request_elements: int = 1 << 24,
               max_request_bytes: int = 1 << 28, tls_client_ca: Optional[str] = None,
               admin: Optional[AdminPolicy] = None, metrics: Optional[ServingMetrics] = None) -> Tuple[Any, int]:
    """Start the gRPC server; returns ``(server, bound_port)``.

    With ``tls_client_ca`` the TLS handshake requires a client certificate signed by that CA (mTLS).
    """
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    prediction, models = build_services(manager, allow_nonfinite, inflight, max_request_elements, max_request_bytes,
                                        admin)
    interceptors = [grpc_interceptor(metrics)] if metrics is not None else []  # counts Predict/Classify/Regress
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
                         interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                  ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)
    address = f"{host}:{port}"
    if tls_cert and tls_key:
        with open(tls_key, "rb") as k, open(tls_cert, "rb") as c:
            pair = (k.read(), c.read())
        client_ca = None
        if tls_client_ca:
            with open(tls_client_ca, "rb") as f:
                client_ca = f.read()
        creds = grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"gRPC could not bind {address} (port in use?)")
    server.start()
    return server, bound
