"""The parts of a study spec: its enums (goal, parameter type, scale type, trial status, algorithm, early
stopping rule) and the frozen, validated specs of one parameter, the metric and early stopping.

:mod:`tuners.study_spec` assembles them into a :class:`~tuners.study_spec.StudySpec`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from tuners.errors import StudySpecError

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
    """Search algorithm; ALGORITHM_UNSPECIFIED means the default: GAUSSIAN_PROCESS_BANDIT for one metric,
    NSGA2 for several (a multi-objective study's spec resolves it when it is built)."""

    ALGORITHM_UNSPECIFIED = "ALGORITHM_UNSPECIFIED"
    GRID_SEARCH = "GRID_SEARCH"
    RANDOM_SEARCH = "RANDOM_SEARCH"
    QUASI_RANDOM_SEARCH = "QUASI_RANDOM_SEARCH"
    GAUSSIAN_PROCESS_BANDIT = "GAUSSIAN_PROCESS_BANDIT"
    TPE = "TPE"
    VIZIER = "VIZIER"
    NSGA2 = "NSGA2"

    def resolved(self) -> Algorithm:
        """The algorithm actually run: ALGORITHM_UNSPECIFIED maps to GAUSSIAN_PROCESS_BANDIT."""
        return Algorithm.GAUSSIAN_PROCESS_BANDIT if self is Algorithm.ALGORITHM_UNSPECIFIED else self

    @property
    def handles_several_metrics(self) -> bool:
        """Whether the algorithm can run a multi-objective study: NSGA2 optimises every metric, and the
        grid and (quasi-)random searches ignore objectives altogether."""
        return self in _MULTI_OBJECTIVE_ALGORITHMS


_MULTI_OBJECTIVE_ALGORITHMS = frozenset({Algorithm.NSGA2, Algorithm.GRID_SEARCH, Algorithm.RANDOM_SEARCH,
                                         Algorithm.QUASI_RANDOM_SEARCH})


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
