"""A secret given on the command line reaches no file tfscale writes and no line it prints.

``vertex.labels`` is a free-form ``Dict[str, str]`` in the schema, so ``+vertex.labels.api_token=...`` is a
valid override in every run (a local run simply does not use it).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.cloud import aiplatform_v1
from google.protobuf import json_format

from orchestrator.artifacts.run_record import RunRecord, RunState
from tfscale_testing import run_tfscale

SECRET = "SEKRET123"
LOCATION = ["vertex.project=tfscale-test", "vertex.region=us-central1", "vertex.bucket=tfscale-test-bucket"]


def assert_nowhere(secret: str, texts, *roots: Path) -> int:
    """The secret (in any letter case: Vertex lowercases label values) is in no text and no file under ``roots``."""
    needle = secret.lower().encode()
    for text in texts:
        assert needle not in text.lower().encode(), text[-2000:]
    checked = 0
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes().lower(), f"{secret} found in {path}"
                checked += 1
    return checked


@pytest.mark.slow
def test_secret_override_leaves_no_trace_in_a_training_run(tmp_path):
    result = run_tfscale([f"+vertex.labels.api_token={SECRET}", "trainer=quick", "trainer.epochs=1", "deploy=none",
                          f"export.model_base={tmp_path / 'models'}", f"runs_dir={tmp_path / 'runs'}"], tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    run_dir = result.run_dir
    # The run wrote what it always writes, so the scan below covers the real record and model version.
    for name in ("config.resolved.yaml", "provenance.json", "metrics.json", "epochs.jsonl", ".hydra/config.yaml",
                 ".hydra/overrides.yaml", ".hydra/hydra.yaml"):
        assert (run_dir / name).is_file(), name
    record = json.loads((tmp_path / "models" / "digits_mlp" / "0001" / "assets.extra" / "tfscale.json").read_text())
    assert record["config"]["vertex"]["labels"]["api_token"] == "<redacted>"
    assert "+vertex.labels.api_token=<redacted>" in json.loads((run_dir / "provenance.json").read_text())["command"]
    assert RunRecord(run_dir).state() is RunState.COMPLETED
    assert assert_nowhere(SECRET, [result.stdout, result.stderr], tmp_path / "runs", tmp_path / "models") > 10


def test_secret_override_is_redacted_in_a_vertex_dry_run(tmp_path):
    result = run_tfscale(["backend=vertex", "vertex.dry_run=true", *LOCATION, f"+vertex.labels.api_token={SECRET}",
                          f"runs_dir={tmp_path / 'runs'}"], tmp_path, timeout=120)
    assert result.returncode == 0, result.output[-3000:]
    request = result.stdout.split("request (parent:", 1)[1].split("\n", 1)[1].split("--- equivalent gcloud command ---", 1)[0]
    job = json_format.Parse(request, aiplatform_v1.CustomJob()._pb)  # still a valid request body
    assert job.labels["api_token"] == "<redacted>"
    gcloud = result.stdout.split("--- equivalent gcloud command ---\n", 1)[1].split("\n", 1)[0]
    assert "api_token=<redacted>" in gcloud
    run_dir = result.run_dir
    for name in ("vertex_request.json", "vertex_job.yaml", "vertex.json", "metrics.json", "config.resolved.yaml"):
        assert (run_dir / name).is_file(), name
    assert assert_nowhere(SECRET, [result.stdout, result.stderr], tmp_path / "runs") >= 8
