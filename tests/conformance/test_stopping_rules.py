"""Every early stopping rule runs the shipped conformance suite (:class:`tuners.testing.BasicStoppingRuleTestCase`)."""
from __future__ import annotations

from tuners import (DecayCurveStoppingRule, EarlyStoppingRule, EarlyStoppingSpec, Goal, MedianStoppingRule, NoStoppingRule,
                    make_stopping_rule)
from tuners.testing import BasicStoppingRuleTestCase


class TestMedian(BasicStoppingRuleTestCase):
    def make(self, goal, min_trials, min_steps):
        return MedianStoppingRule(goal, min_trials=min_trials, min_steps=min_steps)


class TestDecayCurve(BasicStoppingRuleTestCase):
    def make(self, goal, min_trials, min_steps):
        return DecayCurveStoppingRule(goal, min_trials=min_trials, min_steps=min_steps, margin=0.01)


class TestNoStopping(BasicStoppingRuleTestCase):
    stops_laggards = False

    def make(self, goal, min_trials, min_steps):
        return NoStoppingRule(goal, min_trials=min_trials, min_steps=min_steps)


def test_every_configurable_rule_runs_the_suite():
    suites = (TestMedian, TestDecayCurve, TestNoStopping)
    tested = {type(suite().make(Goal.MAXIMIZE, 3, 2)) for suite in suites}
    for rule in EarlyStoppingRule:
        assert type(make_stopping_rule(EarlyStoppingSpec(rule=rule), Goal.MAXIMIZE)) in tested, rule
