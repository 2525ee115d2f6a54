"""TF Serving clients against the embedded server: REST and gRPC, status, metadata, and bad requests."""
from __future__ import annotations

import json
import math

import grpc
import numpy as np
import pytest
import requests

from serving_testkit import MODEL, reference_predictions


@pytest.fixture()
def server(repo, start_server):
    return start_server(repo, version_labels={"stable": 1})


def _predict_url(server, suffix=""):
    return f"http://localhost:{server.rest_port}/v1/models/{MODEL}{suffix}:predict"


def _grpc_request(tf, rows, **spec):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.get("name", MODEL)
    request.model_spec.signature_name = spec.get("signature_name", "serving_default")
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    request.inputs[spec.get("input", "features")].CopyFrom(tf.make_tensor_proto(rows))
    return request


def test_rest_client_code_for_tf_serving_works_unchanged(server, repo, digits_rows):
    expected = reference_predictions(repo / MODEL / "0001", digits_rows)
    r = requests.post(_predict_url(server), json={"signature_name": "serving_default", "instances": digits_rows.tolist()})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["classes"] for p in predictions] == expected["classes"].tolist()
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected["probabilities"], rtol=1e-5, atol=1e-6)

    # Columnar format, by version and by label.
    for suffix in ("/versions/1", "/labels/stable"):
        r = requests.post(_predict_url(server, suffix), json={"inputs": {"features": digits_rows.tolist()}})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"]["classes"] == expected["classes"].tolist()


def test_status_and_metadata_shaped_like_tf_serving(server):
    base = f"http://localhost:{server.rest_port}/v1/models/{MODEL}"
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    for url in (base, base + "/versions/1", base + "/labels/stable"):
        r = requests.get(url)
        assert r.status_code == 200 and r.json() == expected, (url, r.text)
    meta = requests.get(base + "/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert meta["model_spec"]["version"] == "1"
    assert sig["inputs"]["features"]["dtype"] == "DT_FLOAT"
    assert set(sig["outputs"]) == {"probabilities", "classes"}


def test_grpc_client_code_for_tf_serving_works_unchanged(server, repo, digits_rows):
    import tensorflow as tf
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                         prediction_service_pb2_grpc)

    expected = reference_predictions(repo / MODEL / "0001", digits_rows)
    channel = grpc.insecure_channel(f"localhost:{server.grpc_port}")
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(_grpc_request(tf, digits_rows), timeout=10.0)
        assert tf.make_ndarray(response.outputs["classes"]).tolist() == expected["classes"].tolist()
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), expected["probabilities"], rtol=1e-5)
        assert response.model_spec.version.value == 1
        by_label = stub.Predict(_grpc_request(tf, digits_rows, label="stable"), timeout=10.0)
        assert by_label.model_spec.version.value == 1

        meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        meta_request.model_spec.name = MODEL
        meta = stub.GetModelMetadata(meta_request, timeout=10.0)
        defs = get_model_metadata_pb2.SignatureDefMap()
        meta.metadata["signature_def"].Unpack(defs)
        assert "features" in defs.signature_def["serving_default"].inputs

        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = MODEL
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=10.0)
        assert [(s.version, s.state) for s in status.model_version_status] == [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    finally:
        channel.close()


def _raw_post(server, body: bytes, suffix=""):
    return requests.post(_predict_url(server, suffix), data=body, headers={"Content-Type": "application/json"})


BAD_REST = {
    "wrong_shape": (lambda rows: json.dumps({"instances": [r[:10] for r in rows.tolist()]}), "", 400, "shape"),
    "ragged_rows": (lambda rows: json.dumps({"instances": [rows[0].tolist(), rows[1].tolist()[:5]]}), "", 400, "ragged"),
    "wrong_dtype": (lambda rows: json.dumps({"instances": [["a"] * 64]}), "", 400, "numbers"),
    "nan_value": (lambda rows: json.dumps({"instances": [[float("nan")] * 64]}), "", 400, "NaN"),
    "inf_value": (lambda rows: json.dumps({"instances": [[float("inf")] + [0.0] * 63]}), "", 400, "Infinity"),
    "malformed_json": (lambda rows: '{"instances": [[1, 2,', "", 400, "JSON"),
    "not_an_object": (lambda rows: "[1, 2]", "", 400, "JSON object"),
    "no_instances_or_inputs": (lambda rows: json.dumps({"rows": []}), "", 400, "instances"),
    "both_formats": (lambda rows: json.dumps({"instances": [[0] * 64], "inputs": [[0] * 64]}), "", 400, "either"),
    "unknown_input_name": (lambda rows: json.dumps({"inputs": {"pixels": [[0] * 64]}}), "", 400, "features"),
    "unknown_signature": (lambda rows: json.dumps({"signature_name": "nope", "instances": [[0] * 64]}), "", 404, "nope"),
    "unknown_version": (lambda rows: json.dumps({"instances": [[0] * 64]}), "/versions/7", 404, "7"),
    "non_numeric_version": (lambda rows: json.dumps({"instances": [[0] * 64]}), "/versions/x", 400, "not a number"),
    "unknown_label": (lambda rows: json.dumps({"instances": [[0] * 64]}), "/labels/canary", 404, "canary"),
}


@pytest.mark.parametrize("case", sorted(BAD_REST))
def test_bad_rest_request_gets_error_and_server_stays_up(server, digits_rows, case):
    make_body, suffix, status, fragment = BAD_REST[case]
    r = _raw_post(server, make_body(digits_rows).encode(), suffix)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and fragment in r.json()["error"], r.json()
    ok = requests.post(_predict_url(server), json={"instances": digits_rows[:2].tolist()})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2


def test_unknown_model_and_route_are_404(server, digits_rows):
    r = requests.post(f"http://localhost:{server.rest_port}/v1/models/missing:predict", json={"instances": [[0] * 64]})
    assert r.status_code == 404 and "missing" in r.json()["error"]
    assert requests.get(f"http://localhost:{server.rest_port}/v1/models/missing").status_code == 404
    assert requests.get(f"http://localhost:{server.rest_port}/v2/whatever").status_code == 404
    assert requests.post(_predict_url(server), json={"instances": digits_rows[:1].tolist()}).status_code == 200


def test_oversized_body_is_413_and_server_stays_up(repo, start_server, digits_rows):
    server = start_server(repo, max_body_bytes=4096)
    big = json.dumps({"instances": np.zeros((100, 64)).tolist()}).encode()
    assert len(big) > 4096
    r = _raw_post(server, big)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]
    assert requests.post(_predict_url(server), json={"instances": digits_rows[:1].tolist()}).status_code == 200


