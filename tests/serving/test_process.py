"""Real processes and sockets: ``python -m orchestrator.serving`` and ``deploy=tf_serving`` end to end."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from serving_testkit import MODEL, PYTHON, REPO_ROOT, free_port, reference_predictions


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_server_subprocess_answers_rest_and_grpc_and_stops_on_sigterm(repo, tmp_path, python_env, digits_rows):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    ready = tmp_path / "ready.json"
    rest_port, grpc_port = free_port(), free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([PYTHON, "-m", "orchestrator.serving", "serve", f"serving.model_base={repo}",
                             f"serving.model_name={MODEL}", f"serving.rest_port={rest_port}",
                             f"serving.grpc_port={grpc_port}", f"serving.ready_file={ready}", "serving=batching"],
                            cwd=str(tmp_path), env=python_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        info = _wait_file(ready, proc)
        assert (info["rest_port"], info["grpc_port"], info["pid"]) == (rest_port, grpc_port, proc.pid)
        expected = reference_predictions(repo / MODEL / "0001", digits_rows)["classes"].tolist()
        r = requests.post(f"http://localhost:{rest_port}/v1/models/{MODEL}:predict",
                          json={"signature_name": "serving_default", "instances": digits_rows.tolist()})
        assert [p["classes"] for p in r.json()["predictions"]] == expected
        assert requests.post(f"http://localhost:{rest_port}/v1/models/{MODEL}:predict", data=b"{oops").status_code == 400
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.signature_name = "serving_default"
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(digits_rows))
        with grpc.insecure_channel(f"localhost:{grpc_port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10.0)
        assert tf.make_ndarray(response.outputs["classes"]).tolist() == expected
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "version 1 loaded" in (tmp_path / "server.log").read_text()


def _self_signed(tmp_path: Path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")
def test_grpc_with_tls(repo, tmp_path, start_server, digits_rows):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    key, cert = _self_signed(tmp_path)
    server = start_server(repo, grpc_tls_cert=str(cert), grpc_tls_key=str(key))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(digits_rows[:2]))
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(f"localhost:{server.grpc_port}", creds) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10.0)
    assert tf.make_ndarray(response.outputs["classes"]).shape == (2,)
    with grpc.insecure_channel(f"localhost:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError):
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=5.0)


def _deploy_cfg(repo: Path, tmp_path: Path, **tf_serving):
    from hydra import compose, initialize_config_dir

    from orchestrator.config.schema import register_configs

    register_configs()
    overrides = ["deploy=tf_serving", f"export.model_base={repo}", f"runs_dir={tmp_path / 'runs'}"]
    overrides += [f"deploy.tf_serving.{k}={v}" for k, v in tf_serving.items()]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.slow
def test_deploy_tf_serving_writes_files_smoke_tests_and_leaves_no_process(repo, tmp_path, capsys):
    from tensorflow_serving.config import model_server_config_pb2
    from google.protobuf import text_format
    import yaml

    from orchestrator.deploy import get
    from orchestrator.serving.config_files import update_models_config
    from orchestrator.serving.repository import ModelEntry

    update_models_config(repo / "models.config", ModelEntry("other", "/elsewhere/other"))
    cfg = _deploy_cfg(repo, tmp_path, launch="embedded", label_new_version="canary", replicas=2)
    target = get("tf_serving")
    target.check(cfg)
    run_dir = tmp_path / "run"
    result = target.deploy(cfg, repo / MODEL / "0001", run_dir)

    smoke = result["smoke_test"]
    assert smoke["passed"] and smoke["server"] == "embedded" and smoke["state"] == "AVAILABLE"
    assert smoke["rest_agreement"] == 1.0 and smoke["grpc_agreement"] == 1.0 and smoke["served_version"] == 1
    assert smoke["running"] is False and not _alive(smoke["pid"])
    printed = capsys.readouterr().out
    assert "tensorflow_model_server --port=8500 --rest_api_port=8501" in printed and "docker run" in printed

    parsed = text_format.Parse((repo / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    configs = {c.name: c for c in parsed.model_config_list.config}
    assert set(configs) == {MODEL, "other"}  # the other model's entry survives
    assert configs[MODEL].base_path == str((repo / MODEL).resolve()) and dict(configs[MODEL].version_labels) == {"canary": 1}
    container = text_format.Parse((repo / "models.container.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert {c.name: c.base_path for c in container.model_config_list.config}[MODEL] == f"/models/{MODEL}"
    deployment, service = yaml.safe_load_all(Path(result["files"]["kubernetes_manifest"]).read_text())
    assert deployment["spec"]["replicas"] == 2
    assert json.dumps(result)  # recordable in metrics.json


@pytest.mark.slow
def test_deploy_launches_tensorflow_model_server_when_on_path(repo, tmp_path, monkeypatch):
    """A stand-in ``tensorflow_model_server`` on PATH records its flags and hands them, unchanged, to ``tfscale serve``."""
    from orchestrator.deploy import get

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "argv.json"
    fake = bin_dir / "tensorflow_model_server"
    fake.write_text(f"""#!{PYTHON}
import json, os, sys
json.dump(sys.argv[1:], open({str(argv_file)!r}, "w"))
os.execv({PYTHON!r}, [{PYTHON!r}, "-m", "orchestrator.serving", "serve", *sys.argv[1:]])
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = _deploy_cfg(repo, tmp_path, launch="auto")
    result = get("tf_serving").deploy(cfg, repo / MODEL / "0001", tmp_path / "run")
    smoke = result["smoke_test"]
    assert smoke["server"] == "tensorflow_model_server" and smoke["passed"] and not _alive(smoke["pid"])
    flags = json.loads(argv_file.read_text())
    assert f"--model_config_file={repo.resolve() / 'models.config'}" in flags
    assert "--enable_batching=true" in flags
    assert any(f.startswith("--batching_parameters_file=") for f in flags)
    assert any(f.startswith("--monitoring_config_file=") for f in flags)
    assert f"--port={smoke['grpc_port']}" in flags and f"--rest_api_port={smoke['rest_port']}" in flags
