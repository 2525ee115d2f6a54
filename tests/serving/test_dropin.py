"""``tfscale serve`` as a drop-in for ``tensorflow_model_server``: Hydra composition, TF Serving's flags and
files, Prometheus metrics under TF Serving's names, and model servers that die with the process that started them."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import requests

from serving_testkit import MODEL, PYTHON, REPO_ROOT, free_port, reference_predictions

METRICS = "/monitoring/prometheus/metrics"


def _serve_config(argv):
    from orchestrator.serving.cli import load_serving_config, parse_serve_args

    args = parse_serve_args(argv)
    return load_serving_config(args.overrides, args.config_dir, args.config_name, args.flags), args.flags


# ------------------------------------------------------------------------------------------ the command line
def test_tf_serving_flags_and_their_files_set_the_serving_config(tmp_path):
    (tmp_path / "batching.config").write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
                                              "num_batch_threads { value: 3 }\n")
    (tmp_path / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }\n')
    (tmp_path / "ssl.config").write_text('server_key: "KEY PEM"\nserver_cert: "CERT PEM"\ncustom_ca: "CA PEM"\n'
                                         'client_verify: true\n')
    s, flags = _serve_config(["--port", "9100", "--rest_api_port=9101", f"--model_base_path={tmp_path}",
                              "--model_name", "digits", "--enable_batching",
                              "--batching_parameters_file", str(tmp_path / "batching.config"),
                              f"--monitoring_config_file={tmp_path / 'monitoring.config'}",
                              f"--ssl_config_file={tmp_path / 'ssl.config'}", "--file_system_poll_wait_seconds=5",
                              "serving.max_inflight_requests=8"])
    try:
        assert (s.grpc_port, s.rest_port, s.host) == (9100, 9101, "0.0.0.0")  # all interfaces, as TF Serving
        assert (s.model_base_path, s.model_name, s.file_system_poll_wait_seconds) == (str(tmp_path), "digits", 5.0)
        assert s.batching.enabled and (s.batching.max_batch_size, s.batching.batch_timeout_micros,
                                       s.batching.num_batch_threads) == (16, 500, 3)
        assert s.monitoring.prometheus and s.monitoring.path == "/metrics"
        assert s.max_inflight_requests == 8  # overrides and flags mix
        # The PEM texts of the SSLConfig become files only this user can read, removed once the server read them.
        assert Path(s.grpc_tls_key).read_text() == "KEY PEM" and Path(s.grpc_tls_cert).read_text() == "CERT PEM"
        assert Path(s.grpc_tls_client_ca).read_text() == "CA PEM"
        assert stat.S_IMODE(os.stat(s.grpc_tls_key).st_mode) == 0o600
    finally:
        flags.close()
    assert not Path(s.grpc_tls_key).exists()

    s, _ = _serve_config(["--port=9100", "serving.host=127.0.0.1", "--enable_batching=false", "--noenable_model_warmup"])
    assert s.host == "127.0.0.1" and not s.batching.enabled and not s.warmup
    s, _ = _serve_config([f"--monitoring_config_file={_write(tmp_path / 'off.config', 'prometheus_config { enable: false }')}"])
    assert not s.monitoring.prometheus


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("argv, named, says", [
    (["--prot=8500"], "--prot", "Did you mean --port?"),
    (["--tensorflow_intra_op_parallelism=2"], "--tensorflow_intra_op_parallelism", "does not implement"),
    (["--port=abc"], "--port", "whole number"),
    (["--model_config_file"], "--model_config_file", "needs a value"),
    (["--batching_parameters_file=/no/such/file"], "--batching_parameters_file", "No such file"),
    (["serving.rest_prot=1"], "serving.rest_prot", "Did you mean 'serving.rest_port'?"),
    (["rest_prot=1"], "serving.rest_prot", "Did you mean 'serving.rest_port'?"),
    (["+serving.batching.max_batch=1"], "serving.batching.max_batch", "Did you mean serving.batching.max_batch_size?"),
    (["serving=batchin"], "serving", "Did you mean serving=batching?"),
])
def test_bad_flags_and_overrides_are_one_line_errors_naming_them(argv, named, says, capsys):
    from orchestrator.serving.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"'{named}'" in err and says in err, err


def test_serve_composes_like_every_command_config_dir_and_plus(tmp_path, capsys):
    import yaml

    from orchestrator.serving.cli import main

    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "edge.yaml").write_text("defaults:\n  - batching\n  - _self_\nname: edge\nrest_port: 9300\n")
    assert main(["-cd", str(tmp_path), "serving=edge", "+serving.version_labels.stable=2", "grpc_port=9301", "--cfg"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert (out["name"], out["rest_port"], out["grpc_port"]) == ("edge", 9300, 9301)
    assert out["batching"]["enabled"] is True and out["version_labels"] == {"stable": 2}
    assert main([f"--config-dir={tmp_path}", "serving=edge", "--cfg", "job"]) == 0  # Hydra's spelling works too
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "edge"


def test_config_errors_answer_fast_without_importing_tensorflow(tmp_path):
    # CPU seconds of the work, not wall time: other jobs share this machine's cores.
    code = ("import sys, time; t = time.process_time(); from orchestrator.serving.cli import main; "
            "rc = main(['--port=8500', 'serving.rest_prot=1']); "
            "print(rc, 'tensorflow' in sys.modules, time.process_time() - t)")
    t0 = time.perf_counter()
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    wall = time.perf_counter() - t0
    rc, tf_loaded, seconds = out.stdout.split()
    assert (rc, tf_loaded) == ("2", "False"), out.stderr
    assert float(seconds) < 1.0 and wall < 5.0, (seconds, wall)


# ---------------------------------------------------------------------------------------------------- metrics
def _sample(text: str, name: str, **labels) -> float:
    """The value of the sample ``name{labels}`` in a Prometheus page (labels in any order), or 0."""
    for line in text.splitlines():
        m = re.match(r"^(\S+?)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))) == labels:
            return float(m.group(3))
    return 0.0


def _grpc_predict(port: int, rows, model: str = MODEL):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10.0)


def test_metrics_count_rest_and_grpc_under_tf_serving_names(repo, start_server, digits_rows):
    server = start_server(repo, model_name=MODEL)
    url = f"http://127.0.0.1:{server.rest_port}/v1/models"
    for _ in range(2):
        assert requests.post(f"{url}/{MODEL}:predict", json={"instances": digits_rows[:2].tolist()}).status_code == 200
    assert requests.post(f"{url}/{MODEL}:predict", json={"instances": [[1.0]]}).status_code == 400
    assert requests.post(f"{url}/nope:predict", json={"instances": [[1.0]]}).status_code == 404
    _grpc_predict(server.grpc_port, digits_rows[:3])
    with pytest.raises(grpc.RpcError) as info:
        _grpc_predict(server.grpc_port, digits_rows[:3, :5])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    page = requests.get(f"http://127.0.0.1:{server.rest_port}{METRICS}")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
    text = page.text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    count = ":tensorflow:serving:request_count"
    assert _sample(text, count, model_name=MODEL, status="OK") == 3  # 2 REST + 1 gRPC
    assert _sample(text, count, model_name=MODEL, status="INVALID_ARGUMENT") == 2  # 1 REST + 1 gRPC
    assert _sample(text, count, model_name="nope", status="NOT_FOUND") == 1
    latency = ":tensorflow:serving:request_latency"
    assert _sample(text, latency + "_count", model_name=MODEL, API="Predict", entrypoint="REST") == 2
    assert _sample(text, latency + "_count", model_name=MODEL, API="Predict", entrypoint="GRPC") == 1
    assert _sample(text, latency + "_bucket", model_name=MODEL, API="Predict", entrypoint="GRPC", le="+Inf") == 1
    assert _sample(text, latency + "_sum", model_name=MODEL, API="Predict", entrypoint="REST") > 0  # microseconds
    version_path = str((repo / MODEL / "0001").resolve())
    assert _sample(text, ":tensorflow:cc:saved_model:load_attempt_count", model_path=version_path, status="success") == 1
    assert _sample(text, ":tensorflow:cc:saved_model:load_latency", model_path=version_path) > 0
    assert _sample(text, ":tensorflow:serving:model_warmup_latency_count", model_path=version_path, status="OK") == 1
    assert _sample(text, "tfscale_serving_model_version_state", model_name=MODEL, version="1", state="AVAILABLE") == 1
    assert _sample(text, "tfscale_serving_model_latest_version", model_name=MODEL) == 1

    from prometheus_client.parser import text_string_to_metric_families

    assert {f.name for f in text_string_to_metric_families(text)} >= {count, latency}  # a valid exposition


def test_monitoring_config_moves_or_disables_the_metrics_page(repo, start_server):
    moved = start_server(repo, model_name=MODEL, monitoring={"path": "/metrics"})
    assert requests.get(f"http://127.0.0.1:{moved.rest_port}/metrics").status_code == 200
    off = start_server(repo, model_name=MODEL, monitoring={"prometheus": False})
    assert requests.get(f"http://127.0.0.1:{off.rest_port}{METRICS}").status_code == 404


# ---------------------------------------------------------------------------------- real processes, end to end
def _deploy_files(repo: Path, tmp_path: Path, rest_port: int, grpc_port: int) -> dict:
    from hydra import compose, initialize_config_dir

    from orchestrator.config.schema import register_configs
    from orchestrator.deploy import get

    register_configs()
    overrides = ["deploy=tf_serving", f"export.model_base={repo}", "deploy.tf_serving.launch=none",
                 f"deploy.tf_serving.rest_port={rest_port}", f"deploy.tf_serving.grpc_port={grpc_port}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return get("tf_serving").deploy(cfg, repo / MODEL / "0001", tmp_path / "run")


def _wait_ready(proc: subprocess.Popen, port: int, timeout: float = 90.0) -> None:
    """Poll the readiness probe of the Kubernetes manifest: GET /v1/models/<name> answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models/{MODEL}", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


