"""Conformance suite for designers, shipped so every implementation (here or in plugins) runs it.

A test module subclasses :class:`BasicDesignerTestCase` and defines ``make(spec, seed)``; pytest collects
the inherited ``test_*`` methods. Needs no pytest import itself.
"""

from __future__ import annotations

import math

import numpy as np

from tuners import Designer, ParameterType, StudySpec, Trial, TrialStatus
from tuners.search_space import point_key

MIXED = {
    "metric": {"tag": "score", "goal": "MAXIMIZE"},
    "max_trials": 40,
    "parameters": [
        {"name": "lr", "type": "DOUBLE", "min": 1e-4, "max": 1.0, "scale": "log", "key": "model.lr"},
        {"name": "units", "type": "INTEGER", "min": 8, "max": 64, "key": "model.units"},
        {"name": "batch", "type": "DISCRETE", "values": [16, 32, 64], "key": "data.batch"},
        {"name": "optimizer", "type": "CATEGORICAL", "values": ["sgd", "adam", "rmsprop"], "key": "opt.name",
         "children": [{"name": "momentum", "type": "DOUBLE", "min": 0.0, "max": 0.99, "when": ["sgd"],
                       "key": "opt.momentum"}]},
    ],
}


def score(values: dict) -> float:
    """A smooth objective over MIXED with its optimum inside the box."""
    s = -(math.log10(values["lr"]) + 2) ** 2 - ((values["units"] - 40) / 20) ** 2
    s += {"sgd": 0.0, "adam": 0.5, "rmsprop": 0.2}[values["optimizer"]]
    return s + 0.1 * values.get("momentum", 0.0) - abs(values["batch"] - 32) / 64


def run(designer: Designer, n: int, batch: int = 1, fail_every: int = 0) -> list[Trial]:
    """Drive ``designer`` for ``n`` trials; every ``fail_every``-th trial fails."""
    trials: list[Trial] = []
    while len(trials) < n:
        suggestions = designer.suggest(min(batch, n - len(trials)))
        if not suggestions:
            break
        new = []
        for values in suggestions:
            trial = Trial(len(trials) + len(new), dict(values))
            if fail_every and (trial.id + 1) % fail_every == 0:
                trial.status, trial.error = TrialStatus.FAILED, "boom"
            else:
                trial.status, trial.objective = TrialStatus.COMPLETED, score(values)
            new.append(trial)
        trials += new
        designer.update(new, [])
    return trials


class BasicDesignerTestCase:
    """Behaviour every designer must show; subclasses set ``make(spec, seed)``."""

    #: Designers that enumerate a finite set (grid) produce fewer distinct points.
    enumerates = False

    def make(self, spec: StudySpec, seed: int) -> Designer:
        raise AssertionError("subclasses must define make()")

    def spec(self, **changes) -> StudySpec:
        return StudySpec.from_dict({**MIXED, **changes})

    def test_values_within_bounds_and_types(self):
        spec = self.spec()
        for trial in run(self.make(spec, 0), 14, batch=2):
            spec.validate_parameters(trial.parameters)
            for name, value in trial.parameters.items():
                param = spec.parameter(name)
                if param.type is ParameterType.INTEGER:
                    assert isinstance(value, int) and not isinstance(value, bool)
                elif param.type is ParameterType.DOUBLE:
                    assert isinstance(value, float)
                elif param.type is ParameterType.CATEGORICAL:
                    assert value in param.values
                else:
                    assert value in param.values

    def test_conditional_child_only_when_active(self):
        trials = run(self.make(self.spec(), 1), 14, batch=3)
        assert any(t.parameters["optimizer"] == "sgd" for t in trials) or self.enumerates
        for t in trials:
            assert ("momentum" in t.parameters) == (t.parameters["optimizer"] == "sgd")

    def test_log_scale_concentrates_in_low_decades(self):
        spec = StudySpec.from_dict({"metric": {"tag": "y"}, "max_trials": 16, "parameters": [
            {"name": "lr", "type": "DOUBLE", "min": 1e-4, "max": 1.0, "scale": "log"}]})
        values = [s["lr"] for s in self.make(spec, 3).suggest(16)]
        assert len(values) >= 4
        # Uniform sampling would put the median near 0.5; log-uniform near 0.01.
        assert float(np.median(values)) < 0.05
        assert min(values) < 1e-3

    def test_reproducible_with_seed(self):
        a = [t.parameters for t in run(self.make(self.spec(), 7), 12, batch=2)]
        b = [t.parameters for t in run(self.make(self.spec(), 7), 12, batch=2)]
        assert a == b

    def test_batch_is_distinct(self):
        designer = self.make(self.spec(), 2)
        run(designer, 6)
        batch = designer.suggest(5)
        assert len(batch) == 5
        assert len({point_key(v) for v in batch}) == 5

    def test_failed_trials_are_not_resuggested(self):
        designer = self.make(self.spec(), 4)
        trials = run(designer, 14, fail_every=2)
        failed = {point_key(t.parameters) for t in trials if t.status is TrialStatus.FAILED}
        assert failed
        later = designer.suggest(4)
        assert later and not failed & {point_key(v) for v in later}
        assert len({point_key(t.parameters) for t in trials}) == len(trials)

    def test_small_discrete_space_is_exhausted_not_repeated(self):
        spec = StudySpec.from_dict({"metric": {"tag": "y"}, "max_trials": 10, "parameters": [
            {"name": "c", "type": "CATEGORICAL", "values": ["a", "b", "c"]}]})
        designer = self.make(spec, 0)
        seen = []
        for i in range(3):
            (values,) = designer.suggest(1)
            seen.append(values["c"])
            designer.update([Trial(i, values, TrialStatus.COMPLETED, objective=float(i))], [])
        assert sorted(seen) == ["a", "b", "c"]
        assert designer.suggest(1) == []
