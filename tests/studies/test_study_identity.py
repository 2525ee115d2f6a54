"""A study is known by its name: it lives in runs/studies/<name>, the same command resumes it, one driver at a time
runs it, and it can warm-start from earlier studies. The user's own study file sits in their own config folder
(``-cd``) and sets no ``hydra.sweep.dir``."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tfscale_testing import REPO, run_tfscale, tfscale_env

STUDY = {
    "metric": {"tag": "accuracy", "goal": "MAXIMIZE"},
    "max_trials": 4,
    "max_parallel_trials": 2,
    "algorithm": "RANDOM_SEARCH",
    "parameters": [
        {"name": "learning_rate", "type": "DOUBLE", "min": 1.0e-3, "max": 1.0e-1, "scale": "log",
         "key": "model.optimizer.learning_rate"},
        {"name": "units", "type": "INTEGER", "min": 8, "max": 64, "scale": "log", "key": "model.layers.1.units"},
    ],
}
CHEAP = ["trainer.epochs=1", "trainer.verbose=0", "export.enabled=false", "data.limit=200", "trainer.tensorboard=false"]


@pytest.fixture
def team(tmp_path):
    """A working directory with the team's own config folder holding study/team_lr.yaml."""
    conf = tmp_path / "team_conf" / "study"
    conf.mkdir(parents=True)
    body = {"defaults": [{"override /hydra/sweeper": "tfscale"}, {"override /hydra/launcher": "tfscale_processes"}],
            "study": STUDY}
    (conf / "team_lr.yaml").write_text("# @package _global_\n" + yaml.safe_dump(body, sort_keys=False))
    return tmp_path


def _args(*extra: str) -> list:
    return ["-m", "-cd", "team_conf", "study=team_lr", *extra]


@pytest.fixture
def no_tensorflow(tmp_path):
    """An environment where importing TensorFlow aborts the process with a marker message."""
    fake = tmp_path / "fake_tf"
    (fake / "tensorflow").mkdir(parents=True)
    (fake / "tensorflow" / "__init__.py").write_text('raise SystemExit("TENSORFLOW WAS IMPORTED")\n')
    return tfscale_env(PYTHONPATH=f"{fake}:{REPO}")


def _stored(db: Path) -> list:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, parameters, status FROM trials ORDER BY id").fetchall()


