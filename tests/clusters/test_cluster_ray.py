"""backend=ray end to end: one Ray (started here, once per module) that every ``tfscale`` run connects to."""
from __future__ import annotations

import pytest

from clusters import cluster_testing as ct

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=8, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def alive_actors() -> list:
    from ray._private import state  # GCS actor table; the public state API needs the dashboard

    return [a for a in state.actors().values() if a.get("State") == "ALIVE"]


@pytest.fixture(scope="module")
def mwms_run(ray_address, tmp_path_factory):
    """2 MWMS workers as Ray actors; worker:1's process is SIGKILLed in epoch 2 of 5."""
    cwd = tmp_path_factory.mktemp("ray_mwms")
    proc = ct.run_killing_task(["backend=ray", f"backend.ray_address={ray_address}", "backend.placement_strategy=SPREAD",
                                "cluster=workers_2", "strategy=multi_worker_mirrored", "trainer.epochs=5",
                                "trainer.backup_and_restore=true", "backend.max_restarts=1"], cwd, "worker:1", epoch=2)
    return cwd, proc


def test_ray_mwms_trains_digits_publishes_one_version_and_logs_per_task(mwms_run):
    cwd, proc = mwms_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = ct.metrics(cwd)
    assert m["test"]["accuracy"] >= 0.93 and m["replicas"] == 2 and m["backend"] == "ray"
    assert ct.versions(cwd) == ["0001"]
    logs = ct.run_dir(cwd) / "tasks"
    assert sorted(p.name for p in logs.iterdir()) == ["worker-0.log", "worker-1.log"]
    assert "Epoch 5/5" in (logs / "worker-1.log").read_text()


def test_ray_killed_worker_restarts_job_and_resumes_from_backup(mwms_run):
    cwd, proc = mwms_run
    m = ct.metrics(cwd)
    assert m["restarts"] == 1 and m["epochs"] == 5
    logged = ct.epochs_logged(cwd)
    assert sorted(set(logged)) == [1, 2, 3, 4, 5] and len(logged) - 5 <= 1


def test_ray_leaves_no_actor_or_process_after_success(mwms_run):
    cwd, _ = mwms_run
    assert alive_actors() == []
    assert ct.wait_no_tasks(cwd, 5) == []


def test_ray_parameter_server_trains_exports_and_records_ps_placement(ray_address, tmp_path):
    proc = ct.run(["backend=ray", f"backend.ray_address={ray_address}", "cluster=ps_2x1", "strategy=parameter_server",
                   "trainer.epochs=3"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = ct.metrics(tmp_path)
    tf_config = __import__("json").loads((ct.run_dir(tmp_path) / "provenance.json").read_text())["tf_config"]
    assert sorted(tf_config["cluster"]) == ["chief", "ps", "worker"]  # the full TF_CONFIG, not only workers
    assert m["parameter_server"]["variable_jobs"] == ["/job:ps/replica:0/task:0"]
    assert ct.versions(tmp_path) == ["0001"]
    assert alive_actors() == [] and ct.wait_no_tasks(tmp_path, 5) == []


def test_ray_ctrl_c_releases_actors_and_processes(ray_address, tmp_path):
    proc = ct.start(["backend=ray", f"backend.ray_address={ray_address}", "cluster=workers_2",
                     "strategy=multi_worker_mirrored", "trainer.epochs=200"], tmp_path)
    ct.interrupt_when_training(proc, tmp_path)
    proc.wait(timeout=90)
    assert proc.returncode != 0
    assert ct.wait_no_tasks(tmp_path, 15) == []
    assert alive_actors() == []
