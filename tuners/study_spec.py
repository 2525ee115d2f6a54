"""The typed study data model, in OSS Vizier's vocabulary.

A :class:`StudySpec` says what to optimise (:class:`MetricSpec`), over which parameters
(:class:`ParameterSpec`, possibly conditional), with which budget and algorithm. Every spec is a frozen
dataclass validated on construction; invalid input raises :class:`~tuners.errors.StudySpecError` naming the
field, the value given and the fix.

:class:`Trial` and :class:`Measurement` record what happened to one suggestion.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from tuners import _spec_parsers
from tuners.errors import StudySpecError

__all__ = [
    "Algorithm",
    "EarlyStoppingRule",
    "EarlyStoppingSpec",
    "Goal",
    "Measurement",
    "MetricSpec",
    "ParameterSpec",
    "ParameterType",
    "ParameterValue",
    "ScaleType",
    "StudySpec",
    "Trial",
    "TrialStatus",
]

from tuners.spec_parts import (  # noqa: F401  (re-exported: the study vocabulary)
    Algorithm,
    EarlyStoppingRule,
    EarlyStoppingSpec,
    Goal,
    MetricSpec,
    ParameterSpec,
    ParameterType,
    ParameterValue,
    ScaleType,
    TrialStatus,
    _enum_value,
)


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A whole study: metric(s), search space, budget, algorithm, early stopping and seed.

    A study has one objective (``metric``) or several (``metrics``: a multi-objective study, whose result is
    the Pareto set of its trials). Give one of the two; after construction ``metrics`` always lists every
    objective and ``metric`` is the first of them, which single-valued displays show.

    Args:
        metric: the objective of a single-objective study.
        parameters: top-level parameters (conditional ones hang under ``children``).
        max_trials: total number of trials to run (failed and stopped ones included).
        max_parallel_trials: at most this many trials are ACTIVE at a time.
        max_failed_trials: the study fails once more trials than this failed; ``None`` means half of
            ``max_trials`` rounded up (see :attr:`failure_budget`).
        algorithm: search algorithm; ALGORITHM_UNSPECIFIED runs GAUSSIAN_PROCESS_BANDIT, or NSGA2 when there
            are several metrics (the spec then stores NSGA2).
        early_stopping: the early stopping rule (single-objective studies only).
        seed: seed of the algorithm, so that a study is reproducible.
        metrics: the objectives of a multi-objective study, each with its goal (tags unique).
    """

    metric: MetricSpec | None = None
    parameters: tuple[ParameterSpec, ...] = ()
    max_trials: int = 10
    max_parallel_trials: int = 1
    max_failed_trials: int | None = None
    algorithm: Algorithm = Algorithm.ALGORITHM_UNSPECIFIED
    early_stopping: EarlyStoppingSpec = dataclasses.field(default_factory=EarlyStoppingSpec)
    seed: int = 0
    metrics: tuple[MetricSpec, ...] = ()

    def __post_init__(self) -> None:
        self._check_metrics()
        object.__setattr__(self, "parameters", tuple(self.parameters or ()))
        object.__setattr__(self, "algorithm", _enum_value(Algorithm, self.algorithm, "algorithm"))
        if self.early_stopping is None:
            object.__setattr__(self, "early_stopping", EarlyStoppingSpec())
        if self.is_multi_objective:
            self._check_multi_objective()
        if not self.parameters:
            raise StudySpecError("parameters: a study needs at least one parameter, but got none. Add one.")
        for field in ("max_trials", "max_parallel_trials"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StudySpecError(f"{field}: must be an integer >= 1, but got {field}={value!r}.")
        if self.max_parallel_trials > self.max_trials:
            raise StudySpecError(
                f"max_parallel_trials must be <= max_trials, but got max_parallel_trials="
                f"{self.max_parallel_trials}, max_trials={self.max_trials}. Lower max_parallel_trials to "
                f"{self.max_trials} or raise max_trials.")
        if self.max_failed_trials is not None and (
                isinstance(self.max_failed_trials, bool) or not isinstance(self.max_failed_trials, int)
                or self.max_failed_trials < 0):
            raise StudySpecError(
                f"max_failed_trials: must be an integer >= 0 or null, but got {self.max_failed_trials!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise StudySpecError(f"seed: must be an integer, but got seed={self.seed!r}.")
        seen: dict[str, int] = {}
        for index, top in enumerate(self.parameters):
            if not isinstance(top, ParameterSpec):
                raise StudySpecError(f"parameters[{index}]: must be a ParameterSpec, but got {top!r}.")
            for param in top.walk():
                if param.name in seen:
                    raise StudySpecError(
                        f"parameters[{index}] '{param.name}': duplicate parameter name (also "
                        f"parameters[{seen[param.name]}]). Give every parameter a unique name.")
                seen[param.name] = index
                if param.config_key is None:
                    raise StudySpecError(
                        f"parameters[{index}] '{param.name}': no config key mapping. Set config_key (key: "
                        f"in YAML, or param_map for AI Platform specs) to the Hydra override key it sets, "
                        f"e.g. 'model.{param.name}'.")
        keys: dict[str, str] = {}
        for param in self.all_parameters():
            other = keys.setdefault(param.config_key, param.name)
            if other != param.name:
                raise StudySpecError(
                    f"parameter '{param.name}': config_key '{param.config_key}' is also used by '{other}'. "
                    f"Map each parameter to its own key.")

    def _check_metrics(self) -> None:
        metrics = tuple(self.metrics or ())
        if self.metric is not None and metrics and metrics[0] != self.metric:
            raise StudySpecError(
                f"metric and metrics are both set (metric={self.metric.tag!r}, metrics="
                f"{[getattr(m, 'tag', m) for m in metrics]}). Give metric for one objective or metrics for "
                f"several, not both.")
        if not metrics:
            if self.metric is None:
                raise StudySpecError("metric: a study needs an objective, but got none. Set e.g. "
                                     "metric: {tag: accuracy, goal: MAXIMIZE}.")
            metrics = (self.metric,)
        tags: dict[str, int] = {}
        for index, metric in enumerate(metrics):
            if not isinstance(metric, MetricSpec):
                where = "metric" if len(metrics) == 1 else f"metrics[{index}]"
                raise StudySpecError(f"{where}: must be a MetricSpec, but got {metric!r}.")
            if metric.tag in tags:
                raise StudySpecError(
                    f"metrics[{index}]: tag {metric.tag!r} is also metrics[{tags[metric.tag]}]. List each "
                    f"metric once.")
            tags[metric.tag] = index
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "metric", metrics[0])

    def _check_multi_objective(self) -> None:
        tags = [m.tag for m in self.metrics]
        if self.algorithm is Algorithm.ALGORITHM_UNSPECIFIED:
            object.__setattr__(self, "algorithm", Algorithm.NSGA2)
        elif not self.algorithm.handles_several_metrics:
            others = ", ".join(a.name for a in Algorithm if a.handles_several_metrics and a is not Algorithm.NSGA2)
            raise StudySpecError(
                f"algorithm: {self.algorithm.name} optimises one metric, but the study has {len(tags)}: "
                f"{tags}. Use algorithm: NSGA2 (or {others}), or keep one metric.")
        if self.early_stopping.rule is not EarlyStoppingRule.NONE:
            raise StudySpecError(
                f"early_stopping.rule: {self.early_stopping.rule.value} compares trials on one metric, but "
                f"the study has {len(tags)}: {tags}. Set early_stopping.rule: none, or keep one metric.")

    # -- queries --------------------------------------------------------------------------------------
    @property
    def is_multi_objective(self) -> bool:
        """Whether the study optimises several metrics (its result is a Pareto set, not one best trial)."""
        return len(self.metrics) > 1

    def all_parameters(self) -> list[ParameterSpec]:
        """Every parameter, conditional ones included, parents before children."""
        return [p for top in self.parameters for p in top.walk()]

    def parameter(self, name: str) -> ParameterSpec:
        """The parameter called ``name``."""
        for param in self.all_parameters():
            if param.name == name:
                return param
        raise KeyError(f"no parameter {name!r}; parameters are {[p.name for p in self.all_parameters()]}")

    @property
    def is_conditional(self) -> bool:
        """Whether any parameter has conditional children."""
        return any(p.children for p in self.parameters)

    @property
    def failure_budget(self) -> int:
        """The number of failed trials tolerated before :class:`~tuners.errors.StudyFailedError`."""
        if self.max_failed_trials is None:
            return (self.max_trials + 1) // 2
        return self.max_failed_trials

    def active_parameters(self, values: Mapping[str, Any]) -> list[ParameterSpec]:
        """Parameters that are active given the parent values in ``values``."""
        active: list[ParameterSpec] = []

        def visit(param: ParameterSpec) -> None:
            active.append(param)
            if param.name in values:
                for child in param.active_children(values[param.name]):
                    visit(child)

        for top in self.parameters:
            visit(top)
        return active

    def validate_parameters(self, values: Mapping[str, Any]) -> None:
        """Raise :class:`StudySpecError` unless ``values`` is a complete, feasible assignment."""
        active = self.active_parameters(values)
        names = {p.name for p in active}
        missing = sorted(names - set(values))
        extra = sorted(set(values) - names)
        if missing or extra:
            raise StudySpecError(
                f"parameters: expected exactly the active parameters {sorted(names)}. Missing: {missing}; "
                f"not active or unknown: {extra}.")
        for param in active:
            if not param.contains(values[param.name]):
                raise StudySpecError(
                    f"parameters '{param.name}': value {values[param.name]!r} is outside "
                    f"{param.describe_domain()}.")

    # -- conversions ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], param_map: Mapping[str, str] | None = None) -> StudySpec:
        """Build from the native dict form (``conf/study/*.yaml``), or from an AI Platform or Vertex dict
        (with ``param_map``, their parameterName to config key map, see :meth:`from_ai_platform`).

        Native form::

            metric: {tag: accuracy, goal: MAXIMIZE}
            max_trials: 10
            max_parallel_trials: 2
            max_failed_trials: null        # null: half of max_trials
            algorithm: GAUSSIAN_PROCESS_BANDIT
            seed: 0
            early_stopping: {rule: median, min_trials: 3, min_steps: 2}
            parameters:
              - {name: lr, type: DOUBLE, min: 1.0e-4, max: 0.1, scale: log, key: model.optimizer.learning_rate}
              - name: optimizer
                type: CATEGORICAL
                values: [sgd, adam]
                key: model.optimizer.name
                children:
                  - {name: momentum, type: DOUBLE, min: 0.0, max: 0.99, when: [sgd], key: model.optimizer.momentum}

        ``key`` defaults to the parameter name; ``scale`` accepts linear/log/reverse_log or the Vizier names.
        A multi-objective study lists its objectives instead of ``metric``::

            metrics:
              - {tag: quantization.quantized.accuracy, goal: MAXIMIZE}
              - {tag: quantization.quantized.tflite_bytes, goal: MINIMIZE}
        """
        return _spec_parsers.from_any_dict(cls, d, param_map)

    @staticmethod
    def dialect(d: Mapping[str, Any]) -> str:
        """The form a study dict is written in: ``ai_platform``, ``vertex`` or ``native``."""
        return _spec_parsers.dialect(d)

    @classmethod
    def from_ai_platform(cls, d: Mapping[str, Any], param_map: Mapping[str, str] | None = None) -> StudySpec:
        """Build from AI Platform training input (``trainingInput.hyperparameters``) given verbatim.

        ``param_map`` maps ``parameterName`` to the Hydra config key; without it each parameter's key is its
        name. With it, every parameter must be mapped.
        """
        return _spec_parsers.from_ai_platform(cls, d, param_map)

    @classmethod
    def from_vertex(cls, d: Mapping[str, Any], param_map: Mapping[str, str] | None = None,
                    **overrides: Any) -> StudySpec:
        """Build from a Vertex AI ``StudySpec``-shaped dict (camelCase or snake_case keys).

        Budget fields are not part of a Vertex StudySpec (they sit on the HyperparameterTuningJob), so they
        may be given at the top level (``maxTrialCount``, ``parallelTrialCount``, ``maxFailedTrialCount``)
        or as keyword ``overrides`` (``max_trials=...``).
        """
        return _spec_parsers.from_vertex(cls, d, param_map, overrides)

    def to_dict(self) -> dict[str, Any]:
        """The native dict form; ``StudySpec.from_dict(spec.to_dict()) == spec``."""
        return _spec_parsers.to_native(self)

    def to_vertex_dict(self) -> dict[str, Any]:
        """A Vertex AI ``StudySpec`` dict (camelCase, as accepted by ``aiplatform_v1.StudySpec``), plus
        ``maxTrialCount``/``parallelTrialCount``/``maxFailedTrialCount`` for the tuning job."""
        return _spec_parsers.to_vertex(self)

    def to_json(self) -> str:
        """Canonical JSON of :meth:`to_dict` (sorted keys), as stored by the study store."""
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Metrics reported by a trial at one step (epoch or training step)."""

    step: int
    metrics: Mapping[str, float]
    elapsed_secs: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"step": self.step, "metrics": dict(self.metrics), "elapsed_secs": self.elapsed_secs}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["step"]), {k: float(v) for k, v in d["metrics"].items()},
                   float(d.get("elapsed_secs", 0.0)))


def format_override_value(value: Any) -> str:
    """Render a parameter value for a Hydra command-line override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_\-./:]+", text) and text.lower() not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclasses.dataclass
