"""TPE: Optuna's Tree-structured Parzen Estimator through Optuna's ask/tell API."""

from __future__ import annotations

import warnings
from typing import Any

from tuners.algorithms.base import Designer
from tuners.algorithms.random_search import RandomDesigner
from tuners.errors import AlgorithmUnavailableError
from tuners.search_space import point_key
from tuners.study_spec import Goal, ParameterSpec, ParameterType, ScaleType, StudySpec, Trial, TrialStatus

__all__ = ["TPEDesigner"]

# Attempts at a fresh point before falling back to random draws (TPE may repeat points in small spaces).
_MAX_ASKS_PER_POINT = 10


def _distribution(param: ParameterSpec):
    import optuna.distributions as od

    # Optuna has no reverse-log scale; TPE then searches those ranges linearly.
    log = param.scale is ScaleType.UNIT_LOG_SCALE
    if param.type is ParameterType.DOUBLE:
        return od.FloatDistribution(param.min_value, param.max_value, log=log)
    if param.type is ParameterType.INTEGER:
        return od.IntDistribution(int(param.min_value), int(param.max_value), log=log)
    return od.CategoricalDistribution(list(param.values))


class TPEDesigner(Designer):
    """Optuna's ``TPESampler`` (multivariate, constant liar for batches) on an in-memory Optuna study.

    Top-level parameters are asked with a fixed distribution set (``study.ask(fixed_distributions)``);
    conditional children are then suggested define-by-run, only when active. Completed trials suggested by
    this designer are told to their Optuna trial; others (after a restart) are added with
    ``study.add_trial``.
    """

    def __init__(self, spec: StudySpec, seed: int = 0, *, n_startup_trials: int = 10):
        super().__init__(spec, seed)
        try:
            import optuna
        except ImportError as err:
            raise AlgorithmUnavailableError(
                "algorithm TPE needs optuna. Install it with `pip install optuna`, or choose another "
                "algorithm.") from err
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate/group are flagged experimental
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                                 multivariate=True, group=spec.is_conditional,
                                                 constant_liar=True)
        direction = "maximize" if spec.metric.goal is Goal.MAXIMIZE else "minimize"
        self._optuna = optuna
        self._study = optuna.create_study(direction=direction, sampler=sampler)
        self._fixed = {p.name: _distribution(p) for p in spec.parameters}
        self._numbers: dict[tuple, int] = {}
        self._fallback = RandomDesigner(spec, seed + 1)

    def update(self, completed, active=()) -> None:
        """Tell Optuna about finished trials (see :class:`~tuners.algorithms.Designer`)."""
        super().update(completed, active)
        self._fallback.update(completed, active)
        state = self._optuna.trial.TrialState
        for trial in completed:
            value = self._observed[trial.id].objective if trial.id in self._observed else None
            number = self._numbers.pop(point_key(trial.parameters), None)
            if number is not None:
                self._study.tell(number, value, state=state.COMPLETE if value is not None else state.FAIL)
            else:
                self._add(trial, state.COMPLETE if value is not None else state.FAIL, value)
        for trial in active:
            if point_key(trial.parameters) not in self._numbers:
                self._add(trial, state.RUNNING, None)
                self._numbers[point_key(trial.parameters)] = self._study.trials[-1].number

    def _add(self, trial: Trial, state, value: float | None) -> None:
        dists = {name: _distribution(self.spec.parameter(name)) for name in trial.parameters}
        self._study.add_trial(self._optuna.trial.create_trial(
            state=state, value=value, params=dict(trial.parameters), distributions=dists))

    def _ask(self) -> tuple[Any, dict[str, Any]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self._study.ask(dict(self._fixed))
            values: dict[str, Any] = {}

            def visit(param: ParameterSpec) -> None:
                if param.name in self._fixed:
                    value = trial.params[param.name]
                elif param.type is ParameterType.DOUBLE:
                    value = trial.suggest_float(param.name, param.min_value, param.max_value,
                                                log=param.scale is ScaleType.UNIT_LOG_SCALE)
                elif param.type is ParameterType.INTEGER:
                    value = trial.suggest_int(param.name, int(param.min_value), int(param.max_value),
                                              log=param.scale is ScaleType.UNIT_LOG_SCALE)
                else:
                    value = trial.suggest_categorical(param.name, list(param.values))
                values[param.name] = value
                for child in param.active_children(value):
                    visit(child)

            for top in self.spec.parameters:
                visit(top)
        return trial, values

    def suggest(self, count: int = 1) -> list[dict[str, Any]]:
        """Up to ``count`` distinct assignments sampled by TPE."""
        seen = self._seen_keys()
        out: list[dict[str, Any]] = []
        attempts = 0
        while len(out) < count and attempts < _MAX_ASKS_PER_POINT * count:
            attempts += 1
            trial, values = self._ask()
            key = point_key(values)
            if key in seen:
                # A repeat tells TPE nothing new; drop it so it is not left RUNNING forever.
                self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
                continue
            seen.add(key)
            self._numbers[key] = trial.number
            out.append(values)
        if len(out) < count:
            self._fallback._active = [*self._active, *(Trial(-1, v, TrialStatus.ACTIVE) for v in out)]
            out.extend(self._fallback.suggest(count - len(out)))
        return out
