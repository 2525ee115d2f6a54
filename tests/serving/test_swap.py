"""Hot reload under load: publishing a version swaps to it with no failed request, deleting it rolls back;
labels pin versions and ``tfscale rollback`` moves them."""
from __future__ import annotations

import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import requests

from serving_testkit import MODEL, publish


class LoadGenerator:
    """``threads`` gRPC clients sending Predict in a loop; records failures and the versions that answered."""

    def __init__(self, port: int, rows: np.ndarray, threads: int = 4):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        self.request = predict_pb2.PredictRequest()
        self.request.model_spec.name = MODEL
        self.request.model_spec.signature_name = "serving_default"
        self.request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows))
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures: list = []
        self.answers: list = []  # (time, version)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self.stop.is_set():
                try:
                    version = stub.Predict(self.request, timeout=10.0).model_spec.version.value
                    with self.lock:
                        self.answers.append((time.monotonic(), version))
                except grpc.RpcError as e:
                    with self.lock:
                        self.failures.append(f"{e.code().name}: {e.details()}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)

    def wait_for_version(self, version: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                recent = [v for _, v in self.answers[-8:]]
            if len(recent) == 8 and set(recent) == {version}:
                return
            time.sleep(0.05)
        raise AssertionError(f"answers did not move to version {version}: last {self.answers[-8:]}")


def _states(port: int) -> dict:
    r = requests.get(f"http://127.0.0.1:{port}/v1/models/{MODEL}")
    return {int(s["version"]): s["state"] for s in r.json()["model_version_status"]}


def _wait_state(port: int, version: int, state: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _states(port).get(version) == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"version {version} never became {state}: {_states(port)}")


def test_publish_swaps_and_delete_rolls_back_with_no_failed_request(repo, start_server, templates, digits_rows):
    server = start_server(repo, file_system_poll_wait_seconds=0.2)
    with LoadGenerator(server.grpc_port, digits_rows[:2]) as load:
        time.sleep(0.5)
        publish(repo / MODEL, 2, templates[2])
        load.wait_for_version(2)
        _wait_state(server.rest_port, 1, "END")
        assert server.manager.loaded_versions(MODEL) == [2]
        served_before_delete = len(load.answers)

        shutil.rmtree(repo / MODEL / "0002")
        load.wait_for_version(1)
        _wait_state(server.rest_port, 1, "AVAILABLE")
        time.sleep(0.3)
    assert load.failures == []
    versions = [v for _, v in load.answers]
    assert versions[0] == 1 and 2 in versions and versions[-1] == 1
    assert len(load.answers) > served_before_delete > 20
    assert server.manager.loaded_versions(MODEL) == [1]
    assert 2 not in _states(server.rest_port)  # the deleted version is forgotten once unloaded


def test_in_flight_request_finishes_on_the_old_version(repo, start_server, templates):
    server = start_server(repo, file_system_poll_wait_seconds=0)
    lease = server.manager.resolve(MODEL)  # a request in flight on version 1
    publish(repo / MODEL, 2, templates[2])
    server.manager.poll_once()
    assert server.manager.loaded_versions(MODEL) == [2]
    assert _states(server.rest_port)[1] == "UNLOADING"
    out = lease.version.signature("serving_default").run({"features": np.zeros((1, 64), np.float32)})
    assert out["classes"].shape == (1,)
    lease.__exit__(None, None, None)
    _wait_state(server.rest_port, 1, "END", timeout=5)


def test_labels_pin_versions_and_rollback_moves_stable(repo, start_server, templates, digits_rows):
    from orchestrator.serving.cli import rollback_main

    publish(repo / MODEL, 2, templates[2])
    assert rollback_main(["--model", MODEL, "--to", "2", f"serving.model_base={repo}"]) == 0  # writes models.config
    server = start_server(repo, file_system_poll_wait_seconds=0.2)
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}/labels/stable:predict"
    body = {"instances": digits_rows[:1].tolist()}
    assert requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}/labels/stable").json()[
        "model_version_status"][0]["version"] == "2"

    # Roll 'stable' back one version while a client keeps using the label: no request fails, and the
    # label keeps version 1 loaded although the policy is latest{1}.
    codes, stop = [], threading.Event()

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                codes.append(session.post(url, json=body).status_code)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(0.3)
        assert rollback_main(["--model", MODEL, f"serving.model_base={repo}"]) == 0
        deadline = time.monotonic() + 10
        while server.manager.labels(MODEL).get("stable") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert codes and set(codes) == {200}
    _wait_state(server.rest_port, 1, "AVAILABLE")
    assert requests.post(url, json=body).status_code == 200
    assert requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}/labels/stable").json()[
        "model_version_status"][0]["version"] == "1"
    assert server.manager.loaded_versions(MODEL) == [1, 2]

    # Pin: unversioned requests go to version 1 only; unpin restores latest.
    assert rollback_main(["--model", MODEL, "--pin", "1", f"serving.model_base={repo}"]) == 0
    deadline = time.monotonic() + 10
    while server.manager.loaded_versions(MODEL) != [1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.manager.loaded_versions(MODEL) == [1]
    assert rollback_main(["--model", MODEL, "--unpin", "--label", "stable", f"serving.model_base={repo}"]) == 0


def test_rollback_remove_takes_a_bad_version_out(repo, templates, start_server, capsys):
    from orchestrator.serving.cli import rollback_main

    publish(repo / MODEL, 2, templates[2])
    server = start_server(repo, file_system_poll_wait_seconds=0.2)
    assert server.manager.loaded_versions(MODEL) == [2]
    assert rollback_main(["--model", MODEL, "--remove", "2", f"serving.model_base={repo}"]) == 0
    assert "moved to" in capsys.readouterr().out
    assert not (repo / MODEL / "0002").exists() and any(p.name.startswith(".removed-0002") for p in (repo / MODEL).iterdir())
    deadline = time.monotonic() + 10
    while server.manager.loaded_versions(MODEL) != [1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.manager.loaded_versions(MODEL) == [1]


def test_rollback_errors_name_the_fix(repo, capsys):
    from orchestrator.serving.cli import rollback_main

    assert rollback_main(["--model", MODEL, "--remove", "1", f"serving.model_base={repo}"]) == 2
    assert "only version" in capsys.readouterr().err
    assert rollback_main(["--model", MODEL, "--to", "5", f"serving.model_base={repo}"]) == 2
    assert "versions [1]" in capsys.readouterr().err
    assert rollback_main(["--model", "nope", f"serving.model_base={repo}"]) == 2
    assert "No model directory" in capsys.readouterr().err


def test_broken_version_does_not_replace_a_working_one(repo, start_server, digits_rows):
    server = start_server(repo, file_system_poll_wait_seconds=0)
    bad = repo / MODEL / ".tmp-bad"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"not a model")
    bad.rename(repo / MODEL / "0002")
    server.manager.poll_once()
    states = _states(server.rest_port)
    assert states[2] == "END" and states[1] == "AVAILABLE"
    body = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}/versions/2").json()
    assert body["model_version_status"][0]["status"]["error_code"] != "OK"
    r = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict", json={"instances": digits_rows[:1].tolist()})
    assert r.status_code == 200
