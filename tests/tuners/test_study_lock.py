"""One driver per study: the store's driver lock, taken over from a dead driver, and no trial overwritten."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tuners import Study, StudyLockedError, StudyStoreError, TrialStatus

SPEC = {"metric": {"tag": "accuracy", "goal": "MAXIMIZE"}, "max_trials": 4, "max_parallel_trials": 2,
        "algorithm": "RANDOM_SEARCH",
        "parameters": [{"name": "lr", "type": "DOUBLE", "min": 1e-4, "max": 1.0, "scale": "log",
                        "key": "model.optimizer.learning_rate"}]}


def _driver(store, body: str = "") -> subprocess.Popen:
    """Another process driving the study in ``store``: it suggests 2 trials, prints them, then waits."""
    code = "\n".join([
        "import json, time",
        "from tuners import Study",
        f"study = Study({SPEC!r}, {str(store)!r})",
        "print(json.dumps([t.id for t in study.suggest(2)]), flush=True)",
        body,
        "time.sleep(120)",
    ])
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert json.loads(line) == [0, 1], line
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def test_a_second_driver_is_refused_with_the_holders_host_and_pid(tmp_path):
    first = _driver(tmp_path)
    try:
        with pytest.raises(StudyLockedError) as err:
            Study(SPEC, tmp_path)
        assert err.value.pid == first.pid and err.value.host == socket.gethostname()
        message = str(err.value)
        assert f"pid {first.pid}" in message and f"host {socket.gethostname()}" in message
        assert "kill" in message and "\n" not in message
        record = json.loads((tmp_path / "study.db.lock").read_text())
        assert record["pid"] == first.pid and abs(record["started_at"] - time.time()) < 60
    finally:
        _end(first)


def test_the_lock_of_a_killed_driver_is_taken_over_and_its_trials_rerun(tmp_path):
    first = _driver(tmp_path)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    study = Study(SPEC, tmp_path)
    assert study.previous_driver["pid"] == first.pid
    again = study.suggest(2)
    assert [t.id for t in again] == [0, 1]  # the dead driver's ACTIVE trials, not new ones
    for trial in again:
        study.complete(trial.id, 0.5)
    rest = study.suggest(2)
    assert [t.id for t in rest] == [2, 3]
    study.close()
    # A driver that closed the study leaves no previous holder behind.
    assert Study(SPEC, tmp_path).previous_driver is None


def test_a_trial_process_forked_by_the_driver_does_not_keep_the_study_locked(tmp_path):
    # The driver forks a child that outlives it (as a trial process could): the lock still dies with the driver.
    first = _driver(tmp_path, body="import os\nchild = os.fork()\nif child == 0: time.sleep(120)\n"
                                   "print(child, flush=True)")
    child = int(first.stdout.readline())
    try:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        os.kill(child, 0)  # still alive
        study = Study(SPEC, tmp_path)
        assert study.previous_driver["pid"] == first.pid
        study.close()
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_second_study_in_the_same_process_is_refused_until_the_first_closes(tmp_path):
    first = Study(SPEC, tmp_path)
    with pytest.raises(StudyLockedError, match=f"pid {os.getpid()}"):
        Study(SPEC, tmp_path / "study.db")
    first.close()
    second = Study(SPEC, tmp_path)
    assert second.previous_driver is None
    second.close()


def test_the_store_never_replaces_a_trial_another_writer_stored(tmp_path):
    # Two writers that skipped the lock: the second one's new trial 0 is refused, not written over the first's.
    a = Study(SPEC, tmp_path, lock=False)
    b = Study(SPEC, tmp_path, lock=False)
    (mine,) = a.suggest(1)
    with pytest.raises(StudyStoreError, match="trial 0 is already stored"):
        b.suggest(1)
    a.complete(mine.id, 0.7)
    stored = Study(SPEC, tmp_path).trial(0)
    assert stored.parameters == mine.parameters and stored.status is TrialStatus.COMPLETED
