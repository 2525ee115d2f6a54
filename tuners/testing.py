"""Conformance suites for designers and stopping rules, shipped so every implementation (here or in
plugins) runs them.

A test module subclasses :class:`BasicDesignerTestCase` and defines ``make(spec, seed)``, or
:class:`BasicStoppingRuleTestCase` and defines ``make(goal, min_trials, min_steps)``; pytest collects the
inherited ``test_*`` methods. Needs no pytest import itself.
"""

from __future__ import annotations

import math

import numpy as np

from tuners import Designer, Goal, ParameterType, StoppingRule, StudySpec, Trial, TrialStatus
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


# ------------------------------------------------------------------------------------ stopping rules
def curve(final: float, start: float, rate: float, steps: int, goal: Goal = Goal.MAXIMIZE) -> list[tuple[int, float]]:
    """A learning curve rising from ``start`` towards ``final`` (mirrored into a falling loss for MINIMIZE)."""
    values = [final - (final - start) * math.exp(-rate * s) for s in range(steps)]
    return [(s, v if goal is Goal.MAXIMIZE else 1.0 - v) for s, v in enumerate(values)]


def completed_curves(goal: Goal, n: int = 4, steps: int = 20) -> list[list[tuple[int, float]]]:
    """``n`` finished trials that reached about 0.9 accuracy (0.1 loss), slightly different each."""
    return [curve(0.9 - 0.01 * i, 0.5, 0.5, steps, goal) for i in range(n)]


class BasicStoppingRuleTestCase:
    """Behaviour every early stopping rule must show; subclasses set ``make(goal, min_trials, min_steps)``."""

    #: False for a rule that by design never stops a trial (it must then never stop one).
    stops_laggards = True

    def make(self, goal: Goal, min_trials: int, min_steps: int) -> StoppingRule:
        raise AssertionError("subclasses must define make()")

    def laggard(self, goal: Goal, steps: int) -> list[tuple[int, float]]:
        """A trial stuck at about 0.3 accuracy: clearly worse than every completed one."""
        return curve(0.3, 0.1, 0.8, steps, goal)

    def leader(self, goal: Goal, steps: int) -> list[tuple[int, float]]:
        """A trial ahead of every completed one at each step."""
        return curve(0.97, 0.6, 0.6, steps, goal)

    def test_is_a_stopping_rule_that_keeps_its_settings(self):
        rule = self.make(Goal.MINIMIZE, 3, 4)
        assert isinstance(rule, StoppingRule)
        assert rule.goal is Goal.MINIMIZE and rule.min_trials == 3 and rule.min_steps >= 4

    def test_never_stops_before_its_minimum_steps(self):
        for goal in Goal:
            rule = self.make(goal, 2, 4)
            completed = completed_curves(goal)
            for steps in range(rule.min_steps):
                decision = rule.should_stop(self.laggard(goal, steps), completed)
                assert not decision, (goal, steps, decision.reason)
                assert decision.reason

    def test_never_stops_before_enough_trials_completed(self):
        for goal in Goal:
            rule = self.make(goal, 3, 2)
            completed = completed_curves(goal, n=2) + [[]]  # a trial without measurements does not count
            decision = rule.should_stop(self.laggard(goal, 8), completed)
            assert not decision, (goal, decision.reason)
            assert decision.reason

    def test_stops_a_clearly_worse_trial(self):
        for goal in Goal:
            rule = self.make(goal, 3, 3)
            decision = rule.should_stop(self.laggard(goal, 8), completed_curves(goal))
            assert bool(decision) is self.stops_laggards, (goal, decision.reason)
            assert isinstance(decision.reason, str) and decision.reason

    def test_keeps_a_trial_ahead_of_the_completed_ones(self):
        for goal in Goal:
            rule = self.make(goal, 3, 3)
            decision = rule.should_stop(self.leader(goal, 8), completed_curves(goal))
            assert not decision, (goal, decision.reason)

    def test_same_inputs_same_decision(self):
        goal = Goal.MAXIMIZE
        completed = completed_curves(goal)
        current = self.laggard(goal, 8)
        snapshot = ([list(c) for c in completed], list(current))
        first = self.make(goal, 3, 3).should_stop(current, completed)
        again = [self.make(goal, 3, 3).should_stop(current, completed) for _ in range(3)]
        assert all((d.stop, d.reason) == (first.stop, first.reason) for d in again)
        # Decided from the curves alone: neither their order nor an earlier call changes the answer,
        # and the curves are left as they were.
        shuffled = completed[::-1]
        assert self.make(goal, 3, 3).should_stop(current, shuffled).stop == first.stop
        assert ([list(c) for c in completed], list(current)) == snapshot
