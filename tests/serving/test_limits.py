"""Hostile or oversized requests are refused cheaply and the server keeps serving others."""
from __future__ import annotations

import os
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import requests

from serving_testkit import MODEL


def _proc_status(field: str) -> int:
    """A number from /proc/self/status (the server runs in this process): VmRSS in kB, Threads."""
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _url(server, suffix=""):
    return f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}{suffix}:predict"


@pytest.fixture()
def server(repo, start_server):
    return start_server(repo)


def _raw_post(port: int, path: str, headers: str, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body)
        return s.recv(65536)


def test_deeply_nested_json_is_400_not_500(server, digits_rows):
    deep = b"[" * 10000 + b"]" * 10000
    r = requests.post(_url(server), data=b'{"instances": ' + deep + b"}", timeout=10)
    assert r.status_code == 400 and "max_json_depth" in r.json()["error"]
    r = requests.post(_url(server), json={"instances": digits_rows.tolist()}, timeout=10)
    assert r.status_code == 200


def test_element_count_limit_is_400(repo, start_server):
    server = start_server(repo, max_request_elements=1000)
    r = requests.post(_url(server), data=b'{"instances": [' + b",".join([b"[" + b",".join([b"0"] * 64) + b"]"] * 20) + b"]}",
                      timeout=10)
    assert r.status_code == 400 and "max_request_elements" in r.json()["error"]


def test_non_ascii_digits_in_content_length_and_version_are_400(server, digits_rows):
    answer = _raw_post(server.rest_port, f"/v1/models/{MODEL}:predict", "Content-Length: \u00b2\r\n", b"{}")
    assert answer.startswith(b"HTTP/1.1 400")
    r = requests.post(_url(server, "/versions/\u00b2"), json={"instances": digits_rows.tolist()}, timeout=10)
    assert r.status_code == 400 and "not a number" in r.json()["error"]
    r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}/versions/\u00b2", timeout=10)
    assert r.status_code == 400


def test_json_booleans_for_a_float_input_are_400(server):
    r = requests.post(_url(server), json={"instances": [[True] * 64]}, timeout=10)
    assert r.status_code == 400
    assert "features" in r.json()["error"] and "float" in r.json()["error"]


def _declared_only(dtype: int, dims, **values):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **values)


@pytest.mark.parametrize("proto_args", [
    (7, [1_000_000, 64], dict(string_val=[b"x"])),  # a string tensor of 64e6 elements from one value
    (1, [100_000_000, 1], dict(float_val=[1.0])),  # a float tensor of 1e8 elements from one value
    (1, [1_000_000, 64], dict(float_val=[1.0])),  # right dtype and shape, splatted past max_request_elements
    (1, [1000, 64], dict(float_val=[1.0, 2.0, 3.0])),  # content disagrees with the declared shape
    (1, [10, 64], dict(tensor_content=b"\0" * 12)),
], ids=["string_1e6x64", "float_1e8x1", "float_splat_1e6x64", "count_mismatch", "content_mismatch"])
def test_grpc_declared_tensor_is_checked_before_it_is_built(server, proto_args):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    dtype, dims, values = proto_args
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["features"].CopyFrom(_declared_only(dtype, dims, **values))
    assert request.ByteSize() < 100
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        ok = predict_pb2.PredictRequest()
        ok.model_spec.name = MODEL
        ok.inputs["features"].CopyFrom(_declared_only(1, [1, 64], float_val=[0.0] * 64))
        stub.Predict(ok, timeout=10)
        before = _proc_status("VmRSS")
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=10)
        grown_mb = (_proc_status("VmRSS") - before) / 1024
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        print(f"RSS growth {grown_mb:.1f} MB for {dims}")
        assert grown_mb < 50
        stub.Predict(ok, timeout=10)


def test_stalled_connections_hold_bounded_threads_and_are_closed(repo, start_server, digits_rows):
    cap = 50
    server = start_server(repo, rest_max_workers=cap, rest_read_timeout_s=0.5)
    baseline = _proc_status("Threads")
    stalled = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
            s.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nContent-Le".encode())
            stalled.append(s)
        time.sleep(0.3)
        threads = _proc_status("Threads")
        print(f"threads: baseline {baseline}, with 200 stalled connections {threads}")
        assert threads - baseline <= cap + 5
        start = time.monotonic()
        r = requests.post(_url(server), json={"instances": digits_rows.tolist()}, timeout=30)
        elapsed = time.monotonic() - start
        print(f"predict behind 200 stalled connections served in {elapsed:.2f} s")
        assert r.status_code == 200 and elapsed < 5
        for s in stalled:  # each was disconnected by the server after rest_read_timeout_s
            assert s.recv(1) == b""
    finally:
        for s in stalled:
            s.close()


def test_requests_past_the_inflight_cap_get_429(repo, start_server, digits_rows):
    # A batch that waits 2 s to fill keeps the first request in flight deterministically.
    server = start_server(repo, max_inflight_requests=1,
                          batching={"enabled": True, "batch_timeout_micros": 2_000_000, "max_batch_size": 64})
    first = {}
    t = threading.Thread(target=lambda: first.setdefault(
        "r", requests.post(_url(server), json={"instances": digits_rows.tolist()}, timeout=30)))
    t.start()
    time.sleep(0.5)
    r = requests.post(_url(server), json={"instances": digits_rows.tolist()}, timeout=30)
    assert r.status_code == 429 and "max_inflight_requests" in r.json()["error"]
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["features"].CopyFrom(_declared_only(1, [1, 64], float_val=[0.0] * 64))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    t.join(30)
    assert first["r"].status_code == 200
    assert requests.post(_url(server), json={"instances": digits_rows.tolist()}, timeout=30).status_code == 200


@pytest.mark.parametrize("key", ["max_json_depth", "max_request_elements", "max_request_bytes", "rest_max_workers",
                                 "rest_read_timeout_s", "max_inflight_requests"])
def test_limit_settings_must_be_positive(key):
    from orchestrator.errors import ConfigError
    from orchestrator.serving.cli import load_serving_config

    with pytest.raises(ConfigError) as info:
        load_serving_config([f"serving.{key}=0"])
    assert info.value.key == f"serving.{key}"
    assert "\n" not in str(info.value)
