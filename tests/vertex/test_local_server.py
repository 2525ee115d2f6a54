"""End to end without a cloud: the real SDK clients talk gRPC to a local fake of the Vertex API."""
from __future__ import annotations

import json
import tarfile

from google.cloud import aiplatform_v1

from conftest import run_dir, run_tfscale
from test_dry_run import SEED_PARAM_MAP, SEED_STUDY


def test_custom_job_is_staged_submitted_and_followed_until_it_succeeds(tmp_path, fake_vertex, local_vertex):
    result = run_tfscale(tmp_path, "backend=vertex", "cluster=workers_2", "strategy=multi_worker_mirrored",
                         "trainer.epochs=2", *local_vertex)
    assert result.returncode == 0, result.stderr
    (request,) = fake_vertex.received("CreateCustomJob")
    assert request.parent == "projects/tfscale-test/locations/us-central1"
    pools = request.custom_job.job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 1]
    args = list(pools[0].python_package_spec.args)
    # The overrides, where the chief keeps the run record (<base output directory>/run), and each replica local.
    assert args == ["cluster=workers_2", "strategy=multi_worker_mirrored", "trainer.epochs=2",
                    f"hydra.run.dir={tmp_path / 'job_output' / 'run'}", "backend=local"]
    # The package the job installs was really built and staged where the request says.
    (uri,) = pools[0].python_package_spec.package_uris
    with tarfile.open(uri) as sdist:
        names = sdist.getnames()
    assert any(n.endswith("orchestrator/app/cli.py") for n in names)
    assert any(n.endswith("conf/config.yaml") for n in names)
    # Polled until the end, each state change reported once.
    assert fake_vertex.polls == ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    for state in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"):
        assert result.stdout.count(f": {state}") == 1
    record = run_dir(tmp_path)
    final = json.loads((record / "vertex_job.json").read_text())
    assert final["state"] == "JOB_STATE_SUCCEEDED" and final["name"].startswith(request.parent + "/customJobs/")
    assert json.loads((record / "metrics.json").read_text())["vertex"]["state"] == "JOB_STATE_SUCCEEDED"


def test_failed_job_surfaces_the_job_error(tmp_path, fake_vertex, local_vertex):
    fake_vertex.outcome = "fail"
    result = run_tfscale(tmp_path, "backend=vertex", "vertex.image=us-docker.pkg.dev/tfscale-test/train/tfscale:1", *local_vertex)
    assert result.returncode == 1
    assert "JOB_STATE_FAILED" in result.stderr
    assert fake_vertex.failure_message in result.stderr
    assert fake_vertex.polls[-1] == "JOB_STATE_FAILED"
    assert not (tmp_path / "staging").exists()  # a container job stages no package
    final = json.loads((run_dir(tmp_path) / "vertex_job.json").read_text())
    assert final["error"]["message"] == fake_vertex.failure_message


def test_tuning_job_trials_come_back_into_the_study_store(tmp_path, fake_vertex, local_vertex):
    from tuners.study_spec import TrialStatus
    from tuners.study_store import StudyStore

    (tmp_path / "hptuning_config.yaml").write_text(SEED_STUDY)
    result = run_tfscale(tmp_path, "backend=vertex", "vertex.tuning=true", "vertex.study_file=hptuning_config.yaml",
                         "vertex.image=us-docker.pkg.dev/tfscale-test/train/tfscale:1", *SEED_PARAM_MAP, *local_vertex)
    assert result.returncode == 0, result.stderr
    (request,) = fake_vertex.received("CreateHyperparameterTuningJob")
    assert request.hyperparameter_tuning_job.max_trial_count == 10
    envs = {e.name: e.value for pool in request.hyperparameter_tuning_job.trial_job_spec.worker_pool_specs
            for e in [*pool.container_spec.env, *pool.python_package_spec.env]}
    assert envs["CLOUD_ML_HP_METRIC_TAG"] == "accuracy" and envs["TFSCALE_HP_METRIC_TAGS"] == "accuracy"
    assert fake_vertex.polls[-1] == "JOB_STATE_SUCCEEDED"
    with StudyStore(run_dir(tmp_path)) as store:
        spec = store.stored_spec()
        trials = store.load_trials()
    assert spec.metric.tag == "accuracy" and [p.name for p in spec.parameters] == ["n_layers", "momentum"]
    assert len(trials) == 10
    completed = [t for t in trials if t.status is TrialStatus.COMPLETED]
    assert len(completed) == 9 and trials[-1].status is TrialStatus.FAILED
    for t in completed:
        spec.validate_parameters(t.parameters)
        assert isinstance(t.parameters["n_layers"], int)
    best = max(completed, key=lambda t: t.objective)
    assert f"best trial {best.id}: accuracy={best.objective}" in result.stdout


