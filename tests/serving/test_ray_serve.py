"""``tfscale serve serving.engine=ray``: the same REST and gRPC API from Ray Serve replicas.

Config checks run without Ray or TensorFlow. The slow tests start one ``tfscale serve serving.engine=ray
serving.replicas=2`` process on a local Ray (module-scoped: starting Ray and two TensorFlow replicas costs
most of a minute on two cores) next to an embedded server over the same repository, compare their answers,
publish a version under load, and finally stop it and look for what it left running.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from serving_testkit import MODEL, PYTHON, REPO_ROOT, free_port, publish, reference_predictions

# ------------------------------------------------------------------------------------------ config checks


def _serve_cfg(*cases, hide_ray: bool = False) -> list:
    """``tfscale serve <case> --cfg`` for each case, in one fresh interpreter (optionally one where Ray cannot
    be imported): ``[(exit code, stdout, stderr)]``, then whether TensorFlow / Ray got imported and the CPU seconds."""
    hide = "sys.modules['ray'] = None\n" if hide_ray else ""  # what Python sees when Ray is not installed
    code = (f"import contextlib, io, json, sys, time\n{hide}t = time.process_time()\n"
            "from orchestrator.app.serve import main\nout = []\n"
            f"for case in {[list(c) + ['--cfg'] for c in cases]!r}:\n"
            "    o, e = io.StringIO(), io.StringIO()\n"
            "    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):\n"
            "        rc = main(case)\n"
            "    out.append((rc, o.getvalue(), e.getvalue()))\n"
            "print(json.dumps([out, 'tensorflow' in sys.modules, sys.modules.get('ray') is not None, time.process_time() - t]))")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ray_engine_config_errors_are_one_line_without_tensorflow_or_ray():
    cases = [
        (["serving.engine=ray", "serving.replicas=0"], "serving.replicas", "at least 1 replica"),
        (["serving.engine=ray", "serving.autoscaling.min_replicas=3", "serving.autoscaling.max_replicas=2"],
         "serving.autoscaling.max_replicas", "min_replicas <= max_replicas must hold, but got min_replicas=3, max_replicas=2"),
        (["serving.replicas=2"], "serving.replicas", "add serving.engine=ray"),
        (["serving.engine=ray", "serving.admin.enable_reload=true"], "serving.admin.enable_reload", "edit models.config"),
    ]
    results, tf_loaded, ray_loaded, seconds = _serve_cfg(*(c[0] for c in cases))
    for (overrides, key, fix), (rc, _, err) in zip(cases, results):
        assert rc == 2, (overrides, err)
        (message,) = err.strip().splitlines()
        assert key in message and fix in message, message
    assert not tf_loaded and not ray_loaded
    assert seconds / len(cases) < 1.0, seconds  # CPU seconds: the machine's cores are shared


def test_ray_engine_needs_ray_serve_and_takes_autoscaling_bounds():
    import yaml

    ((rc, _, err),), _, _, _ = _serve_cfg(["serving.engine=ray"], hide_ray=True)
    assert rc == 2 and "serving.engine" in err and "pip install 'tfscale[ray]'" in err, err
    ((rc, out, err),), tf_loaded, ray_loaded, _ = _serve_cfg(
        ["serving.engine=ray", "serving.replicas=2", "serving.autoscaling.max_replicas=4",
         "serving.autoscaling.target_ongoing_requests=3"])
    assert (rc, tf_loaded, ray_loaded) == (0, False, False), err
    cfg = yaml.safe_load(out)
    assert (cfg["engine"], cfg["replicas"]) == ("ray", 2)
    assert cfg["autoscaling"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3.0}


# ------------------------------------------------------------------------------------------ the replicas


def _descendants(pid: int) -> set:
    """Every live process below ``pid`` (from /proc)."""
    children: dict = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class RayServeProcess:
    """``tfscale serve serving.engine=ray serving.replicas=2`` on free ports with a local Ray of its own."""

    def __init__(self, base: Path, workdir: Path, env: dict):
        self.ready = workdir / "ray-ready.json"
        self.log_path = workdir / "ray-serve.log"
        argv = [PYTHON, "-m", "orchestrator.app.cli", "serve", "serving.engine=ray", "serving.replicas=2",
                f"serving.model_base={base}", f"serving.model_name={MODEL}", f"serving.rest_port={free_port()}",
                f"serving.grpc_port={free_port()}", "serving.file_system_poll_wait_seconds=0.3",
                f"serving.ready_file={self.ready}"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                         start_new_session=True)
        deadline = time.monotonic() + 240
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the Ray Serve server did not start:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        info = json.loads(self.ready.read_text())
        self.rest, self.grpc_port = f"http://127.0.0.1:{info['rest_port']}", info["grpc_port"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory, templates, python_env):
    """An embedded server and the Ray Serve server over one repository holding version 1."""
    from orchestrator.serving.server import EmbeddedServer
    from serving_testkit import serving_settings

    work = tmp_path_factory.mktemp("ray-serve")
    base = work / "models"
    publish(base / MODEL, 1, templates[1])
    ray_server = RayServeProcess(base, work, python_env)
    embedded = EmbeddedServer(serving_settings(base, model_name=MODEL)).start()
    try:
        yield {"base": base, "ray": ray_server, "embedded": f"http://127.0.0.1:{embedded.rest_port}"}
    finally:
        embedded.stop()
        ray_server.kill()


@pytest.mark.slow
def test_replicas_answer_like_the_embedded_server(served, digits_rows):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    ray_url, embedded_url = served["ray"].rest, served["embedded"]
    predict = f"/v1/models/{MODEL}:predict"
    requests_to_compare = [
        ("GET", f"/v1/models/{MODEL}", None),
        ("GET", f"/v1/models/{MODEL}/metadata", None),
        ("GET", f"/v1/models/{MODEL}/versions/1", None),
        ("POST", predict, {"instances": digits_rows[:3].tolist()}),
        ("POST", predict, {"inputs": {"features": digits_rows[:2].tolist()}}),
        ("GET", "/v1/models/no_such_model", None),  # 404
        ("GET", f"/v1/models/{MODEL}/versions/7", None),  # 404
        ("POST", predict, {"instances": [[1.0, 2.0]]}),  # 400: wrong shape
        ("POST", predict, {"instances": [[True] * 64]}),  # 400: booleans for a float input
        ("GET", f"/v1/models/{MODEL}/versions/x", None),  # 400
        ("POST", f"/v1/models/{MODEL}", {"instances": []}),  # 400: POST without :predict
    ]
    statuses = []
    for method, path, body in requests_to_compare:
        answers = [requests.request(method, url + path, json=body, timeout=30) for url in (embedded_url, ray_url)]
        assert answers[0].status_code == answers[1].status_code, (path, [a.text for a in answers])
        assert answers[0].json() == answers[1].json(), (path, [a.text[:300] for a in answers])
        statuses.append(answers[1].status_code)
    assert statuses.count(200) == 5 and statuses.count(404) == 2 and statuses.count(400) == 4, statuses

    # A stock TF Serving gRPC client, no Ray metadata: the proxy routes it to the only application.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(digits_rows[:4]))
    with grpc.insecure_channel(f"127.0.0.1:{served['ray'].grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=30)
        request.model_spec.name = "no_such_model"
        with pytest.raises(grpc.RpcError) as missing:
            stub.Predict(request, timeout=30)
    expected = reference_predictions(served["base"] / MODEL / "0001", digits_rows[:4])
    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), expected["probabilities"], rtol=1e-5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "no_such_model" in missing.value.details()


@pytest.mark.slow
def test_version_swap_rolls_through_the_replicas_without_a_failed_request(served, templates, digits_rows):
    rows = digits_rows[:2]
    reference = {v: reference_predictions(templates[v], rows)["probabilities"] for v in (1, 2)}
    body = {"instances": rows.tolist()}
    url = f"{served['ray'].rest}/v1/models/{MODEL}:predict"
    stop, lock = threading.Event(), threading.Lock()
    answers, failures = [], []

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.post(url, json=body, timeout=30)
                except requests.RequestException as e:
                    with lock:
                        failures.append(repr(e))
                    continue
                with lock:
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    got = np.array([p["probabilities"] for p in r.json()["predictions"]])
                    answers.append(next((v for v, ref in reference.items() if np.allclose(got, ref, atol=1e-5)), None))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        publish(served["base"] / MODEL, 2, templates[2])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # every replica has swapped once the last 40 answers all come from v2
            with lock:
                recent = answers[-40:]
            if len(recent) == 40 and set(recent) == {2} and answers.count(2) > 40:
                break
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    print(f"{len(answers)} answers during the swap: {answers.count(1)} from v1, {answers.count(2)} from v2; "
          f"{len(failures)} failed")
    assert not failures, failures[:5]
    assert None not in answers
    assert answers[0] == 1 and answers[-40:] == [2] * 40, answers[-40:]


@pytest.mark.slow
def test_stopping_leaves_no_process_behind(served):
    server = served["ray"]
    below = _descendants(server.proc.pid)
    assert len(below) >= 5, below  # Ray's GCS, raylet, workers: the controller, the proxy, two replicas
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0, server.log_path.read_text()[-3000:]
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in below) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [p for p in below if _alive(p)]
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.rest}/v1/models/{MODEL}", timeout=5)
