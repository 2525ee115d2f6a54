"""The run-record writer: status transitions, a killed run told apart, merged facts, redacted copies."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from orchestrator.artifacts.run_record import RunRecord, RunState


def test_status_goes_from_running_to_completed(tmp_path):
    record = RunRecord(tmp_path)
    record.mark_running()
    status = record.status()
    assert status["state"] == "running" and status["pid"] == os.getpid() and status["started"]
    assert record.state() is RunState.RUNNING
    record.mark_completed()
    status = record.status()
    assert status["state"] == "completed" and status["pid"] == os.getpid() and status["ended"]
    assert RunRecord(tmp_path).state() is RunState.COMPLETED


def test_failed_run_keeps_the_error_line_redacted(tmp_path):
    record = RunRecord(tmp_path)
    record.mark_running()
    record.mark_failed(RuntimeError("could not reach db.password=hunter2\nTraceback lines..."))
    status = record.status()
    assert status["state"] == "failed"
    assert status["error"] == "RuntimeError: could not reach db.password=<redacted>"


def test_interrupted_run_keeps_the_exit_code(tmp_path):
    record = RunRecord(tmp_path)
    record.mark_running()
    record.mark_interrupted(143)
    assert record.status()["state"] == "interrupted" and record.status()["exit_code"] == 143


def test_a_run_killed_with_sigkill_stays_running_and_reads_as_killed(tmp_path):
    code = ("import sys, time; from orchestrator.artifacts.run_record import RunRecord; "
            "RunRecord(sys.argv[1]).mark_running(); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert RunRecord(tmp_path).state() is RunState.RUNNING
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    record = RunRecord(tmp_path)
    assert record.status()["state"] == "running" and record.status()["pid"] == proc.pid
    assert record.state() is RunState.KILLED


def _add_fact(run_dir: str, i: int) -> None:
    for j in range(10):
        RunRecord(run_dir).add_facts({f"fact_{i}_{j}": j})


def test_facts_from_concurrent_writers_are_all_kept(tmp_path):
    RunRecord(tmp_path).write_metrics({"test": {"accuracy": 0.9}})
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_fact, args=(str(tmp_path), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"] == {"accuracy": 0.9}
    assert {k for k in metrics if k.startswith("fact_")} == {f"fact_{i}_{j}" for i in range(4) for j in range(10)}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no lock or temporary files left


def test_epochs_and_evaluations_append_lines(tmp_path):
    record = RunRecord(tmp_path)
    record.append_epoch({"epoch": 1, "loss": 0.5})
    record.append_epoch({"epoch": 2, "loss": 0.4})
    record.record_evaluation({"epoch": 2, "accuracy": 0.8}, {"evaluations": 1})
    assert [json.loads(line)["epoch"] for line in (tmp_path / "epochs.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((tmp_path / "evaluator" / "metrics.json").read_text()) == {"evaluations": 1}
    assert (tmp_path / "evaluator" / "evaluations.jsonl").read_text().count("\n") == 1


def test_config_provenance_and_hydra_copies_are_redacted(tmp_path):
    record = RunRecord(tmp_path)
    cfg = OmegaConf.create({"vertex": {"labels": {"api_token": "SEKRET123"}}, "data": {"label_key": "y"},
                            "name": "${data.label_key}"})
    record.write_config(cfg)
    written = yaml.safe_load((tmp_path / "config.resolved.yaml").read_text())
    assert written == {"vertex": {"labels": {"api_token": "<redacted>"}}, "data": {"label_key": "y"}, "name": "y"}
    record.write_provenance({"command": ["tfscale", "+vertex.labels.api_token=SEKRET123"]})
    hydra = tmp_path / ".hydra"
    hydra.mkdir()
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(["+vertex.labels.api_token=SEKRET123", "trainer.epochs=1"]))
    (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {
        "override_dirname": "+vertex.labels.api_token=SEKRET123,trainer.epochs=1", "name": "tfscale"}}}))
    untouched = yaml.safe_dump({"trainer": {"epochs": 1}})
    (hydra / "config.yaml").write_text(untouched)
    record.redact_hydra_files()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"SEKRET123" not in path.read_bytes(), path
    assert yaml.safe_load((hydra / "overrides.yaml").read_text()) == ["+vertex.labels.api_token=<redacted>", "trainer.epochs=1"]
    assert (hydra / "config.yaml").read_text() == untouched


@pytest.mark.slow
def test_cli_run_interrupted_with_ctrl_c_is_marked(tmp_path):
    """A run stopped with SIGINT records ``interrupted``; one left to finish records ``completed``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    args = [sys.executable, "-m", "orchestrator.app.cli", "trainer=quick", "trainer.epochs=200", "data.limit=300",
            "trainer.tensorboard=false", "export=none", "deploy=none"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        epochs = []
        while time.time() < deadline and not epochs:
            epochs = list(tmp_path.glob("runs/*/*/epochs.jsonl"))
            time.sleep(0.2)
        assert epochs, "the run never started training"
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run_dir = epochs[0].parent
    assert RunRecord(run_dir).state() is RunState.INTERRUPTED, (run_dir / "status.json").read_text()
