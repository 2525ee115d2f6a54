import math

from tuners import DecayCurveStoppingRule, Goal, MedianStoppingRule, NoStoppingRule

COMPLETED = [[(s, 0.5 + 0.1 * s) for s in range(5)] for _ in range(3)]


def test_median_rule_stops_a_laggard_and_keeps_a_leader():
    rule = MedianStoppingRule(Goal.MAXIMIZE, min_trials=3, min_steps=2)
    assert rule.should_stop([(0, 0.1), (1, 0.2)], COMPLETED)
    assert not rule.should_stop([(0, 0.6), (1, 0.7)], COMPLETED)
    assert not rule.should_stop([(0, 0.1)], COMPLETED)  # too few steps
    assert not rule.should_stop([(0, 0.1), (1, 0.2)], COMPLETED[:2])  # too few trials


def test_median_rule_minimize():
    losses = [[(s, 2.0 - 0.3 * s) for s in range(5)] for _ in range(3)]
    rule = MedianStoppingRule(Goal.MINIMIZE, min_trials=3, min_steps=2)
    assert rule.should_stop([(0, 3.0), (1, 2.9)], losses)
    assert not rule.should_stop([(0, 1.5), (1, 1.2)], losses)


def test_decay_curve_extrapolates():
    completed = [[(s, 0.9 - 0.4 * math.exp(-0.5 * s)) for s in range(20)] for _ in range(3)]
    rule = DecayCurveStoppingRule(Goal.MAXIMIZE, min_trials=3, min_steps=4, margin=0.01)
    plateau_low = [(s, 0.6 - 0.3 * math.exp(-0.8 * s)) for s in range(6)]
    decision = rule.should_stop(plateau_low, completed)
    assert decision and "cannot beat" in decision.reason
    assert 0.55 < rule.predict(plateau_low, 19) < 0.65
    promising = [(s, 0.95 - 0.4 * math.exp(-0.3 * s)) for s in range(6)]
    assert not rule.should_stop(promising, completed)


def test_no_stopping():
    assert not NoStoppingRule(Goal.MAXIMIZE).should_stop([(0, -1e9)] * 5, COMPLETED)
