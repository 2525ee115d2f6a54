"""VIZIER: OSS Vizier's GP-bandit designer, when the ``vizier`` package is installed."""

from __future__ import annotations

from typing import Any

from tuners.algorithms.base import Designer
from tuners.errors import AlgorithmUnavailableError, StudySpecError
from tuners.study_spec import Goal, ParameterType, ScaleType, StudySpec

__all__ = ["VizierDesigner"]

_INSTALL_HINT = ("algorithm VIZIER needs OSS Vizier, which is not installed. Install it with "
                 "`pip install google-vizier[jax]` (it pins jax 0.4.35), or use algorithm "
                 "GAUSSIAN_PROCESS_BANDIT, tfscale's own GP bandit.")


class VizierDesigner(Designer):
    """Wraps ``vizier._src.algorithms.designers.gp_bandit.VizierGPBandit`` (seconds per suggestion)."""

    def __init__(self, spec: StudySpec, seed: int = 0):
        super().__init__(spec, seed)
        try:
            import jax
            from vizier import algorithms as vza
            from vizier import pyvizier as vz
            from vizier._src.algorithms.designers import gp_bandit
        except ImportError as err:
            raise AlgorithmUnavailableError(_INSTALL_HINT) from err
        if spec.is_conditional:
            raise StudySpecError(
                "algorithm VIZIER: the Vizier GP bandit does not support conditional parameters. Flatten "
                "the search space or use GAUSSIAN_PROCESS_BANDIT or TPE.")
        self._vz, self._vza = vz, vza
        problem = vz.ProblemStatement()
        scales = {ScaleType.UNIT_LINEAR_SCALE: vz.ScaleType.LINEAR, ScaleType.UNIT_LOG_SCALE: vz.ScaleType.LOG,
                  ScaleType.UNIT_REVERSE_LOG_SCALE: vz.ScaleType.REVERSE_LOG}
        root = problem.search_space.root
        for p in spec.parameters:
            if p.type is ParameterType.DOUBLE:
                root.add_float_param(p.name, p.min_value, p.max_value, scale_type=scales[p.scale])
            elif p.type is ParameterType.INTEGER:
                root.add_int_param(p.name, int(p.min_value), int(p.max_value), scale_type=scales[p.scale])
            elif p.type is ParameterType.DISCRETE:
                root.add_discrete_param(p.name, list(p.values), scale_type=scales[p.scale])
            else:
                root.add_categorical_param(p.name, list(p.values))
        goal = (vz.ObjectiveMetricGoal.MAXIMIZE if spec.metric.goal is Goal.MAXIMIZE
                else vz.ObjectiveMetricGoal.MINIMIZE)
        problem.metric_information.append(vz.MetricInformation(name=spec.metric.tag, goal=goal))
        self._designer = gp_bandit.VizierGPBandit(problem, rng=jax.random.PRNGKey(seed))

    def _to_vizier(self, trial) -> Any:
        vz = self._vz
        # Vizier ids start at 1; warm-start trials of earlier studies come with negative ids.
        out = vz.Trial(parameters=dict(trial.parameters), id=trial.id + 1 if trial.id >= 0 else 2**31 - trial.id)
        if trial.objective is not None and trial.id in self._observed:
            out.complete(vz.Measurement(metrics={self.spec.metric.tag: float(trial.objective)}))
        elif trial.status.is_finished:
            out.complete(vz.Measurement(), infeasibility_reason=trial.error or "trial failed")
        return out

    def update(self, completed, active=()) -> None:
        """Forward finished and running trials to Vizier."""
        super().update(completed, active)
        self._designer.update(self._vza.CompletedTrials([self._to_vizier(t) for t in completed]),
                              self._vza.ActiveTrials([self._to_vizier(t) for t in active]))

    def suggest(self, count: int = 1) -> list[dict[str, Any]]:
        """Vizier's suggestions as plain dicts."""
        out = []
        for suggestion in self._designer.suggest(count):
            values = {}
            for p in self.spec.parameters:
                value = suggestion.parameters[p.name].value
                values[p.name] = int(value) if p.type is ParameterType.INTEGER else value
            out.append(values)
        return out