class Trial:
    """One suggestion and its outcome.

    ``parameters`` holds only the active parameters. ``objective`` is the final value of the study metric
    (``None`` unless COMPLETED, or STOPPED with a measurement); in a multi-objective study, that of its first
    metric. ``objectives`` holds the final value of every study metric by tag. ``config_keys`` maps parameter
    names to Hydra override keys so that :meth:`overrides` needs no spec.
    """

    id: int
    parameters: dict[str, ParameterValue]
    status: TrialStatus = TrialStatus.ACTIVE
    measurements: list[Measurement] = dataclasses.field(default_factory=list)
    objective: float | None = None
    error: str | None = None
    log_path: str | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    updated_at: float = dataclasses.field(default_factory=time.time)
    config_keys: dict[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    objectives: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Wall-clock seconds (``time.time()``) when the trial's process was started and when it ended; ``None``
    #: until then. A re-run of an interrupted trial starts them anew.
    started_at: float | None = None
    ended_at: float | None = None

    def overrides(self) -> list[str]:
        """Hydra override strings ``key=value``, one per active parameter, in parameter order."""
        return [f"{self.config_keys.get(name, name)}={format_override_value(value)}"
                for name, value in self.parameters.items()]

    def curve(self, tag: str) -> list[tuple[int, float]]:
        """``(step, value)`` of metric ``tag`` over the trial's measurements, in step order."""
        return sorted((m.step, float(m.metrics[tag])) for m in self.measurements if tag in m.metrics)

