"""backend=ray and the Ray launcher on a cluster tfscale did not start: 2 nodes from ``ray start`` with token
authentication, reached through ``RAY_ADDRESS``, sharing no directory with the driver; every artifact goes to
a bucket (fake-gcs-server)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from clusters import cluster_testing as ct
from clusters.ray_nodes import start_cluster
from storage.conftest import BUCKET, gcs_server  # noqa: F401  (the fake-gcs-server fixture)

pytestmark = pytest.mark.slow

pytest.importorskip("ray")
QUICK = ["trainer.batch_size=64", "data.limit=600", "trainer.verbose=2", "trainer.tensorboard=false"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = start_cluster(tmp_path_factory.mktemp("ray_cluster"))
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def bucket(gcs_server):  # noqa: F811
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:10]}"


def tfscale(cluster, gcs_server, cwd, *args, timeout=300):  # noqa: F811
    """``tfscale ARGS`` in ``cwd`` as a user with ``RAY_ADDRESS`` (and the bucket's emulator) in the environment."""
    env = cluster.driver_env(STORAGE_EMULATOR_HOST=gcs_server)
    return subprocess.run([*ct.tfscale_argv(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@contextlib.contextmanager
def emulated(gcs_server):  # noqa: F811
    """This process's storage calls go to the emulator for the block (and only then)."""
    before = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_server
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = before


def bucket_json(gcs_server, uri):  # noqa: F811
    from orchestrator.artifacts import storage

    with emulated(gcs_server):
        return json.loads(storage.read_text(uri))


def bucket_list(gcs_server, uri):  # noqa: F811
    from orchestrator.artifacts import storage

    with emulated(gcs_server):
        return storage.listdir(uri)


def only_run(gcs_server, runs):  # noqa: F811
    (name,) = bucket_list(gcs_server, f"{runs}/digits_mlp")
    return f"{runs}/digits_mlp/{name}"


def versions(gcs_server, models):  # noqa: F811
    from orchestrator.artifacts import publish

    with emulated(gcs_server):
        return publish.existing_versions(f"{models}/digits_mlp")


def task_pid(run_prefix: str, role: str, index: int) -> int | None:
    """PID of the first attempt's task process ``role:index`` of a run kept below ``run_prefix``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if f"orchestrator.launch.task_main {run_prefix}" not in cmd:
                continue
            env = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in item)
        except OSError:
            continue
        if json.loads(env.get("TF_CONFIG", "{}")).get("task") == {"type": role, "index": index} and env.get("TFSCALE_ATTEMPT") == "0":
            return int(entry.name)
    return None


@pytest.fixture(scope="module")
def mwms(cluster, gcs_server, bucket, tmp_path_factory):  # noqa: F811
    """MWMS on the 2 nodes; worker:1's process is SIGKILLed once it starts epoch 2 of 3, the job restarts."""
    cwd = tmp_path_factory.mktemp("driver")
    args = ["backend=ray", "cluster=workers_2", "strategy=multi_worker_mirrored", f"runs_dir={bucket}/runs",
            f"export.model_base={bucket}/models", *QUICK, "trainer.epochs=3", "trainer.backup_and_restore=true",
            "backend.max_restarts=1"]
    proc = subprocess.Popen([*ct.tfscale_argv(), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cluster.driver_env(STORAGE_EMULATOR_HOST=gcs_server))
    lines, killed = [], []
    for line in proc.stdout:
        lines.append(line)
        if not killed and line.startswith("[worker:1] Epoch 2/"):
            pid = task_pid(f"{bucket}/runs", "worker", 1)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    proc.wait(timeout=300)
    return cwd, proc.returncode, "".join(lines), killed


def test_mwms_on_two_nodes_keeps_everything_in_the_bucket(mwms, cluster, gcs_server, bucket):  # noqa: F811
    cwd, code, output, killed = mwms
    assert code == 0 and killed, output[-4000:]
    run = only_run(gcs_server, f"{bucket}/runs")
    assert f"tfscale: run record {run}" in output
    tasks = bucket_json(gcs_server, f"{run}/provenance.json")["tasks"]
    assert sorted(tasks) == ["worker:0", "worker:1"]
    assert sorted(t["node_id"] for t in tasks.values()) == sorted(cluster.node_ids)  # one worker per node
    # The nodes ran the code Ray's runtime_env brought them, not an installed tfscale.
    assert all("runtime_resources" in t["code"] for t in tasks.values()), tasks
    assert versions(gcs_server, f"{bucket}/models") == [1]
    assert f"tfscale: model version {bucket}/models/digits_mlp/0001" in output
    metrics = bucket_json(gcs_server, f"{run}/metrics.json")
    assert metrics["backend"] == "ray" and metrics["replicas"] == 2 and metrics["test"]["accuracy"] > 0.8
    assert metrics["tasks"]["worker:1"] == f"{run}/tasks/worker-1.log"
    assert bucket_json(gcs_server, f"{run}/status.json")["state"] == "completed"
    assert sorted(os.listdir(cwd)) == []  # nothing in the driver's working directory
    for node in cluster.node_dirs:  # nor in the nodes'
        assert not (node / "runs").exists() and not (node / "models").exists()


def test_a_killed_worker_restarts_from_the_backup_in_the_bucket(mwms, gcs_server, bucket):  # noqa: F811
    run = only_run(gcs_server, f"{bucket}/runs")
    metrics = bucket_json(gcs_server, f"{run}/metrics.json")
    assert metrics["restarts"] == 1 and metrics["epochs"] == 3
    with emulated(gcs_server):
        from orchestrator.artifacts import storage

        logged = [json.loads(line)["epoch"] for line in storage.read_text(f"{run}/epochs.jsonl").splitlines()]
        assert "backup" not in storage.listdir(run)  # removed once training ended
    # The restarted tasks (fresh scratch directories) resumed from the mirrored backup: no epoch was lost.
    assert sorted(set(logged)) == [1, 2, 3] and len(logged) - 3 <= 1


def test_ray_client_address(cluster, gcs_server, bucket, tmp_path):  # noqa: F811
    env = {k: v for k, v in cluster.driver_env(STORAGE_EMULATOR_HOST=gcs_server).items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([*ct.tfscale_argv(), "backend=ray", f"backend.ray_address={cluster.client_address}",
                           "cluster=workers_2", "strategy=multi_worker_mirrored", f"runs_dir={bucket}/client/runs",
                           f"export.model_base={bucket}/client/models", *QUICK, "trainer.epochs=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run(gcs_server, f"{bucket}/client/runs")
    tasks = bucket_json(gcs_server, f"{run}/provenance.json")["tasks"]
    assert {t["node_id"] for t in tasks.values()} == set(cluster.node_ids)
    assert os.listdir(tmp_path) == []


def test_parameter_server_fits_four_tasks_on_two_one_cpu_nodes(cluster, gcs_server, bucket, tmp_path):  # noqa: F811
    runs, models = f"{bucket}/ps/runs", f"{bucket}/ps/models"
    proc = tfscale(cluster, gcs_server, tmp_path, "backend=ray", "cluster=ps_2x1", "strategy=parameter_server",
                   f"runs_dir={runs}", f"export.model_base={models}", *QUICK, "trainer.epochs=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run(gcs_server, runs)
    tasks = bucket_json(gcs_server, f"{run}/provenance.json")["tasks"]
    assert sorted(tasks) == ["chief:0", "ps:0", "worker:0", "worker:1"]
    assert {t["node_id"] for t in tasks.values()} == set(cluster.node_ids)
    assert bucket_json(gcs_server, f"{run}/metrics.json")["parameter_server"]["variable_jobs"] == ["/job:ps/replica:0/task:0"]
    assert versions(gcs_server, models) == [1]
    assert os.listdir(tmp_path) == []


def test_local_paths_on_a_multi_node_cluster_are_a_config_error(cluster, gcs_server, tmp_path):  # noqa: F811
    proc = tfscale(cluster, gcs_server, tmp_path, "backend=ray", "cluster=workers_2", "strategy=multi_worker_mirrored",
                   *QUICK, "trainer.epochs=2", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("tfscale: error:")]
    assert "'runs_dir' = 'runs'" in line and "2 node(s)" in line and "runs_dir=gs://BUCKET/runs" in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "models").exists()  # refused before anything trained


def test_study_on_the_ray_launcher_spreads_trials_and_resumes_from_the_bucket(cluster, gcs_server, bucket, tmp_path):  # noqa: F811
    study, models = f"{bucket}/study", f"{bucket}/study_models"
    args = ["-m", "study=digits_lr_units_ray", "study.max_trials=2", f"hydra.sweep.dir={study}",
            f"export.model_base={models}", "hydra.sweeper.plots=false", *QUICK, "trainer.epochs=2"]
    proc = tfscale(cluster, gcs_server, tmp_path, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nodes = {bucket_json(gcs_server, f"{study}/trial_{i}/provenance.json")["ray_node"]["node_id"] for i in (0, 1)}
    assert nodes == set(cluster.node_ids)  # the two parallel trials ran on different nodes
    for i in (0, 1):
        assert "validation" in bucket_json(gcs_server, f"{study}/trial_{i}/metrics.json")
    assert versions(gcs_server, models) == [1, 2]
    assert {"study.db", "study.csv", "trial_0", "trial_1"} <= set(bucket_list(gcs_server, study))
    assert os.listdir(tmp_path) == []
    again = tfscale(cluster, gcs_server, tmp_path, *args)  # the same command: the study comes back from the bucket
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[study] resuming 'digits_lr_units_ray'" in again.stdout and "2/2 done" in again.stdout
    assert "submitted to Ray" not in again.stdout + again.stderr  # nothing was run twice
