"""Studies end to end: real ``tfscale -m study=...`` drivers training real trials.

Trials are kept cheap (2 epochs on 300 digits, no export); each still starts its own TensorFlow process.
"""
from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfscale_testing import run_tfscale, tfscale_env

CHEAP = ["trainer.epochs=2", "trainer.verbose=0", "export.enabled=false", "data.limit=300"]


def _rows(sweep_dir: Path) -> list:
    with open(sweep_dir / "study.csv", newline="") as f:
        return list(csv.DictReader(f))


def _processes_mentioning(text: str) -> list:
    """Processes whose command line mentions ``text`` or whose working directory is ``text`` or below it (trials
    forked by a warm trial process carry its command line, not their own)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if text in cmdline or cwd == text or cwd.startswith(text + "/"):
                found.append(cmdline)
    return found


def _assert_results(sweep_dir: Path, n: int, columns: tuple) -> list:
    rows = _rows(sweep_dir)
    assert [int(r["trial_id"]) for r in rows if r] and sorted(int(r["trial_id"]) for r in rows) == list(range(n))
    assert all(r["status"] == "COMPLETED" for r in rows), rows
    assert set(columns) <= set(rows[0])
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == sorted(f"trial_{i}" for i in range(n))
    best = (sweep_dir / "best_overrides.txt").read_text().split()
    assert [o.split("=")[0] for o in best] == list(columns[:-1][-len(best):]) or best
    for name in ("study.md", "objective.png", "parameters.png"):
        assert (sweep_dir / name).stat().st_size > 0
    assert list((sweep_dir / "tensorboard").rglob("events.out.tfevents.*"))
    return rows


@pytest.mark.slow
def test_study_on_processes_survives_a_killed_driver(tmp_path):
    args = ["-m", "study=digits_lr_units", "study.max_trials=5", *CHEAP, "trainer.tensorboard=false"]
    sweep_dir = tmp_path / "runs" / "studies" / "digits_lr_units"
    with open(tmp_path / "driver.log", "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", *args], cwd=tmp_path, stdout=out,
                                  stderr=subprocess.STDOUT, env=tfscale_env(), start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list(sweep_dir.glob("trial_*/metrics.json"))) < 2:
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert time.monotonic() < deadline, "2 trials did not finish in time"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    # Warm trial processes and trials run in their own process groups; they must still die with the driver.
    deadline = time.monotonic() + 30
    while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_mentioning(str(tmp_path)), "orphaned trial processes"
    with sqlite3.connect(sweep_dir / "study.db") as db:
        before = db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    # Two trials run at a time: when the driver died, up to two more than the 2 finished had started.
    assert 2 <= before <= 4

    result = run_tfscale(args, tmp_path, timeout=600)
    assert result.returncode == 0, result.output
    assert "resuming 'digits_lr_units'" in result.stdout
    rows = _assert_results(sweep_dir, 5, ("learning_rate", "units", "accuracy"))
    assert len({(r["learning_rate"], r["units"]) for r in rows}) == 5
    best = (sweep_dir / "best_overrides.txt").read_text()
    assert "model.optimizer.learning_rate=" in best and "model.layers.1.units=" in best


@pytest.mark.slow
def test_study_on_ray(tmp_path):
    result = run_tfscale(["-m", "study=digits_lr_units_ray", "study.max_trials=3", *CHEAP, "trainer.tensorboard=false"],
                         tmp_path, timeout=600)
    assert result.returncode == 0, result.output
    sweep_dir = tmp_path / "runs" / "studies" / "digits_lr_units_ray"
    _assert_results(sweep_dir, 3, ("learning_rate", "units", "accuracy"))
    for i in range(3):  # each trial ran as its own tfscale process in a Ray worker
        assert (sweep_dir / f"trial_{i}" / "metrics.json").exists()
        assert (sweep_dir / f"trial_{i}" / "trial.log").exists()


@pytest.mark.slow
def test_seed_ai_platform_study_runs(tmp_path):
    result = run_tfscale(["-m", "study=seed_mnist", "study.trainingInput.hyperparameters.maxTrials=2",
                          *CHEAP, "trainer.tensorboard=false"], tmp_path, timeout=600)
    assert result.returncode == 0, result.output
    sweep_dir = tmp_path / "runs" / "studies" / "seed_mnist"
    rows = _assert_results(sweep_dir, 2, ("n_layers", "momentum", "accuracy"))
    for row in rows:
        assert 10 <= int(row["n_layers"]) <= 100 and 0.1 <= float(row["momentum"]) <= 1.0
    best = (sweep_dir / "best_overrides.txt").read_text()
    assert "model.layers.1.units=" in best and "model.optimizer.momentum=" in best


@pytest.mark.slow
def test_a_metric_no_trial_reports_stops_the_study_after_the_first_trial(tmp_path):
    result = run_tfscale(["-m", "study=digits_lr_units", "study.metric.tag=f1_score", "study.max_parallel_trials=1",
                          *CHEAP], tmp_path, timeout=600)
    assert result.returncode != 0
    assert "'study.metric.tag' = 'f1_score'" in result.stderr, result.stderr
    assert "validation.accuracy" in result.stderr and "Set study.metric.tag to one of them" in result.stderr
    assert "Traceback" not in result.stderr
    sweep_dir = tmp_path / "runs" / "studies" / "digits_lr_units"
    assert [p.name for p in sweep_dir.glob("trial_*")] == ["trial_0"]


@pytest.mark.slow
def test_failed_trials_past_the_budget_stop_the_study(tmp_path):
    # mnist needs a download: on this offline machine every trial fails at run time, after validation.
    result = run_tfscale(["-m", "study=digits_lr_units", "data=mnist", "data.cache_dir=/nonexistent",
                          "study.max_failed_trials=1", "study.max_trials=4", *CHEAP[:-1], "trainer.tensorboard=false"],
                         tmp_path, timeout=600)
    assert result.returncode != 0
    assert "more than max_failed_trials=1" in result.stderr and "raise max_failed_trials" in result.stderr
    assert "trial_0/trial.log" in result.stderr and "mnist" in result.stderr
    sweep_dir = tmp_path / "runs" / "studies" / "digits_lr_units"
    rows = _rows(sweep_dir)
    failed = [r for r in rows if r["status"] == "FAILED"]
    assert len(failed) == 2, rows
    assert all(r["log_path"].endswith("trial.log") and r["error"] for r in failed)
    # A slot freed by the first failure started the next trial at once; the second failure stopped it (it stays
    # ACTIVE, to be re-run if the study is resumed), and nothing after it started.
    assert len(rows) <= 3 and all(r["status"] == "ACTIVE" for r in rows if r not in failed), rows
    assert not (sweep_dir / "trial_3").exists()
