"""The typed study data model, in OSS Vizier's vocabulary.

A :class:`StudySpec` says what to optimise (:class:`MetricSpec`), over which parameters
(:class:`ParameterSpec`, possibly conditional), with which budget and algorithm. Every spec is a frozen
dataclass validated on construction; invalid input raises :class:`~tuners.errors.StudySpecError` naming the
field, the value given and the fix.

:class:`Trial` and :class:`Measurement` record what happened to one suggestion.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

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

ParameterValue = int | float | str


class Goal(enum.Enum):
    """Direction of optimisation of the study metric."""

    MAXIMIZE = "MAXIMIZE"
    MINIMIZE = "MINIMIZE"

    def is_better(self, a: float, b: float) -> bool:
        """Whether objective ``a`` is strictly better than ``b`` under this goal."""
        return a > b if self is Goal.MAXIMIZE else a < b

    @property
    def sign(self) -> float:
        """``+1`` for MAXIMIZE, ``-1`` for MINIMIZE: multiply to turn any objective into a maximisation."""
        return 1.0 if self is Goal.MAXIMIZE else -1.0


class ParameterType(enum.Enum):
    """Kind of values a parameter takes."""

    INTEGER = "INTEGER"
    DOUBLE = "DOUBLE"
    CATEGORICAL = "CATEGORICAL"
    DISCRETE = "DISCRETE"


class ScaleType(enum.Enum):
    """How a numeric range is mapped to the unit interval before searching it."""

    UNIT_LINEAR_SCALE = "UNIT_LINEAR_SCALE"
    UNIT_LOG_SCALE = "UNIT_LOG_SCALE"
    UNIT_REVERSE_LOG_SCALE = "UNIT_REVERSE_LOG_SCALE"


class TrialStatus(enum.Enum):
    """Life cycle of a trial: ACTIVE until it ends as COMPLETED, FAILED or STOPPED (early-stopped)."""

    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def is_finished(self) -> bool:
        """True for every status a trial cannot leave."""
        return self is not TrialStatus.ACTIVE


class Algorithm(enum.Enum):
    """Search algorithm; ALGORITHM_UNSPECIFIED means the default, GAUSSIAN_PROCESS_BANDIT."""

    ALGORITHM_UNSPECIFIED = "ALGORITHM_UNSPECIFIED"
    GRID_SEARCH = "GRID_SEARCH"
    RANDOM_SEARCH = "RANDOM_SEARCH"
    QUASI_RANDOM_SEARCH = "QUASI_RANDOM_SEARCH"
    GAUSSIAN_PROCESS_BANDIT = "GAUSSIAN_PROCESS_BANDIT"
    TPE = "TPE"
    VIZIER = "VIZIER"

    def resolved(self) -> Algorithm:
        """The algorithm actually run: ALGORITHM_UNSPECIFIED maps to GAUSSIAN_PROCESS_BANDIT."""
        return Algorithm.GAUSSIAN_PROCESS_BANDIT if self is Algorithm.ALGORITHM_UNSPECIFIED else self


class EarlyStoppingRule(enum.Enum):
    """Which early stopping rule judges intermediate measurements."""

    NONE = "none"
    MEDIAN = "median"
    DECAY_CURVE = "decay_curve"


def _enum_value(enum_cls: type[enum.Enum], value: Any, field: str, aliases: Mapping[str, str] = {}) -> Any:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = aliases.get(value.strip().lower(), value.strip())
        for member in enum_cls:
            if key.upper() == member.name or key == member.value:
                return member
    allowed = ", ".join(m.name for m in enum_cls)
    raise StudySpecError(f"{field}: unknown value {value!r}. Use one of: {allowed}.")


_CONFIG_KEY = re.compile(r"^[+~]{0,2}[A-Za-z_][\w\-]*(\.[A-Za-z_0-9][\w\-]*)*(@[\w.\-]+)?$")


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """One searched parameter.

    Args:
        name: unique name of the parameter in the study.
        type: :class:`ParameterType` (or its name).
        min_value, max_value: inclusive bounds for INTEGER and DOUBLE.
        scale: :class:`ScaleType` for INTEGER and DOUBLE (and the spacing DISCRETE values are searched in).
        values: feasible values of CATEGORICAL (strings) and DISCRETE (numbers, sorted and de-duplicated).
        config_key: the Hydra override key this parameter sets, e.g. ``model.optimizer.learning_rate``.
        children: conditional parameters, each active only when this parameter takes one of the child's
            ``parent_values``.
        parent_values: for a child parameter, the values of its parent that activate it.
    """

    name: str
    type: ParameterType
    min_value: float | None = None
    max_value: float | None = None
    scale: ScaleType = ScaleType.UNIT_LINEAR_SCALE
    values: tuple[ParameterValue, ...] = ()
    config_key: str | None = None
    children: tuple[ParameterSpec, ...] = ()
    parent_values: tuple[ParameterValue, ...] = ()

    def __post_init__(self) -> None:
        where = f"'{self.name}'"
        if not isinstance(self.name, str) or not self.name.strip():
            raise StudySpecError(f"parameter name: must be a non-empty string, but got {self.name!r}.")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 -- frozen dataclass normalisation
        set_("type", _enum_value(ParameterType, self.type, f"{where}: type"))
        set_("scale", _enum_value(ScaleType, self.scale if self.scale is not None else "UNIT_LINEAR_SCALE",
                                  f"{where}: scale"))
        set_("values", tuple(self.values or ()))
        set_("children", tuple(self.children or ()))
        set_("parent_values", tuple(self.parent_values or ()))
        if self.type in (ParameterType.INTEGER, ParameterType.DOUBLE):
            self._validate_range(where)
        else:
            self._validate_values(where)
        if self.config_key is not None and not _CONFIG_KEY.match(str(self.config_key)):
            raise StudySpecError(
                f"{where}: config_key {self.config_key!r} is not a Hydra override key. Use a dotted path "
                f"such as 'model.optimizer.learning_rate'.")
        self._validate_children(where)

    def _validate_range(self, where: str) -> None:
        for field in ("min_value", "max_value"):
            value = getattr(self, field)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise StudySpecError(
                    f"{where}: {field} must be a finite number for a {self.type.name} parameter, but got "
                    f"{field}={value!r}. Set both min_value and max_value.")
        if self.type is ParameterType.INTEGER:
            for field in ("min_value", "max_value"):
                value = getattr(self, field)
                if float(value) != int(value):
                    raise StudySpecError(
                        f"{where}: {field} must be a whole number for an INTEGER parameter, but got "
                        f"{field}={value!r}. Round it or make the parameter DOUBLE.")
                object.__setattr__(self, field, int(value))
        else:
            object.__setattr__(self, "min_value", float(self.min_value))
            object.__setattr__(self, "max_value", float(self.max_value))
        if self.min_value > self.max_value:
            raise StudySpecError(
                f"{where}: min_value must be <= max_value, but got min_value={self.min_value}, "
                f"max_value={self.max_value}. Swap them.")
        if self.scale is not ScaleType.UNIT_LINEAR_SCALE and self.min_value <= 0:
            raise StudySpecError(
                f"{where}: {self.scale.name} needs min_value > 0, but got min_value={self.min_value}. "
                f"Use a positive min_value or scale UNIT_LINEAR_SCALE.")
        if self.values:
            raise StudySpecError(
                f"{where}: values={list(self.values)} is only for CATEGORICAL and DISCRETE parameters, but "
                f"type is {self.type.name}. Remove values or change the type.")

    def _validate_values(self, where: str) -> None:
        kind = self.type.name
        if not self.values:
            raise StudySpecError(
                f"{where}: a {kind} parameter needs a non-empty list of values, but got values=[]. "
                f"List the feasible values.")
        if self.min_value is not None or self.max_value is not None:
            raise StudySpecError(
                f"{where}: min_value/max_value are only for INTEGER and DOUBLE, but type is {kind}. Remove "
                f"them or change the type.")
        if self.type is ParameterType.CATEGORICAL:
            bad = [v for v in self.values if not isinstance(v, str)]
            if bad:
                raise StudySpecError(
                    f"{where}: CATEGORICAL values must be strings, but got {bad!r}. Quote them, or use a "
                    f"DISCRETE parameter for numbers.")
            values = tuple(dict.fromkeys(self.values))
        else:
            bad = [v for v in self.values
                   if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
            if bad:
                raise StudySpecError(
                    f"{where}: DISCRETE values must be finite numbers, but got {bad!r}. Use a CATEGORICAL "
                    f"parameter for strings.")
            values = tuple(sorted(set(self.values)))
            if self.scale is not ScaleType.UNIT_LINEAR_SCALE and values[0] <= 0:
                raise StudySpecError(
                    f"{where}: {self.scale.name} needs positive values, but got {values[0]}. Remove it or "
                    f"use scale UNIT_LINEAR_SCALE.")
        if len(values) != len(self.values) and self.type is ParameterType.CATEGORICAL:
            dup = sorted({v for v in self.values if self.values.count(v) > 1})
            raise StudySpecError(f"{where}: duplicate values {dup}. List each value once.")
        object.__setattr__(self, "values", values)

    def _validate_children(self, where: str) -> None:
        if not self.children:
            return
        if self.type is ParameterType.DOUBLE:
            raise StudySpecError(
                f"{where}: a DOUBLE parameter cannot have conditional children. Make it DISCRETE, INTEGER "
                f"or CATEGORICAL.")
        for child in self.children:
            if not isinstance(child, ParameterSpec):
                raise StudySpecError(f"{where}: children must be ParameterSpec, but got {child!r}.")
            if not child.parent_values:
                raise StudySpecError(
                    f"{where}: child '{child.name}' has no parent_values. List the values of '{self.name}' "
                    f"that activate it.")
            for value in child.parent_values:
                if not self.contains(value):
                    raise StudySpecError(
                        f"{where}: child '{child.name}' is activated by {value!r}, which '{self.name}' never "
                        f"takes ({self.describe_domain()}). Use feasible parent values.")

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a feasible value of this parameter."""
        if self.type is ParameterType.CATEGORICAL:
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type is ParameterType.DISCRETE:
            return any(math.isclose(value, v, rel_tol=1e-9, abs_tol=1e-12) for v in self.values)
        if self.type is ParameterType.INTEGER and float(value) != int(value):
            return False
        return self.min_value <= value <= self.max_value

    def describe_domain(self) -> str:
        """Human-readable domain, used in messages."""
        if self.type in (ParameterType.CATEGORICAL, ParameterType.DISCRETE):
            return f"values {list(self.values)}"
        return f"[{self.min_value}, {self.max_value}]"

    def walk(self) -> Iterator[ParameterSpec]:
        """This parameter then all its descendants, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def active_children(self, value: Any) -> tuple[ParameterSpec, ...]:
        """Children activated when this parameter takes ``value``."""
        return tuple(c for c in self.children
                     if any(value == v or (isinstance(v, (int, float)) and not isinstance(value, str)
                                           and math.isclose(value, v)) for v in c.parent_values))


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """The objective: a metric ``tag`` and whether to MAXIMIZE or MINIMIZE it."""

    tag: str
    goal: Goal = Goal.MAXIMIZE

    def __post_init__(self) -> None:
        if not isinstance(self.tag, str) or not self.tag.strip():
            raise StudySpecError(
                f"metric.tag: must name the metric to optimise, but got {self.tag!r}. Set e.g. "
                f"tag: accuracy.")
        object.__setattr__(self, "goal", _enum_value(Goal, self.goal, "metric.goal"))


@dataclasses.dataclass(frozen=True)
class EarlyStoppingSpec:
    """Which early stopping rule to apply to ACTIVE trials and its settings.

    Args:
        rule: NONE, MEDIAN or DECAY_CURVE.
        min_trials: completed trials needed before any trial may be stopped.
        min_steps: measurements a trial must have reported before it may be stopped.
        margin: DECAY_CURVE only: a trial is stopped when its predicted final value is worse than the best
            completed trial by more than this (in metric units).
        max_step: DECAY_CURVE only: the step the curve is extrapolated to; default is the largest step any
            completed trial reached.
    """

    rule: EarlyStoppingRule = EarlyStoppingRule.NONE
    min_trials: int = 3
    min_steps: int = 2
    margin: float = 0.0
    max_step: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", _enum_value(
            EarlyStoppingRule, self.rule if self.rule is not None else "none", "early_stopping.rule",
            aliases={"false": "none", "off": "none", "true": "median"}))
        for field in ("min_trials", "min_steps"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StudySpecError(
                    f"early_stopping.{field}: must be an integer >= 1, but got {value!r}. Use e.g. 3.")
        if not isinstance(self.margin, (int, float)) or self.margin < 0:
            raise StudySpecError(
                f"early_stopping.margin: must be a number >= 0, but got {self.margin!r}. Use e.g. 0.01.")
        if self.max_step is not None and (not isinstance(self.max_step, int) or self.max_step < 1):
            raise StudySpecError(
                f"early_stopping.max_step: must be a positive integer or null, but got {self.max_step!r}.")


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A whole study: metric, search space, budget, algorithm, early stopping and seed.

    Args:
        metric: the objective.
        parameters: top-level parameters (conditional ones hang under ``children``).
        max_trials: total number of trials to run (failed and stopped ones included).
        max_parallel_trials: at most this many trials are ACTIVE at a time.
        max_failed_trials: the study fails once more trials than this failed; ``None`` means half of
            ``max_trials`` rounded up (see :attr:`failure_budget`).
        algorithm: search algorithm; ALGORITHM_UNSPECIFIED runs GAUSSIAN_PROCESS_BANDIT.
        early_stopping: the early stopping rule.
        seed: seed of the algorithm, so that a study is reproducible.
    """

    metric: MetricSpec
    parameters: tuple[ParameterSpec, ...]
    max_trials: int = 10
    max_parallel_trials: int = 1
    max_failed_trials: int | None = None
    algorithm: Algorithm = Algorithm.ALGORITHM_UNSPECIFIED
    early_stopping: EarlyStoppingSpec = dataclasses.field(default_factory=EarlyStoppingSpec)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.metric, MetricSpec):
            raise StudySpecError(f"metric: must be a MetricSpec, but got {self.metric!r}.")
        object.__setattr__(self, "parameters", tuple(self.parameters or ()))
        object.__setattr__(self, "algorithm", _enum_value(Algorithm, self.algorithm, "algorithm"))
        if self.early_stopping is None:
            object.__setattr__(self, "early_stopping", EarlyStoppingSpec())
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

    # -- queries --------------------------------------------------------------------------------------
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
    def from_dict(cls, d: Mapping[str, Any]) -> StudySpec:
        """Build from the native dict form (``conf/study/*.yaml``), or from an AI Platform or Vertex dict.

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
        """
        from tuners import _spec_parsers

        return _spec_parsers.from_any_dict(d)

    @classmethod
    def from_ai_platform(cls, d: Mapping[str, Any], param_map: Mapping[str, str] | None = None) -> StudySpec:
        """Build from AI Platform training input (``trainingInput.hyperparameters``) given verbatim.

        ``param_map`` maps ``parameterName`` to the Hydra config key; without it each parameter's key is its
        name. With it, every parameter must be mapped.
        """
        from tuners import _spec_parsers

        return _spec_parsers.from_ai_platform(d, param_map)

    @classmethod
    def from_vertex(cls, d: Mapping[str, Any], param_map: Mapping[str, str] | None = None,
                    **overrides: Any) -> StudySpec:
        """Build from a Vertex AI ``StudySpec``-shaped dict (camelCase or snake_case keys).

        Budget fields are not part of a Vertex StudySpec (they sit on the HyperparameterTuningJob), so they
        may be given at the top level (``maxTrialCount``, ``parallelTrialCount``, ``maxFailedTrialCount``)
        or as keyword ``overrides`` (``max_trials=...``).
        """
        from tuners import _spec_parsers

        return _spec_parsers.from_vertex(d, param_map, overrides)

    def to_dict(self) -> dict[str, Any]:
        """The native dict form; ``StudySpec.from_dict(spec.to_dict()) == spec``."""
        from tuners import _spec_parsers

        return _spec_parsers.to_native(self)

    def to_vertex_dict(self) -> dict[str, Any]:
        """A Vertex AI ``StudySpec`` dict (camelCase, as accepted by ``aiplatform_v1.StudySpec``), plus
        ``maxTrialCount``/``parallelTrialCount``/``maxFailedTrialCount`` for the tuning job."""
        from tuners import _spec_parsers

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
    (``None`` unless COMPLETED, or STOPPED with a measurement). ``config_keys`` maps parameter names to Hydra
    override keys so that :meth:`overrides` needs no spec.
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

    def overrides(self) -> list[str]:
        """Hydra override strings ``key=value``, one per active parameter, in parameter order."""
        return [f"{self.config_keys.get(name, name)}={format_override_value(value)}"
                for name, value in self.parameters.items()]

    def curve(self, tag: str) -> list[tuple[int, float]]:
        """``(step, value)`` of metric ``tag`` over the trial's measurements, in step order."""
        return sorted((m.step, float(m.metrics[tag])) for m in self.measurements if tag in m.metrics)

