"""Units of the Vertex job building: scale tiers, pools, labels, trial arguments, hypertune reports, trials."""
from __future__ import annotations

import json

import pytest

from conftest import LOCATION


def compose(*overrides):
    from orchestrator.config.compose import compose as _compose

    return _compose(["backend=vertex", *LOCATION, *overrides])


@pytest.mark.parametrize("tier, expected", [
    ("BASIC", [("n1-standard-4", 1)]),
    ("STANDARD_1", [("n1-highcpu-8", 1), ("n1-highcpu-8", 4), ("n1-standard-4", 3)]),
    ("PREMIUM_1", [("n1-highcpu-16", 1), ("n1-highcpu-16", 19), ("n1-highmem-8", 11)]),
    ("BASIC_GPU", [("n1-standard-8", 1)]),
    ("BASIC_TPU", [("n1-standard-4", 1), ("cloud-tpu", 1)]),
])
def test_scale_tiers_expand_to_pools(tier, expected):
    from orchestrator.vertex.job_spec import custom_job

    body = custom_job(compose(f"vertex.scale_tier={tier}"), overrides=[], package_uris=["gs://b/p.tar.gz"],
                      display_name="job", git_sha="ABC123")
    pools = body["jobSpec"]["workerPoolSpecs"]
    assert [(p["machineSpec"]["machineType"], p["replicaCount"]) for p in pools] == expected
    if tier == "BASIC_TPU":
        assert pools[1]["machineSpec"]["acceleratorType"] == "TPU_V2" and pools[1]["machineSpec"]["acceleratorCount"] == 8


def test_pools_keep_their_numbers_with_an_empty_placeholder():
    from orchestrator.vertex.job_spec import custom_job

    cfg = compose("cluster.name=eval_only", "cluster.chief.count=1", "cluster.evaluator.count=1",
                  "vertex.evaluator_machine_type=n1-highmem-2")
    pools = custom_job(cfg, overrides=[], package_uris=[], display_name="j", git_sha=None)["jobSpec"]["workerPoolSpecs"]
    assert pools[1] == {} and pools[2] == {}
    assert pools[3]["machineSpec"]["machineType"] == "n1-highmem-2" and pools[3]["replicaCount"] == 1


def test_labels_follow_vertex_rules():
    from orchestrator.vertex.job_spec import job_labels

    from omegaconf import open_dict

    cfg = compose("experiment.name='My Experiment/V2'")
    with open_dict(cfg):
        cfg.vertex.labels["9Team"] = "Research Group"
    labels = job_labels(cfg, "0123ABCDEF")
    assert labels == {"x9team": "research_group", "tfscale-experiment": "my_experiment_v2", "git-sha": "0123abcdef"}


def test_job_arguments_are_the_overrides_run_locally():
    from orchestrator.vertex.job_spec import trainer_args

    assert trainer_args(["model=cnn", "backend=vertex", "vertex.project=p", "hydra.run.dir=x", "deploy.vertex.canary_percent=5"]) == [
        "model=cnn", "deploy.vertex.canary_percent=5", "backend=local"]


def test_trial_flags_become_overrides():
    from orchestrator.app.vertex_trial import to_overrides

    argv = ["model=cnn", "backend=local", "--tfscale-param-key=momentum=model.optimizer.momentum",
            "--tfscale-param-key=n_layers=+model.builder_kwargs.n_layers", "--n_layers=42", "--momentum=0.3"]
    assert to_overrides(argv) == ["model=cnn", "backend=local", "+model.builder_kwargs.n_layers=42", "model.optimizer.momentum=0.3"]


def test_hypertune_reports_in_the_cloudml_hypertune_format(tmp_path, monkeypatch):
    from orchestrator.vertex.hypertune import report_from_env

    metrics = {"validation": {"accuracy": 0.91, "loss": 0.3}, "test": {"accuracy": 0.88}, "epochs": 5}
    assert report_from_env(metrics) is None  # not a trial: nothing written
    out = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(out))
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "7")
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_TAG", "accuracy")
    report_from_env(metrics)
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_TAG", "test_accuracy")
    report_from_env(metrics)
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["trial"] == "7" and float(first["accuracy"]) == 0.91 and first["global_step"] == "5"
    assert isinstance(first["timestamp"], float)
    assert float(second["test_accuracy"]) == 0.88


def test_vertex_trials_map_to_tuner_trials(tmp_path):
    from google.cloud import aiplatform_v1 as v1

    from orchestrator.vertex.tuning import best_trial, store_trials
    from tuners.study_spec import StudySpec, TrialStatus
    from tuners.study_store import StudyStore

    spec = StudySpec.from_dict({"metric": {"tag": "loss", "goal": "MINIMIZE"}, "max_trials": 3, "parameters": [
        {"name": "units", "type": "INTEGER", "min": 8, "max": 64, "key": "+model.builder_kwargs.units"}]})
    job = v1.HyperparameterTuningJob(trials=[
        v1.Trial(id="1", state=v1.Trial.State.SUCCEEDED, parameters=[v1.Trial.Parameter(parameter_id="units", value=16.0)],
                 final_measurement=v1.Measurement(step_count=3, metrics=[v1.Measurement.Metric(metric_id="loss", value=0.4)])),
        v1.Trial(id="2", state=v1.Trial.State.SUCCEEDED, parameters=[v1.Trial.Parameter(parameter_id="units", value=32.0)],
                 final_measurement=v1.Measurement(step_count=3, metrics=[v1.Measurement.Metric(metric_id="loss", value=0.2)])),
        v1.Trial(id="3", state=v1.Trial.State.INFEASIBLE, infeasible_reason="OOM",
                 parameters=[v1.Trial.Parameter(parameter_id="units", value=64.0)])])
    trials = store_trials(job, spec, tmp_path)
    assert best_trial(trials, spec).id == 2
    with StudyStore(tmp_path) as store:
        loaded = store.load_trials()
    assert [(t.id, t.status, t.objective, t.parameters["units"]) for t in loaded] == [
        (1, TrialStatus.COMPLETED, 0.4, 16), (2, TrialStatus.COMPLETED, 0.2, 32), (3, TrialStatus.FAILED, None, 64)]
    assert loaded[2].error == "OOM"


