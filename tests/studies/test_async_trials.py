"""Studies keep their slots busy: trials start as soon as a slot frees, from warm processes that survive crashes.

Each test runs a real ``tfscale -m`` driver on a small study kept in its own config folder (``-cd``), and reads
what a user would: ``study.csv`` with each trial's start and end time, the trial directories, and the
processes left on the machine.
"""
from __future__ import annotations

import csv
import os
import textwrap
from pathlib import Path

import pytest

from tfscale_testing import run_tfscale, tfscale_env

CHEAP = ["trainer.verbose=0", "trainer.tensorboard=false", "export.enabled=false"]


def _study(tmp_path: Path, name: str, body: str) -> Path:
    """A study YAML in the user's config folder ``tmp_path/conf/study``; the folder."""
    conf = tmp_path / "conf"
    (conf / "study").mkdir(parents=True, exist_ok=True)
    header = textwrap.dedent(f"""\
        # @package _global_
        defaults:
          - override /hydra/sweeper: tfscale
          - override /hydra/launcher: tfscale_processes
        hydra:
          sweep:
            dir: ${{runs_dir}}/studies/{name}
            subdir: trial_${{hydra.job.num}}
        study:
          name: {name}
        """)
    (conf / "study" / f"{name}.yaml").write_text(header + textwrap.indent(textwrap.dedent(body), "  "))
    return conf


def _rows(sweep_dir: Path) -> list:
    with open(sweep_dir / "study.csv", newline="") as f:
        return list(csv.DictReader(f))


def idle_slot_seconds(rows: list, slots: int) -> float:
    """Slot-seconds left idle while trials were still to start: the integral of (slots - running trials)
    from the first trial's start to the last trial's start."""
    spans = [(float(r["started_at"]), float(r["ended_at"])) for r in rows if r["started_at"]]
    first, last_start = min(s for s, _ in spans), max(s for s, _ in spans)
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    idle, running, at = 0.0, 0, first
    for time_, change in events:
        if time_ > last_start:
            break
        if time_ > at:
            idle += max(0, slots - running) * (time_ - at)
            at = time_
        running += change
    return idle


def _processes_in(directory: Path) -> list:
    """Processes (other than this one) whose working directory is ``directory`` or below it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == str(directory) or cwd.startswith(str(directory) + "/"):
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_a_trial_config_is_what_hydra_composes(tmp_path):
    """The driver composes a study's shared overrides once and applies each trial's to a copy: the result is
    the config Hydra composes from scratch, and a trial that picks a config group is composed by Hydra."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import HydraContext, RunMode
    from omegaconf import OmegaConf

    from orchestrator.config.compose import CONF_DIR
    from orchestrator.config.schema import register_configs
    from orchestrator.launch.hydra_launchers import JobComposer, compose_job

    register_configs()
    base = ["study=digits_lr_units", "trainer.epochs=2", f"hydra.sweep.dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", base, RunMode.MULTIRUN)
        context = HydraContext(config_loader=loader, callbacks=None)
        composer = JobComposer(context, master, base)
        for num, trial in enumerate([["model.optimizer.learning_rate=0.013", "model.layers.1.units=59"],
                                     ["model.layers.1.units=17", "+model.layers.1.use_bias=false"],
                                     ["model=cnn"]]):
            fast, full = composer.compose(base + trial, num), compose_job(context, master, base + trial, num)
            assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(full), trial
            assert fast.hydra.job.num == num and list(fast.hydra.overrides.task)[-len(trial):] == trial


@pytest.mark.slow
def test_trials_of_very_different_lengths_keep_both_slots_busy(tmp_path):
    conf = _study(tmp_path, "epochs_1_to_8", """\
        metric: {tag: accuracy, goal: MAXIMIZE}
        max_trials: 6
        max_parallel_trials: 2
        algorithm: RANDOM_SEARCH
        seed: 1
        parameters:
          - {name: epochs, type: INTEGER, min: 1, max: 8, key: trainer.epochs}
        """)
    result = run_tfscale(["-m", "-cd", str(conf), "study=epochs_1_to_8", "model.layers.1.units=16",
                          "model.layers.2.units=16", *CHEAP], tmp_path, timeout=600)
    assert result.returncode == 0, result.output
    rows = _rows(tmp_path / "runs" / "studies" / "epochs_1_to_8")
    assert [r["status"] for r in rows] == ["COMPLETED"] * 6, rows
    assert len({r["epochs"] for r in rows}) > 1, rows  # lengths differ
    starts = [float(r["started_at"]) for r in rows]
    ends = [float(r["ended_at"]) for r in rows]
    assert all(s < e for s, e in zip(starts, ends))
    wall = max(ends) - min(starts)
    idle = idle_slot_seconds(rows, slots=2)
    # Lock-step batches of 2 would leave a slot idle for the difference of each pair's lengths; here a slot
    # is idle only between a trial's end and the next one's start (the driver records one and starts the other).
    assert idle <= 0.10 * wall, f"idle {idle:.2f} slot-s in a {wall:.2f} s study: {rows}"
    # Each trial trained in a task process forked with TensorFlow imported, none in a freshly spawned one: the
    # driver's own work (loading the study's data once for every trial) leaves the trials' environment alone.
    logs = [Path(r["log_path"]).read_text() for r in rows]
    assert not [log for log in logs if "instead of the warm one" in log], logs
    assert not _processes_in(tmp_path), _processes_in(tmp_path)