def test_nonfinite_inputs_accepted_when_allowed(repo, start_server):
    server = start_server(repo, allow_nonfinite=True)
    r = _raw_post(server, json.dumps({"instances": [[1.0] * 63 + [math.inf]]}).encode())
    assert r.status_code == 200, r.text


BAD_GRPC = {
    "wrong_dtype": (dict(), lambda rows: rows.astype(np.float64), grpc.StatusCode.INVALID_ARGUMENT, "float"),
    "wrong_shape": (dict(), lambda rows: rows[:, :10], grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    "nan_value": (dict(), lambda rows: np.full_like(rows, np.nan), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    "unknown_input": (dict(input="pixels"), lambda rows: rows, grpc.StatusCode.INVALID_ARGUMENT, "pixels"),
    "unknown_model": (dict(name="missing"), lambda rows: rows, grpc.StatusCode.NOT_FOUND, "missing"),
    "unknown_version": (dict(version=9), lambda rows: rows, grpc.StatusCode.NOT_FOUND, "9"),
    "unknown_label": (dict(label="canary"), lambda rows: rows, grpc.StatusCode.NOT_FOUND, "canary"),
    "unknown_signature": (dict(signature_name="nope"), lambda rows: rows, grpc.StatusCode.NOT_FOUND, "nope"),
}


def test_bad_grpc_requests_get_status_codes_and_server_stays_up(server, digits_rows):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"localhost:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for case, (spec, transform, code, fragment) in BAD_GRPC.items():
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(_grpc_request(tf, transform(digits_rows), **spec), timeout=10.0)
            assert info.value.code() == code, case
            assert fragment in info.value.details(), (case, info.value.details())
            ok = stub.Predict(_grpc_request(tf, digits_rows[:1]), timeout=10.0)
            assert tf.make_ndarray(ok.outputs["classes"]).shape == (1,), case


def test_batching_merges_concurrent_requests_and_keeps_answers(repo, start_server, digits_rows):
    from concurrent.futures import ThreadPoolExecutor

    expected = reference_predictions(repo / MODEL / "0001", digits_rows)
    server = start_server(repo, batching={"enabled": True, "max_batch_size": 8, "batch_timeout_micros": 100000,
                                          "num_batch_threads": 1})
    with server.manager.resolve(MODEL) as loaded:
        sig = loaded.signature("serving_default")
    calls = []
    original = sig.batcher._run
    sig.batcher._run = lambda inputs: (calls.append(len(inputs["features"])), original(inputs))[1]

    def one(i):
        with requests.Session() as s:
            return s.post(_predict_url(server), json={"instances": digits_rows[i:i + 1].tolist()}).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert [a["predictions"][0]["classes"] for a in answers] == expected["classes"].tolist()
    assert sum(calls) == 8 and len(calls) < 8, calls  # some requests shared a call


def test_reload_config_over_grpc_adds_a_model(repo, start_server, templates, digits_rows, monkeypatch):
    from serving_testkit import publish
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    from orchestrator.serving.config_files import entry_to_proto
    from orchestrator.serving.repository import ModelEntry

    publish(repo / "other", 1, templates[2])
    token = "reload-token-from-the-environment"
    monkeypatch.setenv("TFSCALE_SERVING_ADMIN_TOKEN", token)
    server = start_server(repo, model_name=MODEL, admin={"enable_reload": True})
    request = model_management_pb2.ReloadConfigRequest()
    for name in (MODEL, "other"):
        entry_to_proto(ModelEntry(name, str(repo / name)), request.config.model_config_list.config.add())
    with grpc.insecure_channel(f"localhost:{server.grpc_port}") as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            request, timeout=30.0, metadata=[("authorization", f"Bearer {token}")])
    assert response.status.error_code == 0
    r = requests.post(f"http://localhost:{server.rest_port}/v1/models/other:predict", json={"instances": digits_rows[:1].tolist()})
    assert r.status_code == 200, r.text
