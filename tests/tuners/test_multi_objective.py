"""Multi-objective studies: the spec's metrics, Pareto dominance, NSGA2, and the results of a study."""
from __future__ import annotations

import csv
import json
import math
import sqlite3

import numpy as np
import pytest

from tuners import (
    GaussianProcessBandit,
    NSGA2Designer,
    RandomDesigner,
    Study,
    StudySpec,
    StudySpecError,
    Trial,
    TrialStatus,
    write_results,
)
from tuners.pareto import crowding_distance, hypervolume, maximised, non_dominated_sort, pareto_front
from tuners.study_spec import Algorithm
from tuners.testing import BasicDesignerTestCase

PARAMS = [{"name": f"x{i}", "type": "DOUBLE", "min": 0.0, "max": 1.0, "key": f"model.x{i}"} for i in range(3)]
TWO = {"metrics": [{"tag": "f1", "goal": "MINIMIZE"}, {"tag": "f2", "goal": "MINIMIZE"}], "max_trials": 60,
       "parameters": PARAMS}


def zdt1(values: dict) -> dict:
    """ZDT1: the front is f2 = 1 - sqrt(f1) where x1 = x2 = 0; both minimised."""
    x = [values[f"x{i}"] for i in range(3)]
    g = 1.0 + 9.0 * sum(x[1:]) / 2.0
    return {"f1": x[0], "f2": g * (1.0 - math.sqrt(x[0] / g))}


def trial(i: int, status: TrialStatus = TrialStatus.COMPLETED, **values: float) -> Trial:
    t = Trial(i, {"x0": i / 10}, status, config_keys={"x0": "model.x0"})
    t.objectives = dict(values)
    t.objective = next(iter(values.values()), None)
    return t


def drive(designer, n: int, batch: int = 2) -> list[Trial]:
    trials: list[Trial] = []
    while len(trials) < n:
        new = []
        for values in designer.suggest(batch):
            t = Trial(len(trials) + len(new), dict(values), TrialStatus.COMPLETED)
            t.objectives = zdt1(values)
            t.objective = t.objectives["f1"]
            new.append(t)
        if not new:
            break
        trials += new
        designer.update(new, [])
    return trials


# ------------------------------------------------------------------------------------------ the spec
def test_native_metrics_give_a_multi_objective_spec_that_round_trips():
    spec = StudySpec.from_dict(TWO)
    assert spec.is_multi_objective and [m.tag for m in spec.metrics] == ["f1", "f2"]
    assert spec.algorithm is Algorithm.NSGA2  # ALGORITHM_UNSPECIFIED resolves to it with several metrics
    assert StudySpec.from_dict(spec.to_dict()) == spec
    vertex = spec.to_vertex_dict()
    assert [m["metricId"] for m in vertex["metrics"]] == ["f1", "f2"]
    assert StudySpec.from_vertex(vertex).metrics == spec.metrics
    assert StudySpec.dialect(TWO) == "native" and StudySpec.dialect(vertex) == "vertex"


def test_a_single_metric_spec_is_unchanged():
    one = StudySpec.from_dict({"metric": {"tag": "accuracy"}, "parameters": PARAMS})
    listed = StudySpec.from_dict({"metrics": [{"tag": "accuracy"}], "parameters": PARAMS})
    assert one == listed and not one.is_multi_objective
    assert one.metric.tag == "accuracy" and one.algorithm.resolved() is Algorithm.GAUSSIAN_PROCESS_BANDIT
    assert "metric" in one.to_dict() and "metrics" not in one.to_dict()  # stored studies still match


@pytest.mark.parametrize("change,message", [
    ({"early_stopping": "median"}, r"early_stopping.rule: median compares trials on one metric.*rule: none"),
    ({"algorithm": "GAUSSIAN_PROCESS_BANDIT"}, r"GAUSSIAN_PROCESS_BANDIT optimises one metric.*NSGA2"),
    ({"metrics": [{"tag": "f1"}, {"tag": "f1", "goal": "MINIMIZE"}]}, r"metrics\[1\]: tag 'f1' is also metrics\[0\]"),
    ({"metrics": [{"tag": "f1"}, {"tag": "f2", "goal": "LOWER"}]}, r"metrics\[1\]: goal: unknown value 'LOWER'"),
    ({"metric": {"tag": "f1"}}, r"metric and metrics are both set"),
    ({"metrics": []}, r"metrics: must be a non-empty list"),
])
def test_invalid_multi_objective_specs_name_the_field_and_the_fix(change, message):
    with pytest.raises(StudySpecError, match=message):
        StudySpec.from_dict({**TWO, **change})


# ------------------------------------------------------------------------------------ Pareto dominance
def test_non_dominated_sort_peels_fronts_and_keeps_ties():
    points = np.array([[3, 1], [1, 3], [2, 2], [2, 2], [1, 1], [0, 0], [3, 0]])
    assert [sorted(f) for f in non_dominated_sort(points)] == [[0, 1, 2, 3], [4, 6], [5]]


def test_crowding_distance_favours_the_extremes_and_sparse_points():
    d = crowding_distance(np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0], [3.5, 0.5]]))
    assert math.isinf(d[0]) and math.isinf(d[3])
    assert d[1] > d[4]  # (1, 3) has far neighbours; (3.5, 0.5) sits between two close ones


