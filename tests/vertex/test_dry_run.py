"""Dry runs print the exact request and the gcloud command, contact nothing, and round-trip through the SDK's protos."""
from __future__ import annotations

import json
import socket

import pytest
from google.cloud import aiplatform_v1
from google.protobuf import json_format

from conftest import LOCATION, run_dir, run_tfscale

SEED_STUDY = """\
trainingInput:
  hyperparameters:
    goal: MAXIMIZE
    hyperparameterMetricTag: accuracy
    maxTrials: 10
    maxParallelTrials: 2
    enableTrialEarlyStopping: false
    params:
      - parameterName: n_layers
        type: INTEGER
        minValue: 10
        maxValue: 100
        scaleType: UNIT_LINEAR_SCALE
      - parameterName: momentum
        type: DOUBLE
        minValue: 0.1
        maxValue: 1.0
        scaleType: UNIT_LOG_SCALE
"""
SEED_PARAM_MAP = ["+vertex.study_param_map.n_layers=+model.builder_kwargs.n_layers",
                  "+vertex.study_param_map.momentum=model.optimizer.momentum"]


def printed_request(stdout: str) -> str:
    """The JSON between the dry run's marker lines."""
    body = stdout.split("request (parent:", 1)[1].split("\n", 1)[1]
    return body.split("--- equivalent gcloud command ---", 1)[0].strip()


def printed_command(stdout: str) -> str:
    return stdout.split("--- equivalent gcloud command ---\n", 1)[1].split("\n", 1)[0]


