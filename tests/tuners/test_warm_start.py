"""Warm starts: the completed trials of an earlier study steer a new study's real designer."""
from __future__ import annotations

import math

import pytest

from tuners import Study, StudySpec, TrialStatus, WarmStartError, load_prior_trials

SPACE = [{"name": "lr", "type": "DOUBLE", "min": 1e-4, "max": 1e-1, "scale": "log", "key": "model.optimizer.learning_rate"},
         {"name": "units", "type": "INTEGER", "min": 16, "max": 256, "scale": "log", "key": "model.layers.1.units"}]
SPEC = {"metric": {"tag": "accuracy", "goal": "MAXIMIZE"}, "max_trials": 12, "max_parallel_trials": 1,
        "algorithm": "GAUSSIAN_PROCESS_BANDIT", "seed": 3, "parameters": SPACE}


def accuracy(p: dict) -> float:
    """A smooth synthetic objective: best near lr=5e-3, units=90."""
    a = math.log10(p["lr"]) + 2.3
    b = math.log2(p["units"]) - 6.5
    return 1 - 0.3 * a * a - 0.05 * b * b


def run(spec: dict, store=None, prior=()) -> list:
    """Run a study to its end on the synthetic objective; the objective of each trial in order."""
    study = Study(spec, store, prior_trials=prior)
    history = []
    while not study.is_done:
        for trial in study.suggest():
            history.append(accuracy(trial.parameters))
            study.complete(trial.id, history[-1])
    study.close()
    return history


def trials_to_reach(history: list, target: float) -> float:
    return next((i + 1 for i, v in enumerate(history) if v >= target), math.inf)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An earlier 12-trial study over the same space, and its best objective."""
    directory = tmp_path_factory.mktemp("source")
    return directory, max(run(SPEC, directory))


@pytest.mark.parametrize("algorithm", ["GAUSSIAN_PROCESS_BANDIT", "TPE"])
def test_a_warm_started_study_beats_a_cold_one_with_the_same_seed(source, algorithm):
    directory, best = source
    spec = {**SPEC, "algorithm": algorithm}
    prior = load_prior_trials(StudySpec.from_dict(spec), directory)
    assert len(prior.trials) == 12 and prior.outside == 0
    cold, warm = run(spec), run(spec, prior=prior.trials)
    if algorithm == "GAUSSIAN_PROCESS_BANDIT":
        # The GP models the earlier trials at once instead of spending its first trials on a space-filling design.
        assert trials_to_reach(warm, best) < trials_to_reach(cold, best), (best, cold, warm)
    else:
        # TPE samples around the earlier study's good trials instead of starting with random draws.
        assert sum(warm[:6]) > sum(cold[:6]), (cold, warm)


def test_earlier_trials_do_not_count_against_the_budget_nor_are_stored(source, tmp_path):
    directory, _ = source
    spec = {**SPEC, "max_trials": 3, "algorithm": "RANDOM_SEARCH"}
    prior = load_prior_trials(StudySpec.from_dict(spec), directory, source="earlier")
    assert prior.source == "earlier" and prior.path == str(directory / "study.db")
    study = Study(spec, tmp_path, prior_trials=prior.trials)
    ids = []
    while not study.is_done:
        for trial in study.suggest():
            ids.append(trial.id)
            study.complete(trial.id, accuracy(trial.parameters))
    assert ids == [0, 1, 2] and [t.id for t in study.trials] == [0, 1, 2]
    tried = {(round(t.parameters["lr"], 10), t.parameters["units"]) for t in prior.trials}
    assert not tried & {(round(t.parameters["lr"], 10), t.parameters["units"]) for t in study.trials}
    study.close()
    assert len(Study(spec, tmp_path).trials) == 3


def test_trials_outside_the_new_ranges_are_left_out(source):
    directory, _ = source
    narrow = {**SPEC, "parameters": [{**SPACE[0], "min": 1e-3, "max": 1e-2}, SPACE[1]]}
    prior = load_prior_trials(StudySpec.from_dict(narrow), directory)
    inside = [t for t in prior.trials if 1e-3 <= t.parameters["lr"] <= 1e-2]
    assert prior.trials and len(inside) == len(prior.trials) and prior.outside == 12 - len(prior.trials)
    assert all(t.status is TrialStatus.COMPLETED for t in prior.trials)


def test_only_completed_trials_are_used(tmp_path):
    study = Study({**SPEC, "max_parallel_trials": 3, "max_trials": 3}, tmp_path)
    a, b, c = study.suggest(3)
    study.complete(a.id, 0.9)
    study.fail(b.id, "boom")
    study.close()  # c stays ACTIVE: the earlier driver died with it
    prior = load_prior_trials(StudySpec.from_dict(SPEC), tmp_path)
    assert [t.parameters for t in prior.trials] == [a.parameters]


@pytest.mark.parametrize("change,words", [
    ({"parameters": [SPACE[0], {**SPACE[1], "type": "DOUBLE"}]}, ["units: DOUBLE here, INTEGER there"]),
    ({"parameters": [SPACE[0]]}, ["units: only in the earlier study"]),
    ({"parameters": [*SPACE, {"name": "dropout", "type": "DOUBLE", "min": 0.0, "max": 0.5}]},
     ["dropout: only in this study"]),
    ({"parameters": [SPACE[0], {**SPACE[1], "key": "model.layers.2.units"}]},
     ["units: sets model.layers.2.units here, model.layers.1.units there"]),
    ({"metric": {"tag": "accuracy", "goal": "MINIMIZE"}}, ["metrics: accuracy MINIMIZE here, accuracy MAXIMIZE there"]),
])
def test_an_incompatible_earlier_study_names_every_difference(source, change, words):
    directory, _ = source
    with pytest.raises(WarmStartError) as err:
        load_prior_trials(StudySpec.from_dict({**SPEC, **change}), directory, source="earlier")
    message = str(err.value)
    assert message.startswith("'earlier'") and "searched another space" in message
    for word in words:
        assert word in message, message


def test_a_missing_earlier_study_is_named(tmp_path):
    with pytest.raises(WarmStartError, match=r"'gone': no study store at .*gone/study.db"):
        load_prior_trials(StudySpec.from_dict(SPEC), tmp_path / "gone", source="gone")
    assert not (tmp_path / "gone").exists()  # reading never creates a store