def test_pareto_front_follows_each_goal_and_skips_unfinished_trials():
    spec = StudySpec.from_dict({"metrics": [{"tag": "acc"}, {"tag": "bytes", "goal": "MINIMIZE"}],
                                "parameters": PARAMS[:1]})
    trials = [trial(0, acc=0.90, bytes=100), trial(1, acc=0.95, bytes=300), trial(2, acc=0.85, bytes=200),
              trial(3, acc=0.97, bytes=900), trial(4, TrialStatus.FAILED), trial(5, TrialStatus.STOPPED, acc=0.99,
                                                                                     bytes=1),
              trial(6, acc=0.90, bytes=100)]
    front = pareto_front(trials, spec.metrics)
    assert [t.id for t in front] == [3, 1, 0, 6]  # 2 is beaten by 0; best accuracy first; equal points both stay
    assert maximised(front, spec.metrics).tolist()[0] == [0.97, -900]


def test_hypervolume_of_a_two_point_front():
    assert hypervolume(np.array([[1.0, 3.0], [3.0, 1.0]]), [0.0, 0.0]) == pytest.approx(3 + 3 - 1)
    assert hypervolume(np.array([[-1.0, 5.0]]), [0.0, 0.0]) == 0.0


# ---------------------------------------------------------------------------------------------- NSGA2
class TestNSGA2(BasicDesignerTestCase):
    def make(self, spec, seed):
        return NSGA2Designer(spec, seed)


def test_nsga2_finds_a_better_front_than_random_search():
    spec = StudySpec.from_dict(TWO)
    ref = [-1.1, -6.0]  # both metrics are minimised: maximised points are negative
    wins = 0
    for seed in range(4):
        ours = hypervolume(maximised(pareto_front(drive(NSGA2Designer(spec, seed), 60), spec.metrics), spec.metrics), ref)
        rnd = hypervolume(maximised(pareto_front(drive(RandomDesigner(spec, seed), 60), spec.metrics), spec.metrics), ref)
        wins += ours > rnd
    assert wins == 4


def test_single_metric_designers_refuse_several_metrics():
    with pytest.raises(ValueError, match="optimises one metric.*NSGA2"):
        GaussianProcessBandit(StudySpec.from_dict(TWO))


# ---------------------------------------------------------------------------------------------- study
def test_study_records_every_metric_and_resumes_them_from_its_store(tmp_path):
    spec = StudySpec.from_dict({**TWO, "max_trials": 8, "max_parallel_trials": 2})
    study = Study(spec, tmp_path)
    while not study.is_done:
        for t in study.suggest():
            study.complete(t.id, zdt1(t.parameters), log_path=str(tmp_path / f"trial_{t.id}" / "trial.log"))
    assert study.best_trial is None  # no single best trial: the Pareto set is the result
    front = study.pareto_trials
    assert front and all(set(t.objectives) == {"f1", "f2"} for t in front)
    study.close()
    again = Study(spec, tmp_path)
    assert again.resumed and [t.objectives for t in again.pareto_trials] == [t.objectives for t in front]


def test_a_missing_or_non_finite_metric_fails_the_trial():
    study = Study({**TWO, "max_trials": 3})
    first = study.suggest()[0]
    assert study.complete(first.id, {"f1": 0.5}).status is TrialStatus.FAILED
    assert "objective 'f2' is None" in study.trial(first.id).error
    second = study.suggest()[0]
    assert study.complete(second.id, {"f1": 0.5, "f2": float("nan")}).status is TrialStatus.FAILED
    third = study.suggest()[0]
    with pytest.raises(ValueError, match="pass a mapping from each tag"):
        study.complete(third.id, 0.5)


def test_a_store_written_before_per_metric_values_still_opens(tmp_path):
    spec = StudySpec.from_dict({"metric": {"tag": "acc"}, "parameters": PARAMS[:1], "max_trials": 2})
    db = tmp_path / "study.db"
    with sqlite3.connect(db) as conn:  # the schema of stores made before multi-objective studies
        conn.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE trials (id INTEGER PRIMARY KEY, parameters TEXT NOT NULL, status TEXT NOT NULL,
                objective REAL, measurements TEXT NOT NULL DEFAULT '[]', error TEXT, log_path TEXT,
                created_at REAL NOT NULL, updated_at REAL NOT NULL);""")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO meta VALUES ('spec', ?)", (json.dumps(spec.to_dict(), sort_keys=True),))
        conn.execute("INSERT INTO trials VALUES (0, '{\"x0\": 0.5}', 'COMPLETED', 0.9, '[]', NULL, NULL, 1.0, 1.0)")
    study = Study(spec, db)
    assert study.resumed and study.best_trial.objective == 0.9
    assert [t.id for t in study.pareto_trials] == [0]


def test_results_list_the_pareto_set_with_overrides_and_run_directories(tmp_path):
    spec = StudySpec.from_dict({**TWO, "max_trials": 6, "max_parallel_trials": 2})
    study = Study(spec)
    while not study.is_done:
        for t in study.suggest():
            study.complete(t.id, zdt1(t.parameters), log_path=str(tmp_path / f"trial_{t.id}" / "trial.log"))
    paths = write_results(study, tmp_path, plots=False, tensorboard=False)
    with open(paths["pareto"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial_id"]) for r in rows] == [t.id for t in study.pareto_trials]
    for row in rows:
        assert row["overrides"].split() == study.trial(int(row["trial_id"])).overrides()
        assert row["run_dir"] == str(tmp_path / f"trial_{row['trial_id']}")
        assert float(row["f1"]) == study.trial(int(row["trial_id"])).objectives["f1"]
    with open(paths["csv"], newline="") as f:
        assert {"f1", "f2"} <= set(next(csv.DictReader(f)))
    markdown = paths["markdown"].read_text()
    assert f"## Pareto set: {len(rows)} trials (minimize f1, minimize f2)" in markdown