@pytest.fixture
def listener():
    """A socket on 127.0.0.1 given as the API endpoint: a dry run must never connect to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def assert_never_contacted(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


def roundtrip(stdout: str, cls):
    text = printed_request(stdout)
    proto = cls()._pb
    json_format.Parse(text, proto)  # unknown fields or wrong types raise here
    assert json.loads(json_format.MessageToJson(proto)) == json.loads(text)
    return cls.wrap(proto)


def dry_run(tmp_path, listener, *overrides):
    host, port = listener.getsockname()
    result = run_tfscale(tmp_path, "backend=vertex", "vertex.dry_run=true", *LOCATION,
                         f"vertex.api_endpoint={host}:{port}", *overrides)
    assert result.returncode == 0, result.stderr
    assert_never_contacted(listener)
    return result


def test_premium_1_job_with_many_workers_and_parameter_servers(tmp_path, listener):
    result = dry_run(tmp_path, listener, "vertex.scale_tier=PREMIUM_1", "strategy=parameter_server",
                     "trainer.steps_per_epoch=10", "cluster=ps_2x1", "cluster.worker.count=19", "cluster.ps.count=11",
                     "vertex.service_account=trainer@tfscale-test.iam.gserviceaccount.com",
                     "vertex.network=projects/123/global/networks/default")
    job = roundtrip(result.stdout, aiplatform_v1.CustomJob)
    pools = job.job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 19, 11]
    assert [p.machine_spec.machine_type for p in pools] == ["n1-highcpu-16", "n1-highcpu-16", "n1-highmem-8"]
    for pool in pools:
        spec = pool.python_package_spec
        assert spec.python_module == "orchestrator.app.cli"
        assert spec.package_uris[0].startswith("gs://tfscale-test-bucket/tfscale/staging/")
        assert spec.package_uris[0].endswith(".tar.gz")
        assert "strategy=parameter_server" in spec.args and spec.args[-1] == "backend=local"
        assert not any(a.startswith("vertex.") for a in spec.args)
    assert job.job_spec.service_account == "trainer@tfscale-test.iam.gserviceaccount.com"
    assert job.job_spec.network == "projects/123/global/networks/default"
    assert job.job_spec.base_output_directory.output_uri_prefix.startswith("gs://tfscale-test-bucket/tfscale/jobs/")
    assert job.labels["tfscale-experiment"] == "digits_mlp"
    command = printed_command(result.stdout)
    assert command.startswith("gcloud ai custom-jobs create --project=tfscale-test --region=us-central1 --display-name=tfscale-digits_mlp-")
    config = command.rsplit("--config=", 1)[1]
    assert (run_dir(tmp_path) / "vertex_job.yaml").samefile(config)
    import yaml

    gcloud_spec = yaml.safe_load((run_dir(tmp_path) / "vertex_job.yaml").read_text())
    assert gcloud_spec == json.loads(printed_request(result.stdout))["jobSpec"]  # a CustomJobSpec, as --config expects
    saved = json.loads((run_dir(tmp_path) / "vertex_request.json").read_text())
    assert saved == json.loads(printed_request(result.stdout))


def test_two_worker_multi_worker_mirrored_job(tmp_path, listener):
    result = dry_run(tmp_path, listener, "cluster=workers_2", "strategy=multi_worker_mirrored",
                     "vertex.worker_machine_type=n1-standard-8", "vertex.accelerator_type=NVIDIA_TESLA_T4",
                     "cluster.worker.gpus=1", "vertex.display_name=mwms-two-workers")
    job = roundtrip(result.stdout, aiplatform_v1.CustomJob)
    pools = job.job_spec.worker_pool_specs
    # Two workers, no chief: worker 0 becomes pool 0 (TensorFlow's chief), the other worker pool 1.
    assert len(pools) == 2 and [p.replica_count for p in pools] == [1, 1]
    assert [p.machine_spec.machine_type for p in pools] == ["n1-standard-8", "n1-standard-8"]
    assert all(p.machine_spec.accelerator_type == aiplatform_v1.AcceleratorType.NVIDIA_TESLA_T4 for p in pools)
    assert all(p.machine_spec.accelerator_count == 1 for p in pools)
    assert job.display_name == "mwms-two-workers"
    assert "--display-name=mwms-two-workers" in printed_command(result.stdout)


def test_container_image_replaces_the_python_package(tmp_path, listener):
    result = dry_run(tmp_path, listener, "vertex.image=us-docker.pkg.dev/tfscale-test/train/tfscale:1", "vertex.scale_tier=BASIC_GPU")
    job = roundtrip(result.stdout, aiplatform_v1.CustomJob)
    (pool,) = job.job_spec.worker_pool_specs
    assert pool.container_spec.image_uri == "us-docker.pkg.dev/tfscale-test/train/tfscale:1"
    assert list(pool.container_spec.command) == ["python", "-m", "orchestrator.app.cli"]
    assert pool.machine_spec.machine_type == "n1-standard-8"
    assert pool.machine_spec.accelerator_type == aiplatform_v1.AcceleratorType.NVIDIA_TESLA_K80


def test_seed_tuning_study(tmp_path, listener):
    (tmp_path / "hptuning_config.yaml").write_text(SEED_STUDY)
    result = dry_run(tmp_path, listener, "vertex.tuning=true", "vertex.study_file=hptuning_config.yaml", *SEED_PARAM_MAP)
    job = roundtrip(result.stdout, aiplatform_v1.HyperparameterTuningJob)
    assert job.max_trial_count == 10 and job.parallel_trial_count == 2
    (metric,) = job.study_spec.metrics
    assert metric.metric_id == "accuracy" and metric.goal == aiplatform_v1.StudySpec.MetricSpec.GoalType.MAXIMIZE
    n_layers, momentum = job.study_spec.parameters
    assert n_layers.parameter_id == "n_layers"
    assert (n_layers.integer_value_spec.min_value, n_layers.integer_value_spec.max_value) == (10, 100)
    assert n_layers.scale_type == aiplatform_v1.StudySpec.ParameterSpec.ScaleType.UNIT_LINEAR_SCALE
    assert momentum.parameter_id == "momentum"
    assert (momentum.double_value_spec.min_value, momentum.double_value_spec.max_value) == (0.1, 1.0)
    assert momentum.scale_type == aiplatform_v1.StudySpec.ParameterSpec.ScaleType.UNIT_LOG_SCALE
    (pool,) = job.trial_job_spec.worker_pool_specs
    spec = pool.python_package_spec
    assert spec.python_module == "orchestrator.app.vertex_trial"
    assert "--tfscale-param-key=n_layers=+model.builder_kwargs.n_layers" in spec.args
    assert "--tfscale-param-key=momentum=model.optimizer.momentum" in spec.args
    assert [(e.name, e.value) for e in spec.env] == [("CLOUD_ML_HP_METRIC_TAG", "accuracy"), ("TFSCALE_HP_METRIC_TAGS", "accuracy")]
    command = printed_command(result.stdout)
    assert command.startswith("gcloud ai hp-tuning-jobs create --project=tfscale-test --region=us-central1")
    assert "--max-trial-count=10" in command and "--parallel-trial-count=2" in command
