"""Files of a TF Serving deployment parse with TF Serving's protos; config schemas reject bad values."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from omegaconf import OmegaConf

from orchestrator.errors import ConfigError
from orchestrator.serving import config_files as cf
from orchestrator.serving.repository import ModelEntry, VersionPolicy
from orchestrator.config.serving import TfServingDeployConfig

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_models_config_merges_entries_and_parses_with_tf_serving_protos(tmp_path):
    from tensorflow_serving.config import model_server_config_pb2

    path = tmp_path / "models.config"
    cf.update_models_config(path, ModelEntry("a", "/repo/a", VersionPolicy("latest", 2), {"stable": 3, "canary": 4}))
    cf.update_models_config(path, ModelEntry("b", "/repo/b", VersionPolicy("specific", versions=(1, 5))))
    cf.update_models_config(path, ModelEntry("c", "/repo/c", VersionPolicy("all")))
    cf.update_models_config(path, ModelEntry("a", "/repo/a", VersionPolicy("latest", 1), {"stable": 4}))

    parsed = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    configs = {c.name: c for c in parsed.model_config_list.config}
    assert sorted(configs) == ["a", "b", "c"]
    assert configs["a"].model_version_policy.latest.num_versions == 1
    assert dict(configs["a"].version_labels) == {"stable": 4}
    assert list(configs["b"].model_version_policy.specific.versions) == [1, 5]
    assert configs["c"].model_version_policy.WhichOneof("policy_choice") == "all"
    assert all(c.model_platform == "tensorflow" and c.base_path.startswith("/repo/") for c in configs.values())
    assert cf.read_models_config(path)[1].policy == VersionPolicy("specific", versions=(1, 5))


def test_unparseable_models_config_is_a_config_error(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(ConfigError, match="ModelServerConfig"):
        cf.read_models_config(path)


def test_batching_and_monitoring_files_parse_with_tf_serving_messages():
    d = TfServingDeployConfig()
    d.batching.max_batch_size = 64
    batching = cf.parse_batching(cf.batching_text(d.batching))
    assert batching.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    assert (batching.max_batch_size.value, batching.batch_timeout_micros.value, batching.num_batch_threads.value,
            batching.max_enqueued_batches.value) == (64, 1000, 2, 100)
    monitoring = cf.parse_monitoring(cf.monitoring_text(d.monitoring))
    assert monitoring.DESCRIPTOR.full_name == "tensorflow.serving.MonitoringConfig"
    assert monitoring.prometheus_config.enable and monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_launch_plan_and_kubernetes_manifest(tmp_path):
    d = OmegaConf.structured(TfServingDeployConfig(replicas=3, image="tensorflow/serving:2.18.0"))
    plan = cf.launch_plan(d, tmp_path)
    assert plan["binary"][0] == "tensorflow_model_server"
    for flag in ("--port=8500", "--rest_api_port=8501", f"--model_config_file={tmp_path.resolve()}/models.config",
                 "--enable_batching=true", "--file_system_poll_wait_seconds=1"):
        assert flag in plan["binary"], flag
    assert any(a.startswith("--batching_parameters_file=") for a in plan["binary"])
    assert any(a.startswith("--monitoring_config_file=") for a in plan["binary"])
    assert plan["docker"][:3] == ["docker", "run", "--rm"] and "tensorflow/serving:2.18.0" in plan["docker"]
    assert f"{tmp_path.resolve()}:/models" in plan["docker"] and "8500:8500" in plan["docker"]

    text = yaml.safe_dump_all(cf.kubernetes_manifest(d, tmp_path, "tf-serving-digits", model="digits"))
    deployment, service = yaml.safe_load_all(text)
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    assert deployment["spec"]["replicas"] == 3
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "tensorflow/serving:2.18.0"
    assert sorted(p["containerPort"] for p in container["ports"]) == [8500, 8501]
    assert container["volumeMounts"][0]["mountPath"] == "/models"
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]
    assert volume["name"] == container["volumeMounts"][0]["name"] and volume["hostPath"]["path"] == str(tmp_path.resolve())
    assert "--model_config_file=/models/models.container.config" in container["args"]
    # Ready once the model server answers for the model on REST; alive while gRPC accepts connections.
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/models/digits", "port": 8501}
    assert container["livenessProbe"]["tcpSocket"] == {"port": 8500}
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [8500, 8501]


@pytest.mark.parametrize("override, key", [
    ("serving.rest_port=70000", "serving.rest_port"),
    ("serving.version_policy.policy=newest", "serving.version_policy.policy"),
    ("serving.version_policy.num_versions=0", "serving.version_policy.num_versions"),
    ("serving.batching.max_batch_size=0", "serving.batching.max_batch_size"),
    ("serving.grpc_tls_cert=cert.pem", "serving.grpc_tls_key"),
    ("serving.max_body_bytes=10", "serving.max_body_bytes"),
    ("serving.unknown_key=1", "serving.unknown_key"),
    ("serving=nonexistent", "serving"),
])
def test_bad_serving_overrides_are_config_errors_naming_the_key(override, key):
    from orchestrator.serving.cli import load_serving_config

    with pytest.raises(ConfigError) as info:
        load_serving_config([override])
    assert info.value.key == key


def test_serve_cli_prints_config_and_help(capsys):
    from orchestrator.serving.cli import main

    assert main(["--cfg", "serving=batching", "serving.rest_port=9000"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["rest_port"] == 9000 and out["batching"]["enabled"] is True
    assert main(["--help"]) == 0 and "tfscale rollback" in capsys.readouterr().out
    assert main(["serving.rest_port=x"]) == 2


def test_every_serving_and_deploy_option_composes_with_the_root_config():
    from hydra import compose, initialize_config_dir

    from orchestrator.config.schema import register_configs
    from orchestrator.config.serving import check_serving, check_tf_serving_deploy

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in sorted(p.stem for p in (CONF / "serving").glob("*.yaml")):
            cfg = compose("config", overrides=[f"serving={option}", "export.model_base=/tmp/repo"])
            check_serving(cfg.serving)
            assert cfg.serving.model_base == "/tmp/repo"
        cfg = compose("config", overrides=["deploy=tf_serving", "deploy.tf_serving.replicas=2"])
        check_tf_serving_deploy(cfg.deploy.tf_serving)
        assert cfg.deploy.target == "tf_serving" and cfg.deploy.tf_serving.replicas == 2
        bad = compose("config", overrides=["deploy=tf_serving", "deploy.tf_serving.launch=docker"])
        from orchestrator.deploy import get

        with pytest.raises(ConfigError) as info:
            get("tf_serving").check(bad)
        assert info.value.key == "deploy.tf_serving.launch"


def test_deploy_notes_labels_tf_serving_would_refuse(tmp_path):
    from orchestrator.deploy.tf_serving import _label_notes

    for v in (1, 2):
        (tmp_path / f"{v:04d}").mkdir()
    entry = ModelEntry("m", str(tmp_path), VersionPolicy("latest", 1), {"stable": 1, "canary": 2, "gone": 9})
    notes = _label_notes(entry)
    assert len(notes) == 2
    assert "'gone'" in notes[0] and "not published" in notes[0]
    assert "'stable'" in notes[1] and "policy=specific" in notes[1]
    assert _label_notes(ModelEntry("m", str(tmp_path), VersionPolicy("all"), {"stable": 1})) == []
