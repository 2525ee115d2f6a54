import sqlite3

import pytest

from tuners import Study, StudyFailedError, StudySpec, StudyStore, StudyStoreError, TrialStatus

SPEC = {"metric": {"tag": "accuracy", "goal": "MAXIMIZE"}, "max_trials": 6, "max_parallel_trials": 2,
        "algorithm": "RANDOM_SEARCH", "max_failed_trials": 1,
        "parameters": [{"name": "lr", "type": "DOUBLE", "min": 1e-4, "max": 1.0, "scale": "log",
                        "key": "model.optimizer.learning_rate"},
                       {"name": "units", "type": "INTEGER", "min": 8, "max": 64, "key": "model.units"}]}


def test_ask_tell_respects_parallelism_budget_and_best():
    study = Study(StudySpec.from_dict(SPEC))
    first = study.suggest(5)
    assert len(first) == 2 and study.suggest() == []
    assert first[0].overrides()[0].startswith("model.optimizer.learning_rate=")
    study.complete(first[0].id, 0.7)
    study.complete(first[1].id, 0.9)
    ids = [t.id for t in first]
    while not study.is_done:
        for t in study.suggest():
            ids.append(t.id)
            study.complete(t.id, 0.1 * t.id)
    assert ids == list(range(6))
    assert study.best_trial.id == 1 and study.best_trial.objective == 0.9
    with pytest.raises(ValueError, match="already COMPLETED"):
        study.complete(1, 0.5)


def test_failures_beyond_budget_raise_with_count_and_errors():
    study = Study(SPEC)
    a, b = study.suggest(2)
    study.fail(a.id, "Traceback...\nValueError: bad lr", log_path="/tmp/t0.log")
    with pytest.raises(StudyFailedError) as err:
        study.fail(b.id, "OOM")
    message = str(err.value)
    assert "2 of 2 trials failed, more than max_failed_trials=1" in message
    assert "ValueError: bad lr" in message and "OOM" in message and "/tmp/t0.log" in message
    assert err.value.failed_count == 2 and study.is_done


def test_nan_objective_counts_as_failure():
    study = Study(SPEC)
    (t, _) = study.suggest(2)
    study.complete(t.id, float("nan"))
    assert study.trial(t.id).status is TrialStatus.FAILED and "nan" in study.trial(t.id).error


def test_resume_after_driver_dies(tmp_path):
    study = Study(SPEC, tmp_path)
    done = []
    for _ in range(2):
        for t in study.suggest():
            done.append(t)
    for t in study.suggest():
        pass
    # three completed, one left ACTIVE when the driver "dies"
    trials = study.suggest(2)  # nothing: slots full
    assert trials == []
    running = study.running
    study.complete(running[0].id, 0.5)
    study.complete(running[1].id, 0.6)
    (t2, t3) = study.suggest(2)
    study.complete(t2.id, 0.7)
    interrupted = t3
    del study  # no close(): a crash

    resumed = Study(SPEC, tmp_path / "study.db")
    assert resumed.resumed
    statuses = {t.id: t.status for t in resumed.trials}
    assert list(statuses.values()).count(TrialStatus.COMPLETED) == 3
    assert statuses[interrupted.id] is TrialStatus.ACTIVE
    again = resumed.suggest(2)
    assert again[0].id == interrupted.id and again[0].parameters == interrupted.parameters
    assert again[1].id == 4
    for t in again:
        resumed.complete(t.id, 0.1)
    rest = resumed.suggest(5)
    assert [t.id for t in rest] == [5]
    resumed.complete(5, 0.2)
    assert resumed.is_done
    ids = [t.id for t in resumed.trials]
    assert ids == list(range(6)) and len(set(ids)) == 6
    rows = sqlite3.connect(tmp_path / "study.db").execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM trials").fetchone()
    assert rows == (6, 6)


def test_store_rejects_a_different_spec(tmp_path):
    Study(SPEC, f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(StudyStoreError, match=r"max_trials: stored 6, given 9.*new sweep directory"):
        Study({**SPEC, "max_trials": 9}, StudyStore(tmp_path / "s.db"))


def test_measurements_added_together_decide_as_one_at_a_time_in_one_store_write(tmp_path):
    spec = {**SPEC, "max_trials": 6, "max_parallel_trials": 6, "max_failed_trials": None,
            "early_stopping": {"rule": "median", "min_trials": 2, "min_steps": 2}}
    study = Study(spec, store=tmp_path)
    trials = study.suggest(6)
    for t in trials[:3]:
        study.complete(t.id, None, measurements=[(0, 0.5), (1, 0.7), (2, 0.9)])
    writes = []
    save = study.store.save_trial
    study.store.save_trial = lambda trial: (writes.append(trial.id), save(trial))[1]
    slow, good = trials[3], trials[4]
    decision = study.add_measurements(slow.id, [(0, 0.1), (1, 0.2), (2, 0.3)])
    assert decision and "median" in decision.reason  # decided at step 1, as one at a time would
    assert writes == [slow.id]
    assert not study.add_measurements(good.id, [(0, 0.8), (1, 0.9)])
    assert not study.add_measurements(good.id, [])
    study.close()
    assert [m.step for m in Study(spec, store=tmp_path).trial(slow.id).measurements] == [0, 1, 2]  # all kept


def test_store_url_forms(tmp_path):
    assert StudyStore.resolve(tmp_path) == str(tmp_path / "study.db")
    assert StudyStore.resolve("sqlite:////abs/x.db") == "/abs/x.db"
    assert StudyStore.resolve("sqlite:///rel/x.db") == "rel/x.db"
    with pytest.raises(StudyStoreError, match="only sqlite"):
        StudyStore("postgresql://host/db")


def test_measurements_and_median_early_stopping():
    spec = {**SPEC, "max_trials": 6, "max_parallel_trials": 6, "max_failed_trials": None,
            "early_stopping": {"rule": "median", "min_trials": 2, "min_steps": 2}}
    study = Study(spec)
    trials = study.suggest(6)
    for t in trials[:3]:
        study.complete(t.id, None, measurements=[(0, 0.5), (1, 0.7), (2, 0.9)])
    assert study.trial(trials[0].id).objective == 0.9  # best measurement
    slow = trials[3]
    assert not study.add_measurement(slow.id, 0, 0.1)  # below min_steps
    decision = study.add_measurement(slow.id, 1, 0.2)
    assert decision and "median" in decision.reason
    study.stop(slow.id)
    assert study.trial(slow.id).status is TrialStatus.STOPPED and study.trial(slow.id).objective == 0.2
    good = trials[4]
    study.add_measurement(good.id, 0, 0.8)
    assert not study.add_measurement(good.id, 1, 0.9)
