"""Hostile or oversized requests are refused cheaply and the server keeps serving others."""
from __future__ import annotations

import os
import select
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


def _read_to_close(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer (headers and Content-Length body) off a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


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
        for s in stalled:  # each was disconnected by the server after rest_read_timeout_s, with a 408 at most
            answer = _read_to_close(s)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:80]
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


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickled_request_is_cut_off_at_its_deadline(repo, start_server, digits_rows, part):
    # Each byte arrives well within the read timeout; the request as a whole does not.
    server = start_server(repo, rest_read_timeout_s=1.0)
    head = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n").encode()
    trickle = head if part == "headers" else b" " * 100
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
        start = time.monotonic()
        if part == "body":
            s.sendall(head)
        answer, other = None, None
        for i in range(len(trickle)):
            if time.monotonic() - start > 4:
                break
            try:
                s.sendall(trickle[i:i + 1])
            except OSError:  # reset: the server closed it
                answer = b""
                break
            if i == 1:  # meanwhile another connection is served
                other = requests.post(_url(server), json={"instances": digits_rows.tolist()}, timeout=10).status_code
            if select.select([s], [], [], 0.3)[0]:
                answer = _read_to_close(s)
                break
        elapsed = time.monotonic() - start
    print(f"{part} trickled 1 byte / 0.3 s: cut off after {elapsed:.2f} s with {answer[:40] if answer else answer!r}")
    assert other == 200
    assert answer is not None and elapsed < 1.5, f"still open after {elapsed:.2f} s"
    assert answer == b"" or (answer.startswith(b"HTTP/1.1 408") and b"rest_read_timeout_s" in answer), answer


def test_an_idle_keepalive_connection_waits_one_timeout_for_each_request(repo, start_server):
    server = start_server(repo, rest_read_timeout_s=1.0)
    request = f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
        for _ in range(2):  # idle 0.7 s between requests: under the timeout, and the deadline restarts each time
            s.sendall(request)
            assert _read_answer(s).startswith(b"HTTP/1.1 200")
            time.sleep(0.7)
        s.sendall(request)
        assert _read_answer(s).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert _read_to_close(s) == b""  # idle past the timeout: closed without an answer
        assert 0.8 < time.monotonic() - start < 1.5


def test_connections_past_the_pending_bound_get_503_at_once(repo, start_server):
    server = start_server(repo, rest_max_workers=1, rest_max_pending_connections=1, rest_read_timeout_s=1.0)
    address = ("127.0.0.1", server.rest_port)
    request = f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    stalled = socket.create_connection(address, timeout=10)
    extra = []
    try:
        stalled.sendall(b"GET /v1/mod")  # holds the only worker until its deadline
        time.sleep(0.2)
        waiting = socket.create_connection(address, timeout=10)  # the one connection allowed to wait
        waiting.sendall(request)
        time.sleep(0.1)
        start = time.monotonic()
        extra = [socket.create_connection(address, timeout=10) for _ in range(3)]
        answers = [_read_to_close(s, timeout=0.5) for s in extra]
        refused_in = time.monotonic() - start
        print(f"3 connections past the bound refused in {refused_in:.3f} s")
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"rest_max_pending_connections" in answer and b"Connection: close" in answer
        assert refused_in < 0.5
        waiting.settimeout(5)
        assert _read_answer(waiting).startswith(b"HTTP/1.1 200")  # served once the stalled one was cut off
        assert _read_to_close(stalled).startswith(b"HTTP/1.1 408")
        waiting.close()  # frees the worker from its keep-alive wait
        r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}", timeout=10)
        assert r.status_code == 200
    finally:
        for s in [stalled, *extra]:
            s.close()


def test_metadata_counts_against_the_inflight_cap_while_status_stays_reachable(repo, start_server, digits_rows):
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                         prediction_service_pb2_grpc)

    # A batch that waits 1.5 s to fill keeps the predict in flight deterministically.
    server = start_server(repo, max_inflight_requests=1,
                          batching={"enabled": True, "batch_timeout_micros": 1_500_000, "max_batch_size": 64})
    base = f"http://127.0.0.1:{server.rest_port}"
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = MODEL
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = MODEL
    first = {}
    t = threading.Thread(target=lambda: first.setdefault(
        "r", requests.post(_url(server), json={"instances": digits_rows.tolist()}, timeout=30)))
    t.start()
    try:
        time.sleep(0.5)
        for path in (f"/v1/models/{MODEL}/metadata", f"/v1/models/{MODEL}/versions/1/metadata"):
            r = requests.get(base + path, timeout=10)
            assert r.status_code == 429 and "max_inflight_requests" in r.json()["error"], (path, r.text)
        # Status (readiness probes) and the metrics page answer a busy server.
        for path in (f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/1"):
            assert requests.get(base + path, timeout=10).status_code == 200, path
        r = requests.get(base + "/monitoring/prometheus/metrics", timeout=10)
        assert r.status_code == 200 and "tfscale_serving_requests_total" in r.text
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as info:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=10)
            assert answer.model_version_status[0].version == 1
    finally:
        t.join(30)
    assert first["r"].status_code == 200
    assert requests.get(base + f"/v1/models/{MODEL}/metadata", timeout=10).status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=10)
        assert answer.model_version_status[0].version == 1


def test_pending_connection_bound_must_not_be_negative():
    from orchestrator.errors import ConfigError
    from orchestrator.serving.cli import load_serving_config

    with pytest.raises(ConfigError) as info:
        load_serving_config(["serving.rest_max_pending_connections=-1"])
    assert info.value.key == "serving.rest_max_pending_connections" and "4 x rest_max_workers" in str(info.value)
    assert load_serving_config(["serving.rest_max_pending_connections=0"]).rest_max_pending_connections == 0