def test_a_two_objective_trial_reports_and_maps_every_metric(tmp_path, monkeypatch):
    from google.cloud import aiplatform_v1 as v1

    from orchestrator.vertex.hypertune import METRIC_TAGS_ENV, report_from_env
    from orchestrator.vertex.tuning import store_trials
    from tuners.pareto import pareto_front
    from tuners.study_spec import StudySpec, TrialStatus

    tags = ["accuracy", "quantization.quantized.tflite_bytes"]
    out = tmp_path / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(out))
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_TAG", tags[0])
    monkeypatch.setenv(METRIC_TAGS_ENV, ",".join(tags))
    report_from_env({"validation": {"accuracy": 0.9}, "quantization": {"quantized": {"tflite_bytes": 6100}},
                     "epochs": 3})
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [float(line[tag]) for line, tag in zip(lines, tags)] == [0.9, 6100.0]  # one report per metric

    spec = StudySpec.from_dict({"metrics": [{"tag": tags[0], "goal": "MAXIMIZE"}, {"tag": tags[1], "goal": "MINIMIZE"}],
                                "max_trials": 3, "parameters": [{"name": "units", "type": "INTEGER", "min": 8, "max": 64}]})

    def trial(i, units, values):
        return v1.Trial(id=str(i), state=v1.Trial.State.SUCCEEDED,
                        parameters=[v1.Trial.Parameter(parameter_id="units", value=float(units))],
                        final_measurement=v1.Measurement(step_count=3, metrics=[
                            v1.Measurement.Metric(metric_id=tag, value=value) for tag, value in zip(tags, values)]))

    job = v1.HyperparameterTuningJob(trials=[trial(1, 16, [0.90, 5000.0]), trial(2, 64, [0.95, 9000.0]),
                                             trial(3, 32, [0.85, 7000.0]), trial(4, 8, [0.99])])
    trials = store_trials(job, spec, tmp_path)
    assert trials[0].objectives == {tags[0]: 0.90, tags[1]: 5000.0} and trials[0].objective == 0.90
    assert trials[3].status is TrialStatus.FAILED  # no value for the second objective
    assert sorted(t.id for t in pareto_front(trials, spec.metrics)) == [1, 2]


def test_inside_a_job_the_aip_directories_are_where_the_task_mirrors_to():
    from orchestrator.training.mirrors import Mirrors

    env = {"AIP_MODEL_DIR": "gs://b/job/model/", "AIP_CHECKPOINT_DIR": "gs://b/job/checkpoints/",
           "AIP_TENSORBOARD_LOG_DIR": "gs://b/job/logs/"}
    assert Mirrors.resolve(None, env) == Mirrors(backup="gs://b/job/checkpoints", tensorboard="gs://b/job/logs",
                                                 model="gs://b/job/model", keep_backup=True)
    # A task on a Ray node keeps them below its run's URI; the backup goes once training ended.
    assert Mirrors.resolve("gs://b/runs/r1", {}) == Mirrors(backup="gs://b/runs/r1/backup", tensorboard="gs://b/runs/r1/tensorboard",
                                                            record="gs://b/runs/r1")
    assert Mirrors.resolve(None, {}) == Mirrors()  # a local run mirrors nothing


def test_the_chief_keeps_the_run_record_in_the_jobs_output_directory():
    from orchestrator.vertex.job_spec import console_url, custom_job

    cfg = compose("vertex.output_dir=gs://b/jobs/j1")
    body = custom_job(cfg, overrides=["model=cnn"], package_uris=["gs://b/p.tar.gz"], display_name="j1", git_sha=None)
    args = body["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]["args"]
    assert args == ["model=cnn", "hydra.run.dir=gs://b/jobs/j1/run", "backend=local"]
    assert console_url("projects/p1/locations/europe-west4/customJobs/123") == \
        "https://console.cloud.google.com/agent-platform/locations/europe-west4/training/123?project=p1"


def test_the_job_package_says_when_the_prebuilt_image_lacks_the_pinned_tensorflow(tmp_path):
    from orchestrator.vertex import packaging

    assert packaging.prebuilt_tensorflow("us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest") == "2.17"
    assert packaging.prebuilt_tensorflow("us-docker.pkg.dev/me/train/tfscale:1") is None
    cfg = compose()
    assert "TensorFlow 2.17" in packaging.image_mismatch(cfg)  # the default image, TensorFlow 2.21 here
    sdist = tmp_path / packaging.sdist_name()
    sdist.write_bytes(b"")
    container = packaging.write_container(cfg, sdist)
    dockerfile = (tmp_path / "Dockerfile").read_text()
    assert f"tensorflow=={packaging.local_tensorflow()}" in dockerfile and f"COPY {sdist.name}" in dockerfile
    assert container["build"].startswith("gcloud builds submit --project=tfscale-test --tag=us-central1-docker.pkg.dev/")
    text = packaging.pyproject_text({"name": "tfscale", "version": "1", "dependencies": ["numpy"],
                                     "optional-dependencies": {"storage": ["gcsfs>=2024.6"], "ray": ["ray"]}})
    assert 'dependencies = ["numpy", "gcsfs>=2024.6"]' in text and 'ray = ["ray"]' in text