@pytest.mark.slow
def test_the_launch_plan_runs_with_tfscale_serve_in_place_of_the_binary(repo, tmp_path, python_env, digits_rows):
    rest_port, grpc_port = free_port(), free_port()
    result = _deploy_files(repo, tmp_path, rest_port, grpc_port)
    argv = shlex.split(result["launch_plan"]["binary"])
    assert argv[0] == "tensorflow_model_server"
    tfscale = Path(PYTHON).parent / "tfscale"
    serve = [str(tfscale), "serve"] if tfscale.exists() else [PYTHON, "-m", "orchestrator.app.cli", "serve"]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(serve + argv[1:], cwd=str(tmp_path), env=python_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, rest_port)
        expected = reference_predictions(repo / MODEL / "0001", digits_rows)["classes"].tolist()
        r = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}:predict", json={"instances": digits_rows.tolist()})
        assert [p["classes"] for p in r.json()["predictions"]] == expected
        import tensorflow as tf

        assert tf.make_ndarray(_grpc_predict(grpc_port, digits_rows).outputs["classes"]).tolist() == expected
        # The monitoring config the deployment wrote turns the Prometheus page on, at its path.
        text = requests.get(f"http://127.0.0.1:{rest_port}{METRICS}", timeout=5).text
        assert _sample(text, ":tensorflow:serving:request_count", model_name=MODEL, status="OK") == 2
        for entrypoint in ("REST", "GRPC"):
            assert _sample(text, ":tensorflow:serving:request_latency_count", model_name=MODEL, API="Predict",
                           entrypoint=entrypoint) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    printed = (tmp_path / "server.log").read_text()
    assert "listening on every interface" in printed and "batching" in json.dumps(result["files"])


