"""Credentials never leak; config mistakes are ConfigErrors answered fast, before the SDK is imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import LOCATION, TFSCALE, run_dir, run_tfscale

KEY_MATERIAL = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7fakeTFSCALEkeyMATERIALdoNotLeak0123456789"


@pytest.fixture
def fake_credentials(tmp_path):
    """A service-account key file in the shape gcloud writes, with unmistakable fake key material."""
    path = tmp_path / "secrets" / "sa.json"
    path.parent.mkdir()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "tfscale-test", "private_key_id": "f00dfeedf00dfeedf00dfeed",
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END PRIVATE KEY-----\n",
        "client_email": "trainer@tfscale-test.iam.gserviceaccount.com", "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token"}))
    return path


def assert_no_secret(texts, root):
    needles = (KEY_MATERIAL, "f00dfeedf00dfeedf00dfeed", "BEGIN PRIVATE KEY")
    for text in texts:
        for needle in needles:
            assert needle not in text
    for path in root.rglob("*"):
        if path.is_file() and "secrets" not in path.parts:
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{needle[:12]}... found in {path}"


def test_no_credential_in_output_logs_or_run_record(tmp_path, fake_credentials, fake_vertex, local_vertex):
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(fake_credentials)}
    work = tmp_path / "work"
    work.mkdir()
    dry = run_tfscale(work, "backend=vertex", "vertex.dry_run=true", *LOCATION, env=env)
    submitted = run_tfscale(work, "backend=vertex", *local_vertex, env=env)
    trained = run_tfscale(work, "trainer=quick", "trainer.epochs=1", "data.limit=300", "trainer.tensorboard=false", "deploy=vertex", f"deploy.vertex.artifact_dir={tmp_path / 'artifacts'}",
                          *local_vertex, env=env)
    for result in (dry, submitted, trained):
        assert result.returncode == 0, result.stderr
    provenance = next(work.rglob("provenance.json"))
    metrics = json.loads(next(p for p in work.rglob("metrics.json") if p.parent == provenance.parent).read_text())
    assert metrics["deploy"]["traffic_split"] == {metrics["deploy"]["deployed_model_id"]: 100}
    assert (tmp_path / "artifacts" / "digits_mlp" / "0001" / "saved_model.pb").exists()
    assert_no_secret([r.stdout + r.stderr for r in (dry, submitted, trained)], tmp_path)


def test_secret_looking_arguments_are_redacted_in_provenance():
    from orchestrator.artifacts.run_record import redact_args

    assert redact_args(["tfscale", "vertex.project=p", "+token=abc", "db.password=hunter2"]) == [
        "tfscale", "vertex.project=p", "+token=<redacted>", "db.password=<redacted>"]


@pytest.mark.parametrize("overrides, key", [
    ([], "vertex.project"),
    (["vertex.project=tfscale-test"], "vertex.region"),
    (["vertex.project=tfscale-test", "vertex.region=us-central1"], "vertex.bucket"),
    ([*LOCATION[:2], "vertex.bucket=gs://tfscale-test-bucket"], "vertex.bucket"),
    ([*LOCATION, "vertex.region=us-central1-a"], "vertex.region"),
    ([*LOCATION, "vertex.scale_tier=PREMIUM_2"], "vertex.scale_tier"),
    ([*LOCATION, "vertex.insecure=true"], "vertex.insecure"),
    ([*LOCATION, "topology=gpu_growth"], "vertex.accelerator_type"),
    ([*LOCATION, "vertex.tuning=true"], "vertex.study_file"),
])
def test_config_errors_name_the_key_without_importing_the_sdk(overrides, key):
    from orchestrator.config.compose import compose
    from orchestrator.errors import ConfigError
    from orchestrator.config.validation import validate

    cfg = compose(["backend=vertex", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == key


def test_missing_project_is_answered_fast_and_sdk_free(tmp_path):
    code = ("import sys; from orchestrator.app.cli import main\n"
            "try:\n    main(['backend=vertex', 'vertex.region=us-central1'])\n"
            "except SystemExit as e:\n    print('exit', e.code, 'sdk' if 'google.cloud.aiplatform' in sys.modules else 'nosdk')\n")
    probe = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "exit 2 nosdk" in probe.stdout, probe.stdout + probe.stderr
    start = time.perf_counter()
    result = run_tfscale(tmp_path, "backend=vertex", "vertex.region=us-central1", "deploy=vertex")
    elapsed = time.perf_counter() - start
    assert result.returncode == 2
    assert "Invalid config 'vertex.project' = None" in result.stderr and "set vertex.project=" in result.stderr
    assert not (tmp_path / "runs").exists()
    # The config path imports neither TensorFlow nor the SDK; the bound leaves room for a loaded 2-core machine.
    assert elapsed < 5.0, elapsed
