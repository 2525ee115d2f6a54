"""Admin reload locked down, REST over TLS, and client certificates (mTLS) on REST and gRPC."""
from __future__ import annotations

import os

import grpc
import pytest
import requests

from serving_testkit import MODEL, make_pki, publish

from orchestrator.errors import ConfigError

TOKEN = "s3cret-reload-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """CA, server and client certificates (client named 'deployer')."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _reload(channel, entries, metadata=None):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    from orchestrator.serving.config_files import entry_to_proto

    request = model_management_pb2.ReloadConfigRequest()
    for entry in entries:
        entry_to_proto(entry, request.config.model_config_list.config.add())
    return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=30.0,
                                                                                       metadata=metadata)


def _predict(server, digits_rows, model=MODEL):
    return requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/{model}:predict",
                         json={"instances": digits_rows[:1].tolist()}, timeout=10)


def test_reload_is_refused_by_default(repo, start_server, templates, digits_rows):
    from orchestrator.serving.repository import ModelEntry

    publish(repo / "other", 1, templates[2])
    server = start_server(repo, model_name=MODEL)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            _reload(channel, [ModelEntry("other", str(repo / "other"))])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "serving.admin.enable_reload" in info.value.details()
    assert _predict(server, digits_rows).status_code == 200
    assert _predict(server, digits_rows, "other").status_code == 404


def test_reload_needs_the_token_and_a_base_path_under_the_roots(repo, tmp_path, start_server, templates, digits_rows,
                                                                caplog):
    from orchestrator.serving.repository import ModelEntry

    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    outside = tmp_path / "elsewhere"
    publish(outside / "evil", 1, templates[2])
    (repo / "link").symlink_to(outside / "evil")  # inside the repository by name, outside once resolved
    publish(repo / "other", 1, templates[2])
    server = start_server(repo, model_name=MODEL, admin={"enable_reload": True, "token_file": str(token_file)})
    good = [ModelEntry(MODEL, str(repo / MODEL)), ModelEntry("other", str(repo / "other"))]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for metadata in (None, [("authorization", "Bearer wrong-token-wrong-token")], [("authorization", TOKEN)]):
            with pytest.raises(grpc.RpcError) as info:
                _reload(channel, good, metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        auth = [("authorization", f"Bearer {TOKEN}")]
        for base_path in (str(outside / "evil"), str(repo / "link"), str(repo / ".." / "elsewhere" / "evil"), "models/other"):
            with pytest.raises(grpc.RpcError) as info:
                _reload(channel, [ModelEntry(MODEL, base_path)], auth)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, base_path
            assert "serving.admin.allowed_roots" in info.value.details()
        assert _predict(server, digits_rows).status_code == 200  # refused reloads changed nothing
        assert _reload(channel, good, auth).status.error_code == 0
    assert _predict(server, digits_rows, "other").status_code == 200
    assert TOKEN not in caplog.text


def test_reload_settings_are_checked_before_serving(repo, tmp_path, monkeypatch):
    from orchestrator.serving.cli import load_serving_config
    from orchestrator.serving.server import EmbeddedServer

    monkeypatch.delenv("TFSCALE_SERVING_ADMIN_TOKEN", raising=False)
    s = load_serving_config([f"serving.model_base={repo}", "serving.admin.enable_reload=true"])
    with pytest.raises(ConfigError) as info:
        EmbeddedServer(s)
    assert info.value.key == "serving.admin.enable_reload"
    with pytest.raises(ConfigError) as info:
        load_serving_config(["serving.admin.client_names=[deployer]"])
    assert info.value.key == "serving.admin.client_names"
    with pytest.raises(ConfigError) as info:
        load_serving_config([f"serving.rest_tls_client_ca={tmp_path}"])
    assert info.value.key == "serving.rest_tls_client_ca"


def test_rest_over_tls_with_a_ca_file(repo, start_server, pki, digits_rows):
    server = start_server(repo, rest_tls_cert=str(pki["server_cert"]), rest_tls_key=str(pki["server_key"]))
    url = f"https://localhost:{server.rest_port}/v1/models/{MODEL}"
    r = requests.post(url + ":predict", json={"instances": digits_rows[:2].tolist()}, verify=str(pki["ca"]), timeout=10)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the CA refuses the server
        requests.get(url, timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP on the TLS port gets no answer
        requests.get(f"http://localhost:{server.rest_port}/v1/models/{MODEL}", timeout=10)
    assert requests.get(url, verify=str(pki["ca"]), timeout=10).status_code == 200


def test_mtls_on_rest_and_grpc_and_a_certificate_may_reload(repo, start_server, pki, templates, digits_rows):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from orchestrator.serving.repository import ModelEntry

    tls = {f"{side}_tls_{part}": str(pki[f"server_{part}" if part != "client_ca" else "ca"])
           for side in ("rest", "grpc") for part in ("cert", "key", "client_ca")}
    publish(repo / "other", 1, templates[2])
    server = start_server(repo, model_name=MODEL, admin={"enable_reload": True, "client_names": ["deployer"]}, **tls)
    url = f"https://localhost:{server.rest_port}/v1/models/{MODEL}:predict"
    body = {"instances": digits_rows[:1].tolist()}
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(url, json=body, verify=str(pki["ca"]), timeout=10)
    client = (str(pki["client_cert"]), str(pki["client_key"]))
    assert requests.post(url, json=body, verify=str(pki["ca"]), cert=client, timeout=10).status_code == 200

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(digits_rows[:1]))
    ca = pki["ca"].read_bytes()
    anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(f"localhost:{server.grpc_port}", anonymous) as channel:
        with pytest.raises(grpc.RpcError) as info:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10.0)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    mutual = grpc.ssl_channel_credentials(root_certificates=ca, private_key=pki["client_key"].read_bytes(),
                                          certificate_chain=pki["client_cert"].read_bytes())
    with grpc.secure_channel(f"localhost:{server.grpc_port}", mutual) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10.0)
        assert tf.make_ndarray(response.outputs["classes"]).shape == (1,)
        # The verified certificate named 'deployer' is the credential: no token needed.
        entries = [ModelEntry(MODEL, str(repo / MODEL)), ModelEntry("other", str(repo / "other"))]
        assert _reload(channel, entries).status.error_code == 0
    r = requests.post(url.replace(MODEL, "other"), json=body, verify=str(pki["ca"]), cert=client, timeout=10)
    assert r.status_code == 200


def test_roots_resolve_symlinks_and_dotdot(tmp_path):
    from orchestrator.serving.admin import AdminPolicy
    from orchestrator.serving.repository import ModelEntry
    from orchestrator.serving.status import RequestError

    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    (tmp_path / "models-evil").mkdir()
    os.symlink(tmp_path / "models-evil", root / "jump")
    policy = AdminPolicy(True, TOKEN, (), (os.path.realpath(root), "gs://bucket/models"))
    policy.check_paths([ModelEntry("a", str(root / "m")), ModelEntry("b", "gs://bucket/models/m")])
    for bad in (str(tmp_path / "models-evil"), str(root / "jump"), str(root / ".." / "models-evil"), "m",
                "gs://bucket/models-evil/m", "gs://bucket/models/../secret", "s3://bucket/models/m", ""):
        with pytest.raises(RequestError):
            policy.check_paths([ModelEntry("x", bad)])