@pytest.mark.slow
def test_a_trial_stopped_early_frees_its_slot_within_a_second(tmp_path):
    # Trial 0 learns and completes; trials 1 and 2 diverge (learning rates of 500 and 1000) and the median rule
    # stops them after an epoch.
    conf = _study(tmp_path, "stops", """\
        metric: {tag: accuracy, goal: MAXIMIZE}
        max_trials: 3
        max_parallel_trials: 1
        algorithm: GRID_SEARCH
        early_stopping: {rule: median, min_trials: 1, min_steps: 1}
        parameters:
          - {name: learning_rate, type: DISCRETE, values: [0.01, 500.0, 1000.0], key: model.optimizer.learning_rate}
        """)
    # Epochs long enough (the whole digits set) that a trial cannot run all 60 in the second a stop may take.
    result = run_tfscale(["-m", "-cd", str(conf), "study=stops", "trainer.epochs=60", *CHEAP],
                         tmp_path, timeout=600)
    assert result.returncode == 0, result.output
    sweep_dir = tmp_path / "runs" / "studies" / "stops"
    rows = _rows(sweep_dir)
    assert [r["status"] for r in rows] == ["COMPLETED", "STOPPED", "STOPPED"], rows
    for row, after in zip(rows[1:], rows[2:] + [None]):
        trial = int(row["trial_id"])
        asked = (sweep_dir / f"trial_{trial}" / ".tfscale_stop").stat().st_mtime
        freed = float(row["ended_at"])
        assert freed - asked <= 1.0, f"trial {trial}: slot freed {freed - asked:.2f} s after the stop request"
        if after is not None:  # the freed slot runs the next trial at once
            assert float(after["started_at"]) - asked <= 1.5, (row, after)
        epochs = (sweep_dir / f"trial_{trial}" / "epochs.jsonl").read_text().splitlines()
        assert len(epochs) < 60, f"trial {trial} ran to its end"
    assert not _processes_in(tmp_path), _processes_in(tmp_path)


CRASHING_LAYER = '''
import os


def crash(**settings):
    """A layer whose construction kills the task process outright, as a segfaulting extension would."""
    os._exit(3)
'''


@pytest.mark.slow
def test_a_crashing_trial_does_not_take_the_pool_down(tmp_path):
    # The crashing trials come first: the two after them run on the same warm processes.
    (tmp_path / "crashing_layer.py").write_text(CRASHING_LAYER)
    conf = _study(tmp_path, "crashes", """\
        metric: {tag: accuracy, goal: MAXIMIZE}
        max_trials: 4
        max_parallel_trials: 2
        max_failed_trials: 2
        algorithm: GRID_SEARCH
        parameters:
          - {name: layer, type: CATEGORICAL, values: [crashing_layer.crash, tf_keras.layers.Dense],
             key: model.layers.1._target_}
          - {name: units, type: DISCRETE, values: [16, 32], key: model.layers.1.units}
        """)
    result = run_tfscale(["-m", "-cd", str(conf), "study=crashes", "trainer.epochs=2", "data.limit=300",
                          "model.allowed_modules=[tf_keras,crashing_layer]", *CHEAP],
                         tmp_path, timeout=600, env=tfscale_env(PYTHONPATH=str(tmp_path)))
    assert result.returncode == 0, result.output
    rows = _rows(tmp_path / "runs" / "studies" / "crashes")
    status = {(r["layer"], r["units"]): r["status"] for r in rows}
    assert status == {("tf_keras.layers.Dense", "16"): "COMPLETED", ("tf_keras.layers.Dense", "32"): "COMPLETED",
                      ("crashing_layer.crash", "16"): "FAILED", ("crashing_layer.crash", "32"): "FAILED"}, rows
    for row in rows:
        if row["status"] == "FAILED":
            assert "exited with code 3" in row["error"], row["error"]
    assert not _processes_in(tmp_path), _processes_in(tmp_path)


@pytest.mark.slow
def test_a_trial_whose_topology_sets_import_time_variables_trains_in_a_fresh_process(tmp_path):
    # topology.gpus=[] sets CUDA_VISIBLE_DEVICES=-1, which TensorFlow reads when it is imported: the warm
    # process imported it without, so the trial spawns its task process with the variable in place.
    conf = _study(tmp_path, "fresh", """\
        metric: {tag: accuracy, goal: MAXIMIZE}
        max_trials: 1
        algorithm: RANDOM_SEARCH
        parameters:
          - {name: units, type: INTEGER, min: 16, max: 32, key: model.layers.1.units}
        """)
    result = run_tfscale(["-m", "-cd", str(conf), "study=fresh", "topology.gpus=[]", "trainer.epochs=1",
                          "data.limit=300", *CHEAP], tmp_path, timeout=600)
    assert result.returncode == 0, result.output
    trial = tmp_path / "runs" / "studies" / "fresh" / "trial_0"
    assert [r["status"] for r in _rows(trial.parent)] == ["COMPLETED"]
    log = (trial / "tfscale.log").read_text()
    assert "spawned task process instead of the warm one: CUDA_VISIBLE_DEVICES=-1" in log, log
    assert not _processes_in(tmp_path), _processes_in(tmp_path)