def _children(pid: int) -> list:
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat_file.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_smoke_test_server_dies_when_its_parent_is_killed(repo, tmp_path, python_env):
    """A process deploying with deploy=tf_serving is SIGKILLed while its smoke-test server runs: the server goes too."""
    script = tmp_path / "parent.py"
    script.write_text(f"""
from pathlib import Path
from omegaconf import OmegaConf
from orchestrator.config.serving import TfServingDeployConfig
from orchestrator.deploy.tf_serving import smoke_test
from orchestrator.serving.config_files import update_models_config
from orchestrator.serving.repository import ModelEntry

repo = Path({str(repo)!r})
update_models_config(repo / "models.config", ModelEntry({MODEL!r}, str(repo / {MODEL!r})))
d = OmegaConf.structured(TfServingDeployConfig(launch="embedded", smoke_timeout_s=300))
d.batching.enabled = False
d.monitoring.prometheus = False
out = Path({str(tmp_path)!r}) / "out"
out.mkdir()
# Version 9 is never published: the smoke test waits for it while its server runs.
smoke_test(d, repo / "models.config", repo, {MODEL!r}, 9, repo / {MODEL!r} / "0001", out)
""")
    parent = subprocess.Popen([PYTHON, str(script)], env=python_env, cwd=str(tmp_path), start_new_session=True)
    server = None
    try:
        deadline = time.monotonic() + 60
        while server is None and time.monotonic() < deadline:
            assert parent.poll() is None, f"parent exited with {parent.returncode}"
            found = [p for p in _children(parent.pid) if b"orchestrator.serving" in Path(f"/proc/{p}/cmdline").read_bytes()]
            server = found[0] if found else None
            time.sleep(0.2)
        assert server is not None, "no smoke-test server was started"
        argv = Path(f"/proc/{server}/cmdline").read_bytes().decode().split("\0")
        assert any(a.startswith("--model_config_file=") for a in argv)  # the launch plan's flags
        rest_port = int(next(a for a in argv if a.startswith("--rest_api_port=")).partition("=")[2])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # serving, with its REST and gRPC threads running
            try:
                if requests.get(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("the smoke-test server never answered")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server), "the smoke-test server outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)
