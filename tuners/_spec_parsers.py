"""Conversions between :class:`~tuners.study_spec.StudySpec` and its dict forms.

Three input dialects: the native tfscale form (``conf/study/*.yaml``), AI Platform training input
(``trainingInput.hyperparameters``) and Vertex AI ``StudySpec``. Errors raised while building parameters are
re-labelled with the dialect's own field names and the parameter's position, so the message points at the
line the user wrote.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuners.errors import StudySpecError
if TYPE_CHECKING:  # the class is passed in: study_spec imports this module
    from tuners.study_spec import StudySpec

from tuners.spec_parts import (
    Algorithm,
    EarlyStoppingRule,
    EarlyStoppingSpec,
    MetricSpec,
    ParameterSpec,
    ParameterType,
    ScaleType,
)

_SCALE_ALIASES = {"linear": "UNIT_LINEAR_SCALE", "log": "UNIT_LOG_SCALE", "reverse_log": "UNIT_REVERSE_LOG_SCALE",
                  "scale_type_unspecified": "UNIT_LINEAR_SCALE", "none": "UNIT_LINEAR_SCALE"}
_TYPE_ALIASES = {"int": "INTEGER", "float": "DOUBLE", "choice": "CATEGORICAL"}

_NATIVE_NAMES = {"min_value": "min", "max_value": "max", "config_key": "key", "parent_values": "when"}
_AI_NAMES = {"min_value": "minValue", "max_value": "maxValue", "config_key": "param_map entry",
             "max_parallel_trials": "maxParallelTrials", "max_trials": "maxTrials",
             "max_failed_trials": "maxFailedTrials", "metric.tag": "hyperparameterMetricTag",
             "metric.goal": "goal", "parameters[": "params["}
_VERTEX_NAMES = {"min_value": "minValue", "max_value": "maxValue", "config_key": "param_map entry",
                 "max_parallel_trials": "parallelTrialCount", "max_trials": "maxTrialCount",
                 "max_failed_trials": "maxFailedTrialCount", "metric.tag": "metricId", "metric.goal": "goal",
                 "parent_values": "parent values"}


def _relabel(message: str, names: Mapping[str, str]) -> str:
    for ours, theirs in names.items():
        if ours.endswith("["):
            message = message.replace(ours, theirs)
        else:
            message = re.sub(rf"(?<![\w.]){re.escape(ours)}(?![\w])", theirs, message)
    return message


def _scale(value: Any, field: str) -> Any:
    if value is None:
        return ScaleType.UNIT_LINEAR_SCALE
    if isinstance(value, str):
        return _SCALE_ALIASES.get(value.strip().lower(), value)
    return value


def _type(value: Any) -> Any:
    if isinstance(value, str):
        return _TYPE_ALIASES.get(value.strip().lower(), value)
    return value


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise StudySpecError(f"{where}: unknown field(s) {unknown}. Allowed fields: {sorted(allowed)}.")


def _build(names: Mapping[str, str], prefix: str, build: Any) -> Any:
    try:
        return build()
    except StudySpecError as err:
        raise StudySpecError(prefix + _relabel(str(err), names)) from None


# -- native -------------------------------------------------------------------------------------------
_NATIVE_PARAM_KEYS = {"name", "type", "min", "max", "scale", "values", "key", "children", "when"}
_NATIVE_TOP_KEYS = {"metric", "metrics", "parameters", "max_trials", "max_parallel_trials", "max_failed_trials",
                    "algorithm", "seed", "early_stopping"}


def _native_param(d: Mapping[str, Any], where: str) -> ParameterSpec:
    if not isinstance(d, Mapping):
        raise StudySpecError(f"{where}: must be a mapping with name/type/..., but got {d!r}.")
    _check_keys(d, _NATIVE_PARAM_KEYS, f"{where} '{d.get('name')}'")
    children = tuple(_native_param(c, f"{where}.children[{i}]") for i, c in enumerate(d.get("children") or ()))
    when = d.get("when")
    return _build(_NATIVE_NAMES, f"{where} ", lambda: ParameterSpec(
        name=d.get("name"), type=_type(d.get("type")), min_value=d.get("min"), max_value=d.get("max"),
        scale=_scale(d.get("scale"), "scale"), values=tuple(d.get("values") or ()),
        config_key=d.get("key", d.get("name")), children=children,
        parent_values=tuple(when if isinstance(when, (list, tuple)) else ([when] if when is not None else ()))))


def _native_metric(metric: Any, where: str) -> MetricSpec:
    if isinstance(metric, str):
        metric = {"tag": metric}
    if not isinstance(metric, Mapping):
        raise StudySpecError(f"{where}: must be a mapping {{tag: ..., goal: MAXIMIZE|MINIMIZE}}, but got {metric!r}.")
    _check_keys(metric, {"tag", "goal"}, where)
    names = {} if where == "metric" else {"metric.tag": "tag", "metric.goal": "goal"}
    return _build(names, "" if where == "metric" else f"{where}: ",
                  lambda: MetricSpec(metric.get("tag"), metric.get("goal", "MAXIMIZE")))


def _native_metrics(d: Mapping[str, Any]) -> dict[str, Any]:
    """``metric=`` or ``metrics=`` keyword arguments of the spec from the native ``metric``/``metrics`` keys."""
    if "metrics" not in d:
        return {"metric": _native_metric(d.get("metric"), "metric")}
    if d.get("metric") is not None:
        raise StudySpecError("study: metric and metrics are both set. Give metric for one objective or metrics "
                             "(a list of {tag, goal}) for several, not both.")
    metrics = d["metrics"]
    if not isinstance(metrics, (list, tuple)) or not metrics:
        raise StudySpecError(f"metrics: must be a non-empty list of {{tag: ..., goal: MAXIMIZE|MINIMIZE}}, but got "
                             f"{metrics!r}.")
    return {"metrics": tuple(_native_metric(m, f"metrics[{i}]") for i, m in enumerate(metrics))}


def from_native(spec_cls: type[StudySpec], d: Mapping[str, Any]) -> StudySpec:
    """Build a spec from the native tfscale dict form."""
    if not isinstance(d, Mapping):
        raise StudySpecError(f"study: must be a mapping, but got {type(d).__name__}.")
    _check_keys(d, _NATIVE_TOP_KEYS, "study")
    objectives = _native_metrics(d)
    params = d.get("parameters")
    if not isinstance(params, (list, tuple)):
        raise StudySpecError(f"parameters: must be a list of parameter mappings, but got {params!r}.")
    stopping = d.get("early_stopping") or {}
    if isinstance(stopping, str):
        stopping = {"rule": stopping}
    _check_keys(stopping, {"rule", "min_trials", "min_steps", "margin", "max_step"}, "early_stopping")
    return _build(_NATIVE_NAMES, "", lambda: spec_cls(
        **objectives,
        parameters=tuple(_native_param(p, f"parameters[{i}]") for i, p in enumerate(params)),
        max_trials=d.get("max_trials", 10),
        max_parallel_trials=d.get("max_parallel_trials", 1),
        max_failed_trials=d.get("max_failed_trials"),
        algorithm=d.get("algorithm") or Algorithm.ALGORITHM_UNSPECIFIED,
        early_stopping=EarlyStoppingSpec(**{k: v for k, v in stopping.items()}),
        seed=d.get("seed", 0)))


def _native_param_dict(p: ParameterSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "type": p.type.name}
    if p.type in (ParameterType.INTEGER, ParameterType.DOUBLE):
        out["min"], out["max"] = p.min_value, p.max_value
    else:
        out["values"] = list(p.values)
    out["scale"] = p.scale.name
    out["key"] = p.config_key
    if p.parent_values:
        out["when"] = list(p.parent_values)
    if p.children:
        out["children"] = [_native_param_dict(c) for c in p.children]
    return out


def to_native(spec: StudySpec) -> dict[str, Any]:
    """The native dict form of ``spec``."""
    es = spec.early_stopping
    # One objective keeps the `metric:` form, so stores written before `metrics:` existed still match.
    objectives: dict[str, Any] = (
        {"metrics": [{"tag": m.tag, "goal": m.goal.name} for m in spec.metrics]} if spec.is_multi_objective
        else {"metric": {"tag": spec.metric.tag, "goal": spec.metric.goal.name}})
    return {
        **objectives,
        "parameters": [_native_param_dict(p) for p in spec.parameters],
        "max_trials": spec.max_trials,
        "max_parallel_trials": spec.max_parallel_trials,
        "max_failed_trials": spec.max_failed_trials,
        "algorithm": spec.algorithm.name,
        "seed": spec.seed,
        "early_stopping": {"rule": es.rule.value, "min_trials": es.min_trials, "min_steps": es.min_steps,
                           "margin": es.margin, "max_step": es.max_step},
    }


# -- AI Platform --------------------------------------------------------------------------------------
_AI_TOP_KEYS = {"goal", "params", "maxTrials", "maxParallelTrials", "maxFailedTrials", "hyperparameterMetricTag",
                "resumePreviousJobId", "enableTrialEarlyStopping", "algorithm"}
_AI_PARAM_KEYS = {"parameterName", "type", "minValue", "maxValue", "scaleType", "categoricalValues",
                  "discreteValues"}


def from_ai_platform(spec_cls: type[StudySpec], d: Mapping[str, Any], param_map: Mapping[str, str] | None) -> StudySpec:
    """Build a spec from AI Platform ``trainingInput.hyperparameters`` (or any enclosing level)."""
    if not isinstance(d, Mapping):
        raise StudySpecError(f"trainingInput: must be a mapping, but got {type(d).__name__}.")
    if "trainingInput" in d:
        d = d["trainingInput"]
    if "hyperparameters" in d:
        d = d["hyperparameters"]
    _check_keys(d, _AI_TOP_KEYS, "hyperparameters")
    params = d.get("params")
    if not isinstance(params, (list, tuple)) or not params:
        raise StudySpecError(f"hyperparameters.params: must be a non-empty list, but got {params!r}. Add a "
                             f"params entry per parameter.")
    names = [p.get("parameterName") for p in params if isinstance(p, Mapping)]
    if param_map is not None:
        missing = [n for n in names if n not in param_map]
        if missing:
            raise StudySpecError(
                f"param_map: no config key mapping for parameter(s) {missing}; param_map has "
                f"{sorted(param_map)}. Add e.g. {missing[0]!r}: 'model.{missing[0]}'.")
    built = []
    for i, p in enumerate(params):
        if not isinstance(p, Mapping):
            raise StudySpecError(f"params[{i}]: must be a mapping, but got {p!r}.")
        _check_keys(p, _AI_PARAM_KEYS, f"params[{i}] '{p.get('parameterName')}'")
        kind = _type(p.get("type"))
        values = p.get("categoricalValues") if str(kind).upper() == "CATEGORICAL" else p.get("discreteValues")
        name = p.get("parameterName")
        built.append(_build(_AI_NAMES, f"params[{i}] ", lambda p=p, kind=kind, values=values, name=name: (
            ParameterSpec(name=name, type=kind, min_value=p.get("minValue"), max_value=p.get("maxValue"),
                          scale=_scale(p.get("scaleType"), "scaleType"), values=tuple(values or ()),
                          config_key=(param_map or {}).get(name, name)))))
    failed = d.get("maxFailedTrials")
    return _build(_AI_NAMES, "", lambda: spec_cls(
        metric=MetricSpec(d.get("hyperparameterMetricTag") or "training/hptuning/metric",
                          d.get("goal") or "MAXIMIZE"),
        parameters=tuple(built),
        max_trials=d.get("maxTrials", 1),
        max_parallel_trials=d.get("maxParallelTrials", 1),
        max_failed_trials=failed if failed else None,
        algorithm=d.get("algorithm") or Algorithm.ALGORITHM_UNSPECIFIED,
        early_stopping=EarlyStoppingSpec(
            rule=EarlyStoppingRule.MEDIAN if d.get("enableTrialEarlyStopping") else EarlyStoppingRule.NONE)))


# -- Vertex -------------------------------------------------------------------------------------------
def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _camelize(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {_camel(k): _camelize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_camelize(v) for v in obj]
    return obj


_VALUE_SPECS = {"doubleValueSpec": ParameterType.DOUBLE, "integerValueSpec": ParameterType.INTEGER,
                "categoricalValueSpec": ParameterType.CATEGORICAL, "discreteValueSpec": ParameterType.DISCRETE}


def _number(value: Any) -> Any:
    # proto3 JSON renders int64 as strings.
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return float(value)
    return value


def _vertex_param(p: Mapping[str, Any], where: str, param_map: Mapping[str, str] | None,
                  parent_values: tuple[Any, ...] = ()) -> ParameterSpec:
    name = p.get("parameterId")
    specs = [k for k in _VALUE_SPECS if k in p]
    if len(specs) != 1:
        raise StudySpecError(
            f"{where} '{name}': exactly one of {sorted(_VALUE_SPECS)} must be set, but got {specs or 'none'}. "
            f"Keep the one matching the parameter type.")
    kind = _VALUE_SPECS[specs[0]]
    vs = p[specs[0]] or {}
    if param_map is not None and name not in param_map:
        raise StudySpecError(
            f"{where} '{name}': no config key mapping in param_map (keys {sorted(param_map)}). Add "
            f"{name!r}: 'model.{name}'.")
    children = []
    for j, c in enumerate(p.get("conditionalParameterSpecs") or ()):
        parents = (c.get("parentDiscreteValues") or c.get("parentIntValues")
                   or c.get("parentCategoricalValues") or {}).get("values") or ()
        parents = tuple(_number(v) for v in parents) if kind is not ParameterType.CATEGORICAL else tuple(parents)
        children.append(_vertex_param(c.get("parameterSpec") or {}, f"{where}.conditionalParameterSpecs[{j}]",
                                      param_map, parents))
    values = tuple(_number(v) if kind is ParameterType.DISCRETE else v for v in vs.get("values") or ())
    return _build(_VERTEX_NAMES, f"{where} ", lambda: ParameterSpec(
        name=name, type=kind, min_value=_number(vs.get("minValue")), max_value=_number(vs.get("maxValue")),
        scale=_scale(p.get("scaleType"), "scaleType"), values=values,
        config_key=(param_map or {}).get(name, name), children=tuple(children), parent_values=parent_values))


def from_vertex(spec_cls: type[StudySpec], d: Mapping[str, Any], param_map: Mapping[str, str] | None,
                overrides: Mapping[str, Any]) -> StudySpec:
    """Build a spec from a Vertex ``StudySpec`` dict (or a HyperparameterTuningJob dict holding one)."""
    if not isinstance(d, Mapping):
        raise StudySpecError(f"studySpec: must be a mapping, but got {type(d).__name__}.")
    d = _camelize(d)
    job = d
    d = d.get("studySpec", d)
    metrics = d.get("metrics") or []
    if not isinstance(metrics, (list, tuple)) or not metrics \
            or not all(isinstance(m, Mapping) for m in metrics):
        raise StudySpecError(
            f"metrics: a studySpec needs a list of metrics entries {{metricId: ..., goal: MAXIMIZE|MINIMIZE}}, "
            f"but got {metrics!r}. Add one entry per objective.")
    stopping = EarlyStoppingRule.NONE
    if "medianAutomatedStoppingSpec" in d:
        stopping = EarlyStoppingRule.MEDIAN
    elif "decayCurveStoppingSpec" in d:
        stopping = EarlyStoppingRule.DECAY_CURVE
    algorithm = d.get("algorithm") or Algorithm.ALGORITHM_UNSPECIFIED
    params = tuple(_vertex_param(p, f"parameters[{i}]", param_map) for i, p in enumerate(d.get("parameters") or ()))
    kwargs = {
        "max_trials": job.get("maxTrialCount", 10),
        "max_parallel_trials": job.get("parallelTrialCount", 1),
        "max_failed_trials": job.get("maxFailedTrialCount") or None,
        "seed": 0,
    }
    kwargs.update(overrides)
    objectives = tuple(_build({"metric.tag": "metricId", "metric.goal": "goal"}, f"metrics[{i}]: ",
                              lambda m=m: MetricSpec(m.get("metricId"), m.get("goal") or "MAXIMIZE"))
                       for i, m in enumerate(metrics))
    return _build(_VERTEX_NAMES, "", lambda: spec_cls(
        metrics=objectives,
        parameters=params, algorithm=algorithm, early_stopping=EarlyStoppingSpec(rule=stopping), **kwargs))


def _vertex_param_dict(p: ParameterSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"parameterId": p.name}
    if p.type is ParameterType.DOUBLE:
        out["doubleValueSpec"] = {"minValue": p.min_value, "maxValue": p.max_value}
    elif p.type is ParameterType.INTEGER:
        out["integerValueSpec"] = {"minValue": int(p.min_value), "maxValue": int(p.max_value)}
    elif p.type is ParameterType.CATEGORICAL:
        out["categoricalValueSpec"] = {"values": list(p.values)}
    else:
        out["discreteValueSpec"] = {"values": [float(v) for v in p.values]}
    if p.type is not ParameterType.CATEGORICAL:
        out["scaleType"] = p.scale.name
    if p.children:
        parent_key = {ParameterType.CATEGORICAL: "parentCategoricalValues",
                      ParameterType.INTEGER: "parentIntValues",
                      ParameterType.DISCRETE: "parentDiscreteValues"}[p.type]
        out["conditionalParameterSpecs"] = [
            {parent_key: {"values": list(c.parent_values)}, "parameterSpec": _vertex_param_dict(c)}
            for c in p.children]
    return out


_VERTEX_ALGORITHMS = {Algorithm.GRID_SEARCH: "GRID_SEARCH", Algorithm.RANDOM_SEARCH: "RANDOM_SEARCH"}


def to_vertex(spec: StudySpec) -> dict[str, Any]:
    """Vertex ``StudySpec`` dict of ``spec``; algorithms Vertex does not name map to its default (a GP bandit,
    multi-objective when there are several metrics)."""
    out: dict[str, Any] = {
        "metrics": [{"metricId": m.tag, "goal": m.goal.name} for m in spec.metrics],
        "parameters": [_vertex_param_dict(p) for p in spec.parameters],
        "algorithm": _VERTEX_ALGORITHMS.get(spec.algorithm, "ALGORITHM_UNSPECIFIED"),
        "measurementSelectionType": "BEST_MEASUREMENT",
    }
    if spec.early_stopping.rule is EarlyStoppingRule.MEDIAN:
        out["medianAutomatedStoppingSpec"] = {"useElapsedDuration": False}
    elif spec.early_stopping.rule is EarlyStoppingRule.DECAY_CURVE:
        out["decayCurveStoppingSpec"] = {"useElapsedDuration": False}
    out["maxTrialCount"] = spec.max_trials
    out["parallelTrialCount"] = spec.max_parallel_trials
    out["maxFailedTrialCount"] = spec.max_failed_trials or 0
    return out


def dialect(d: Mapping[str, Any]) -> str:
    """Which form a study dict is written in: ``ai_platform``, ``vertex`` or ``native``.

    Both Vertex and the native form may have a ``metrics`` list: Vertex entries name ``metricId``, native
    ones ``tag``.
    """
    if {"trainingInput", "hyperparameters", "hyperparameterMetricTag", "params"} & set(d):
        return "ai_platform"
    if {"studySpec", "study_spec"} & set(d):
        return "vertex"
    metrics = d.get("metrics")
    if isinstance(metrics, (list, tuple)) and any(
            isinstance(m, Mapping) and {"metricId", "metric_id"} & set(m) for m in metrics):
        return "vertex"
    return "native"


def from_any_dict(spec_cls: type[StudySpec], d: Mapping[str, Any],
                  param_map: Mapping[str, str] | None = None) -> StudySpec:
    """Dispatch on the shape of ``d``: AI Platform, Vertex or native. ``param_map`` (parameterName to config
    key) is for the AI Platform and Vertex forms; native parameters name their key themselves."""
    if not isinstance(d, Mapping):
        raise StudySpecError(f"study: must be a mapping, but got {type(d).__name__}.")
    if param_map is not None and not isinstance(param_map, Mapping):
        raise StudySpecError(f"param_map: must map parameterName to a config key, but got {param_map!r}. "
                             f"Use e.g. param_map: {{n_layers: model.layers.1.units}}.")
    form = dialect(d)
    if form == "ai_platform":
        return from_ai_platform(spec_cls, d, param_map)
    if form == "vertex":
        return from_vertex(spec_cls, d, param_map, {})
    if param_map is not None:
        raise StudySpecError("param_map: only AI Platform and Vertex specs use it; native parameters name their "
                             "config key with key:. Remove param_map.")
    return from_native(spec_cls, d)

