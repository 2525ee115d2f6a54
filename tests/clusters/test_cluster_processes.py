"""backend=processes end to end: real task processes on loopback, through the real ``tfscale`` script."""
from __future__ import annotations

import pytest

from clusters import cluster_testing as ct

pytestmark = pytest.mark.slow

MWMS = ["backend=processes", "cluster=workers_2", "strategy=multi_worker_mirrored"]
RESTARTABLE = ["trainer.epochs=5", "trainer.backup_and_restore=true", "backend.max_restarts=1"]


@pytest.fixture(scope="module")
def mwms_run(tmp_path_factory):
    """One 2-worker MWMS job whose worker:1 is SIGKILLed in epoch 2 of 5 (shared by the tests below)."""
    cwd = tmp_path_factory.mktemp("mwms")
    proc = ct.run_killing_task(MWMS + RESTARTABLE, cwd, "worker:1", epoch=2)
    return cwd, proc


def test_mwms_trains_digits_publishes_one_version_and_logs_per_task(mwms_run):
    cwd, proc = mwms_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = ct.metrics(cwd)
    assert m["test"]["accuracy"] >= 0.93
    assert m["replicas"] == 2 and m["strategy"] == "multi_worker_mirrored"
    assert ct.versions(cwd) == ["0001"]
    logs = ct.run_dir(cwd) / "tasks"
    assert sorted(p.name for p in logs.iterdir()) == ["worker-0.log", "worker-1.log"]
    assert "Epoch 5/5" in (logs / "worker-1.log").read_text()
    assert "[worker:1] " in proc.stdout  # streamed with a task prefix
    # the non-chief saved into a temporary directory that is gone again
    assert not list(ct.run_dir(cwd).glob(".worker-1-*"))


def test_killed_worker_restarts_job_and_resumes_from_backup(mwms_run):
    cwd, proc = mwms_run
    assert proc.returncode == 0
    m = ct.metrics(cwd)
    assert m["restarts"] == 1 and m["epochs"] == 5
    logged = ct.epochs_logged(cwd)
    assert sorted(set(logged)) == [1, 2, 3, 4, 5]
    assert len(logged) - 5 <= 1  # at most one epoch computed twice
    assert "killed by SIGKILL" in proc.stdout + proc.stderr


def test_no_task_process_left_after_success(mwms_run):
    cwd, _ = mwms_run
    assert ct.wait_no_tasks(cwd, 5) == []


def test_parameter_server_with_evaluator_trains_exports_and_records_ps_placement(tmp_path):
    proc = ct.run(["backend=processes", "cluster=ps_2x1_eval", "strategy=parameter_server", "trainer.epochs=3"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = ct.metrics(tmp_path)
    assert m["parameter_server"]["variable_jobs"] == ["/job:ps/replica:0/task:0"]
    assert all(d[0].startswith("/job:ps/replica:0/task:0/") for d in m["parameter_server"]["variable_devices"].values())
    assert m["test"]["accuracy"] > 0.8 and ct.versions(tmp_path) == ["0001"]
    evaluator = ct.run_dir(tmp_path) / "evaluator" / "metrics.json"
    assert evaluator.exists(), (ct.run_dir(tmp_path) / "tasks" / "evaluator-0.log").read_text()[-3000:]
    assert '"accuracy"' in evaluator.read_text()
    assert ct.wait_no_tasks(tmp_path, 5) == []


def test_task_failure_names_the_task_and_its_log_and_leaves_nothing(tmp_path):
    proc = ct.run_killing_task(MWMS + ["trainer.epochs=3"], tmp_path, "worker:1", epoch=1)
    assert proc.returncode != 0
    assert "Task worker:1 was killed by SIGKILL" in proc.stderr
    assert "tasks/worker-1.log" in proc.stderr
    assert ct.versions(tmp_path) == []
    assert ct.wait_no_tasks(tmp_path, 5) == []


def test_ctrl_c_stops_every_task(tmp_path):
    proc = ct.start(MWMS + ["trainer.epochs=200"], tmp_path)
    ct.interrupt_when_training(proc, tmp_path)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert ct.wait_no_tasks(tmp_path, 10) == []
    assert ct.versions(tmp_path) == []
