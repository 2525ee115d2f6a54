"""Early stopping rules: should an ACTIVE trial be stopped, given its curve and those of completed trials?

A curve is a sequence of ``(step, value)`` of the study metric, in step order.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np

from tuners.study_spec import EarlyStoppingRule, EarlyStoppingSpec, Goal

__all__ = [
    "Curve",
    "DecayCurveStoppingRule",
    "MedianStoppingRule",
    "NoStoppingRule",
    "StopDecision",
    "StoppingRule",
    "make_stopping_rule",
]

Curve = Sequence[tuple[int, float]]


@dataclasses.dataclass(frozen=True)
class StopDecision:
    """Outcome of a rule; truthy when the trial should stop. ``reason`` explains it either way."""

    stop: bool
    reason: str

    def __bool__(self) -> bool:
        return self.stop


class StoppingRule(abc.ABC):
    """Decides from intermediate measurements whether to stop a running trial.

    Implementations are built from ``(goal, **settings)`` and hold no per-trial state, so a rule can be
    asked about any trial at any time.
    """

    def __init__(self, goal: Goal, *, min_trials: int = 3, min_steps: int = 2):
        self.goal = Goal(goal)
        self.min_trials = min_trials
        self.min_steps = min_steps

    @abc.abstractmethod
    def should_stop(self, current: Curve, completed: Sequence[Curve]) -> StopDecision:
        """Whether the trial with curve ``current`` should stop, given the curves of completed trials."""

    def _not_enough(self, current: Curve, completed: Sequence[Curve]) -> StopDecision | None:
        if len(current) < self.min_steps:
            return StopDecision(False, f"only {len(current)} of min_steps={self.min_steps} measurements")
        usable = [c for c in completed if c]
        if len(usable) < self.min_trials:
            return StopDecision(False, f"only {len(usable)} of min_trials={self.min_trials} completed trials")
        return None


class NoStoppingRule(StoppingRule):
    """Never stops a trial."""

    def should_stop(self, current: Curve, completed: Sequence[Curve]) -> StopDecision:
        """Always ``StopDecision(False, ...)``."""
        return StopDecision(False, "early stopping is off")


class MedianStoppingRule(StoppingRule):
    """Vizier's median rule: stop when the trial's best value so far at step ``s`` is worse than the median
    of the completed trials' running averages up to ``s``."""

    def should_stop(self, current: Curve, completed: Sequence[Curve]) -> StopDecision:
        """See the class docstring."""
        early = self._not_enough(current, completed)
        if early is not None:
            return early
        step = current[-1][0]
        values = [v for _, v in current]
        best = max(values) if self.goal is Goal.MAXIMIZE else min(values)
        averages = []
        for curve in completed:
            upto = [v for s, v in curve if s <= step]
            if upto:
                averages.append(float(np.mean(upto)))
        if len(averages) < self.min_trials:
            return StopDecision(False, f"only {len(averages)} completed trials reached step {step}")
        median = float(np.median(averages))
        if self.goal.is_better(median, best):
            return StopDecision(True, f"best so far {best:.6g} at step {step} is worse than the median "
                                      f"running average {median:.6g} of {len(averages)} completed trials")
        return StopDecision(False, f"best so far {best:.6g} is not worse than the median {median:.6g}")


def _exp_decay(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a + b * np.exp(-c * t)


def _power_law(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a + b * np.power(t, -c)


class DecayCurveStoppingRule(StoppingRule):
    """Extrapolate the trial's learning curve and stop when it cannot catch up with the best trial.

    The curve is fit with ``a + b*exp(-c*t)`` and ``a + b*t**-c`` (whichever fits better, least squares on
    steps rescaled to [0, 1]) and evaluated at ``max_step`` (default: the last step of the longest completed
    trial). The trial stops when that prediction is worse than the best value of any completed trial
    by more than ``margin``. If neither curve can be fit, the trial continues.
    """

    def __init__(self, goal: Goal, *, min_trials: int = 3, min_steps: int = 4, margin: float = 0.0,
                 max_step: int | None = None):
        super().__init__(goal, min_trials=min_trials, min_steps=max(min_steps, 3))
        self.margin = margin
        self.max_step = max_step

    def predict(self, current: Curve, at_step: int) -> float | None:
        """The fitted curve's value at ``at_step``, or ``None`` if no model fits."""
        from scipy.optimize import curve_fit

        steps = np.array([s for s, _ in current], dtype=float)
        values = np.array([v for _, v in current], dtype=float)
        scale = max(float(steps.max()), 1.0)
        t, target = (steps + 1.0) / scale, (at_step + 1.0) / scale
        best: tuple[float, float] | None = None
        for model, p0 in ((_exp_decay, (values[-1], values[0] - values[-1], 1.0)),
                          (_power_law, (values[-1], values[0] - values[-1], 0.5))):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    params, _ = curve_fit(model, t, values, p0=p0, bounds=([-np.inf, -np.inf, 0.0],
                                                                           [np.inf, np.inf, 50.0]),
                                          maxfev=2000)
            except (RuntimeError, ValueError):
                continue
            residual = float(np.sum((model(t, *params) - values) ** 2))
            prediction = float(model(np.array([target]), *params)[0])
            if math.isfinite(prediction) and (best is None or residual < best[0]):
                best = (residual, prediction)
        return None if best is None else best[1]

    def should_stop(self, current: Curve, completed: Sequence[Curve]) -> StopDecision:
        """See the class docstring."""
        early = self._not_enough(current, completed)
        if early is not None:
            return early
        usable = [c for c in completed if c]
        finals = [max(v for _, v in c) if self.goal is Goal.MAXIMIZE else min(v for _, v in c) for c in usable]
        best = max(finals) if self.goal is Goal.MAXIMIZE else min(finals)
        horizon = self.max_step if self.max_step is not None else max(c[-1][0] for c in usable)
        if current[-1][0] >= horizon:
            return StopDecision(False, f"trial already reached step {horizon}")
        predicted = self.predict(current, horizon)
        if predicted is None:
            return StopDecision(False, "no decay curve fits the measurements")
        bar = best - self.goal.sign * self.margin
        if self.goal.is_better(bar, predicted):
            return StopDecision(True, f"predicted value {predicted:.6g} at step {horizon} cannot beat the "
                                      f"best trial's {best:.6g} by margin {self.margin}")
        return StopDecision(False, f"predicted {predicted:.6g} at step {horizon} may beat {best:.6g}")


def make_stopping_rule(spec: EarlyStoppingSpec, goal: Goal) -> StoppingRule:
    """The rule configured by ``spec`` for a study with ``goal``."""
    if spec.rule is EarlyStoppingRule.MEDIAN:
        return MedianStoppingRule(goal, min_trials=spec.min_trials, min_steps=spec.min_steps)
    if spec.rule is EarlyStoppingRule.DECAY_CURVE:
        return DecayCurveStoppingRule(goal, min_trials=spec.min_trials, min_steps=spec.min_steps,
                                      margin=spec.margin, max_step=spec.max_step)
    return NoStoppingRule(goal, min_trials=spec.min_trials, min_steps=spec.min_steps)