def test_model_versions_endpoint_canary_rollback_and_predict(tmp_path, fake_vertex, local_vertex):
    from orchestrator.config.compose import compose
    from orchestrator.deploy import get
    from orchestrator.vertex import models

    cfg = compose(["deploy=vertex", "deploy.vertex.canary_percent=10", "deploy.vertex.aliases=[latest,production]",
                   f"deploy.vertex.artifact_dir={tmp_path / 'artifacts'}", *local_vertex])
    target = get("vertex")
    target.check(cfg)
    versions = []
    for n in (1, 2):
        version_dir = tmp_path / "models" / "digits_mlp" / f"{n:04d}"
        (version_dir / "variables").mkdir(parents=True)
        (version_dir / "saved_model.pb").write_bytes(b"fake saved model %d" % n)
        versions.append(target.deploy(cfg, version_dir, tmp_path))
    first, second = versions
    # Same parent model, new version; artifacts copied to the artifact dir.
    assert first["model"] == second["model"] and (first["version_id"], second["version_id"]) == ("1", "2")
    assert (tmp_path / "artifacts" / "digits_mlp" / "0002" / "saved_model.pb").read_bytes() == b"fake saved model 2"
    uploads = fake_vertex.received("UploadModel")
    assert uploads[0].parent_model == "" and uploads[1].parent_model == first["model"]
    assert uploads[1].model.container_spec.image_uri.startswith("us-docker.pkg.dev/vertex-ai/prediction/tf2-")
    assert uploads[1].model.artifact_uri.endswith("/digits_mlp/0002")
    # Endpoint created once, then reused; the first version takes all traffic, the second a 10% canary.
    assert len(fake_vertex.received("CreateEndpoint")) == 1 and first["endpoint"] == second["endpoint"]
    assert first["traffic_split"] == {first["deployed_model_id"]: 100}
    assert second["traffic_split"] == {second["deployed_model_id"]: 10, first["deployed_model_id"]: 90}
    deploy_request = fake_vertex.received("DeployModel")[1]
    assert deploy_request.deployed_model.model == f"{first['model']}@2"
    assert deploy_request.deployed_model.dedicated_resources.machine_spec.machine_type == "n1-standard-2"
    assert deploy_request.deployed_model.dedicated_resources.min_replica_count == 1
    entry = fake_vertex.models[first["model"]]
    assert set(entry["versions"]["2"].version_aliases) >= {"v2", "latest", "production"}
    assert second["previous_alias_versions"] == {"latest": "1", "production": "1"}

    undone = models.rollback(cfg, second)
    assert undone["traffic_split"] == {first["deployed_model_id"]: 100}
    assert fake_vertex.endpoints[first["endpoint"]].traffic_split == {first["deployed_model_id"]: 100}
    assert {"latest", "production"} <= set(entry["versions"]["1"].version_aliases)
    assert "latest" not in entry["versions"]["2"].version_aliases

    predictions = models.predict(cfg, first["endpoint"], [[0.0] * 64, [1.0] * 64])
    assert len(predictions) == 2 and len(predictions[0]) == 10
    (predict_request,) = fake_vertex.received("Predict")
    assert len(predict_request.instances) == 2
    assert isinstance(predict_request, aiplatform_v1.PredictRequest)
