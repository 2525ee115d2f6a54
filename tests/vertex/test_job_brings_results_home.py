"""A Vertex CustomJob end to end without a cloud: the fake API runs the job's worker-pool command as a local
replica (AIP_* directories in a fake-gcs-server bucket), and ``tfscale`` brings the results home."""
from __future__ import annotations

import contextlib
import json
import os
import uuid

import pytest

from conftest import LOCATION, run_dir, run_tfscale
from storage.conftest import BUCKET, gcs_server  # noqa: F401  (the fake-gcs-server fixture)
from vertex_fake_server import FakeVertex

pytestmark = pytest.mark.slow


@pytest.fixture
def running_vertex(gcs_server):  # noqa: F811
    server = FakeVertex(run_jobs=True, env={"STORAGE_EMULATOR_HOST": gcs_server}).start()
    yield server
    server.stop()


@contextlib.contextmanager
def emulated(endpoint):
    before = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = before


def test_custom_job_publishes_to_the_bucket_and_brings_metrics_home(tmp_path, gcs_server, running_vertex):  # noqa: F811
    from orchestrator.artifacts import publish, storage

    prefix = f"gs://{BUCKET}/{uuid.uuid4().hex[:10]}"
    job_dir, models = f"{prefix}/job", f"{prefix}/models"
    running_vertex.unavailable = 1  # the first poll fails the way a network blip does
    result = run_tfscale(tmp_path, "backend=vertex", *LOCATION[:2], f"vertex.bucket={BUCKET}",
                         f"vertex.api_endpoint={running_vertex.address}", "vertex.insecure=true",
                         f"vertex.staging_dir={prefix}/staging", f"vertex.output_dir={job_dir}",
                         "vertex.poll_interval_s=0.2", "vertex.max_poll_interval_s=0.5", f"export.model_base={models}",
                         "trainer.epochs=2", "trainer.backup_and_restore=true", "data.limit=600", "trainer.verbose=2",
                         env={"STORAGE_EMULATOR_HOST": gcs_server})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + running_vertex.replica_logs()
    # Polling survived UNAVAILABLE, then followed the job to its end.
    assert running_vertex.polls[0] == "UNAVAILABLE" and running_vertex.polls[-1] == "JOB_STATE_SUCCEEDED"
    assert "UNAVAILABLE" in result.stdout and "retrying" in result.stdout
    (request,) = running_vertex.received("CreateCustomJob")
    spec = request.custom_job.job_spec.worker_pool_specs[0].python_package_spec
    assert f"hydra.run.dir={job_dir}/run" in spec.args and spec.args[-1] == "backend=local"
    with emulated(gcs_server):
        assert storage.exists(spec.package_uris[0])  # the package was staged in the bucket
        # Inside the job: the next free version in the repository, the model where Vertex expects it, the
        # backup in AIP_CHECKPOINT_DIR, TensorBoard logs in AIP_TENSORBOARD_LOG_DIR, the record in <base>/run.
        assert publish.existing_versions(f"{models}/digits_mlp") == [1]
        assert storage.exists(f"{job_dir}/model/saved_model.pb")
        assert storage.exists(f"{job_dir}/checkpoints/chief/checkpoint")
        assert any(name.startswith("train/events.out.tfevents") for name in storage.files(f"{job_dir}/logs"))
        assert json.loads(storage.read_text(f"{job_dir}/run/status.json"))["state"] == "completed"
        job_metrics = json.loads(storage.read_text(f"{job_dir}/run/metrics.json"))
    # Home: the job's metrics and provenance in the local run record, the model URI and the console link printed.
    record = run_dir(tmp_path)
    metrics = json.loads((record / "metrics.json").read_text())
    assert metrics["test"] == job_metrics["test"] and metrics["test"]["accuracy"] > 0.8 and metrics["epochs"] == 2
    assert metrics["model_version"] == f"{models}/digits_mlp/0001"
    assert metrics["vertex"]["state"] == "JOB_STATE_SUCCEEDED" and metrics["vertex"]["run_record"] == f"{job_dir}/run"
    provenance = json.loads((record / "provenance.json").read_text())
    assert provenance["tf_config"]["task"] == {"type": "chief", "index": 0}
    assert f"tfscale: model version {models}/digits_mlp/0001" in result.stdout
    assert f"(AIP_MODEL_DIR) {job_dir}/model" in result.stdout
    job_id = request.custom_job.display_name and json.loads((record / "vertex.json").read_text())["job"].rsplit("/", 1)[1]
    assert (f"tfscale: console https://console.cloud.google.com/agent-platform/locations/us-central1/training/{job_id}"
            f"?project=tfscale-test") in result.stdout