def _processes_in(directory: Path) -> list:
    """Processes working in ``directory`` or naming it on their command line (a study's driver and trials)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(directory)) or str(directory) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_own_study_file_resumes_by_name_with_one_driver_at_a_time(team):
    sweep_dir = team / "runs" / "studies" / "team_lr"
    with open(team / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", *_args(*CHEAP)], cwd=team,
                                  stdout=log, stderr=subprocess.STDOUT, env=tfscale_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(list(sweep_dir.glob("trial_*/metrics.json"))) < 2:
            assert driver.poll() is None, (team / "driver.log").read_text()
            assert time.monotonic() < deadline, "2 trials did not finish in time"
            time.sleep(0.1)

        # A second driver on the live study refuses, naming the first one, and writes nothing.
        second = run_tfscale(_args(*CHEAP), team, timeout=120)
        assert second.returncode == 2, second.output
        errors = [line for line in second.stderr.splitlines() if line.startswith("tfscale: error")]
        assert len(errors) == 1 and f"pid {driver.pid}" in errors[0] and f"host {socket.gethostname()}" in errors[0]
        assert "[study] 'team_lr'" not in second.stdout and "launching" not in second.output

        done = {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("trial_*/metrics.json")}
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    deadline = time.monotonic() + 30
    while _processes_in(team) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_in(team), "processes outlived the killed driver"

    result = run_tfscale(_args(*CHEAP), team, timeout=600)
    assert result.returncode == 0, result.output
    assert f"pid {driver.pid}) ended without closing the study; taking it over" in result.stdout, result.stdout
    assert "resuming 'team_lr' in runs/studies/team_lr" in result.stdout
    rows = _stored(sweep_dir / "study.db")
    assert [r[0] for r in rows] == [0, 1, 2, 3] and {r[2] for r in rows} == {"COMPLETED"}
    assert len({r[1] for r in rows}) == 4
    # Trials finished before the kill were not run again; the study is one directory, not a multirun_* per command.
    assert {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("trial_*/metrics.json")
            if p.parent.name in done} == done
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == [f"trial_{i}" for i in range(4)]
    assert [p.relative_to(team / "runs").as_posix() for p in (team / "runs").iterdir()] == ["studies"]
    assert [p.name for p in (team / "runs" / "studies").iterdir()] == ["team_lr"]


@pytest.mark.slow
def test_warm_start_from_an_earlier_study_feeds_its_completed_trials(team):
    from tuners import Study

    # The earlier study searched a wider learning-rate range; one of its completed trials lies outside this one's.
    wider = {**STUDY, "parameters": [{**STUDY["parameters"][0], "max": 1.0}, STUDY["parameters"][1]]}
    earlier = Study(wider, team / "runs" / "studies" / "team_lr_v1")
    for trial, value in zip(earlier.suggest(2), (0.5, 0.6)):
        earlier.complete(trial.id, value)
    for trial in earlier.suggest(2):
        earlier.fail(trial.id, "boom")
    earlier.close()
    completed = [t.parameters["learning_rate"] for t in Study(wider, team / "runs" / "studies" / "team_lr_v1").trials
                 if t.status.name == "COMPLETED"]
    inside = sum(1 for lr in completed if lr <= 0.1)

    result = run_tfscale(_args("+study.name=team_lr_v2", "+study.warm_start_from=[team_lr_v1]", "study.max_trials=1",
                               "study.max_parallel_trials=1", *CHEAP), team, timeout=600)
    assert result.returncode == 0, result.output
    assert f"learns from {inside} completed trial" in result.stdout, result.stdout
    assert f"{inside} from 'team_lr_v1'" in result.stdout
    if inside < 2:
        assert f"{2 - inside} outside this study's ranges left out" in result.stdout
    assert "they do not count against max_trials" in result.stdout
    assert [r[0] for r in _stored(team / "runs" / "studies" / "team_lr_v2" / "study.db")] == [0]
    assert len(_stored(team / "runs" / "studies" / "team_lr_v1" / "study.db")) == 4  # only read


# ------------------------------------------------------------------------------- errors, before any trial
def _rejected(team: Path, env: dict, *extra: str, args=None) -> str:
    result = run_tfscale(args or _args(*extra), team, env=env, timeout=120)
    assert result.returncode == 2, result.output
    assert "TENSORFLOW WAS IMPORTED" not in result.output and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("tfscale: error")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_key_the_study_file_does_not_declare_gets_the_valid_keys(team, no_tensorflow):
    line = _rejected(team, no_tensorflow, "study.seed=3")
    assert "'study.seed' = '3'" in line and "add it with +study.seed=3" in line, line
    line = _rejected(team, no_tensorflow, "study.max_trial=3")
    assert "Did you mean study.max_trials=3?" in line and "Valid keys: algorithm," in line, line
    assert "warm_start_from" in line and "name" in line
    line = _rejected(team, no_tensorflow, "study.parameters.0.mx=2")
    assert "Did you mean study.parameters.0.max=2?" in line, line
    assert not (team / "runs").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "a:b"])
def test_study_names_with_path_characters_are_rejected(team, no_tensorflow, name):
    line = _rejected(team, no_tensorflow, f"+study.name={name}")
    assert f"'study.name' = '{name}'" in line and "one directory name" in line and "study.name=" in line, line
    assert not (team / "runs").exists() and not (team.parent / "escape").exists()


def test_warm_starts_from_missing_or_incompatible_studies_are_rejected(team, no_tensorflow):
    from tuners import Study

    line = _rejected(team, no_tensorflow, "+study.warm_start_from=[nowhere]")
    assert "'study.warm_start_from' = 'nowhere'" in line and "no study store at runs/studies/nowhere/study.db" in line
    other = {**STUDY, "parameters": [STUDY["parameters"][0], {**STUDY["parameters"][1], "type": "DOUBLE"}]}
    Study(other, team / "runs" / "studies" / "other").close()
    line = _rejected(team, no_tensorflow, "+study.warm_start_from=[other]")
    assert "'study.warm_start_from' = 'other'" in line and "units: INTEGER here, DOUBLE there" in line, line
    # AI Platform's resumePreviousJobId is the same warm start, not ignored.
    line = _rejected(team, no_tensorflow, args=["-m", "study=seed_mnist",
                                                "+study.trainingInput.hyperparameters.resumePreviousJobId=nowhere"])
    assert "'study.trainingInput.hyperparameters.resumePreviousJobId' = 'nowhere'" in line, line
    assert sorted(p.name for p in (team / "runs" / "studies").iterdir()) == ["other"]


def test_a_vertex_tuning_job_refuses_resume_previous_job_id():
    from orchestrator.config.compose import compose
    from orchestrator.config.validation import validate
    from orchestrator.errors import ConfigError

    cfg = compose(["backend=vertex", "vertex.project=tfscale-test", "vertex.region=us-central1",
                   "vertex.bucket=tfscale-test-bucket", "vertex.tuning=true", "study=seed_mnist",
                   "+study.trainingInput.hyperparameters.resumePreviousJobId=earlier"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == "study.trainingInput.hyperparameters.resumePreviousJobId" and err.value.value == "earlier"
    assert "tfscale -m" in str(err.value)
