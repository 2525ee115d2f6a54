import pytest

from tuners import (
    Algorithm,
    EarlyStoppingRule,
    Goal,
    MetricSpec,
    ParameterSpec,
    ParameterType,
    ScaleType,
    StudySpec,
    StudySpecError,
)

SEED_YAML = {"trainingInput": {"hyperparameters": {
    "goal": "MAXIMIZE", "hyperparameterMetricTag": "accuracy", "maxTrials": 10, "maxParallelTrials": 2,
    "enableTrialEarlyStopping": True,
    "params": [
        {"parameterName": "n_layers", "type": "INTEGER", "minValue": 10, "maxValue": 100,
         "scaleType": "UNIT_LINEAR_SCALE"},
        {"parameterName": "momentum", "type": "DOUBLE", "minValue": 0.1, "maxValue": 1.0,
         "scaleType": "UNIT_LOG_SCALE"},
    ]}}}


def ai_platform(**param_changes):
    d = {"trainingInput": {"hyperparameters": dict(SEED_YAML["trainingInput"]["hyperparameters"])}}
    params = [dict(p) for p in d["trainingInput"]["hyperparameters"]["params"]]
    params[1].update(param_changes)
    d["trainingInput"]["hyperparameters"]["params"] = params
    return d


def test_seed_ai_platform_yaml():
    spec = StudySpec.from_ai_platform(SEED_YAML, param_map={"n_layers": "model.n_layers",
                                                            "momentum": "model.optimizer.momentum"})
    assert spec.metric == MetricSpec("accuracy", Goal.MAXIMIZE)
    assert (spec.max_trials, spec.max_parallel_trials) == (10, 2)
    n_layers, momentum = spec.parameters
    assert (n_layers.type, n_layers.min_value, n_layers.max_value, n_layers.scale) == (
        ParameterType.INTEGER, 10, 100, ScaleType.UNIT_LINEAR_SCALE)
    assert (momentum.type, momentum.min_value, momentum.max_value, momentum.scale) == (
        ParameterType.DOUBLE, 0.1, 1.0, ScaleType.UNIT_LOG_SCALE)
    assert momentum.config_key == "model.optimizer.momentum"
    assert spec.early_stopping.rule is EarlyStoppingRule.MEDIAN
    assert spec.algorithm.resolved() is Algorithm.GAUSSIAN_PROCESS_BANDIT


@pytest.mark.parametrize("level", ["trainingInput", "hyperparameters"])
def test_ai_platform_accepts_inner_levels(level):
    inner = SEED_YAML["trainingInput"] if level == "hyperparameters" else SEED_YAML
    assert StudySpec.from_ai_platform(inner[level] if level == "trainingInput" else inner).max_trials == 10


def test_from_dict_detects_ai_platform_and_round_trips_native():
    spec = StudySpec.from_dict(SEED_YAML)
    assert StudySpec.from_dict(spec.to_dict()) == spec


def test_vertex_form_with_conditionals_round_trips():
    vertex = {
        "metrics": [{"metricId": "loss", "goal": "MINIMIZE"}],
        "parameters": [
            {"parameterId": "lr", "doubleValueSpec": {"minValue": 1e-4, "maxValue": 0.1},
             "scaleType": "UNIT_LOG_SCALE"},
            {"parameterId": "optimizer", "categoricalValueSpec": {"values": ["sgd", "adam"]},
             "conditionalParameterSpecs": [{
                 "parentCategoricalValues": {"values": ["sgd"]},
                 "parameterSpec": {"parameterId": "momentum", "discreteValueSpec": {"values": [0.0, 0.9]}}}]},
            {"parameterId": "layers", "integerValueSpec": {"minValue": "1", "maxValue": "4"}},
        ],
        "algorithm": "RANDOM_SEARCH",
        "measurementSelectionType": "LAST_MEASUREMENT",
    }
    spec = StudySpec.from_vertex(vertex, max_trials=20)
    assert spec.metric.goal is Goal.MINIMIZE and spec.algorithm is Algorithm.RANDOM_SEARCH
    assert spec.parameter("layers").max_value == 4 and spec.max_trials == 20
    child = spec.parameter("momentum")
    assert child.parent_values == ("sgd",) and child.values == (0.0, 0.9)
    out = spec.to_vertex_dict()
    assert out["parameters"][1]["conditionalParameterSpecs"][0]["parentCategoricalValues"] == {"values": ["sgd"]}
    assert StudySpec.from_vertex(out) == spec


def test_native_form():
    spec = StudySpec.from_dict({
        "metric": {"tag": "accuracy", "goal": "maximize"}, "max_trials": 8, "max_parallel_trials": 2,
        "algorithm": "tpe", "seed": 3, "early_stopping": {"rule": "decay_curve", "margin": 0.01},
        "parameters": [{"name": "lr", "type": "double", "min": 1e-4, "max": 0.1, "scale": "log",
                        "key": "model.optimizer.learning_rate"}]})
    assert spec.algorithm is Algorithm.TPE and spec.seed == 3
    assert spec.early_stopping.rule is EarlyStoppingRule.DECAY_CURVE
    assert spec.parameters[0].config_key == "model.optimizer.learning_rate"


@pytest.mark.parametrize("changes, fragments", [
    ({"minValue": 1.0, "maxValue": 0.1},
     ["params[1] 'momentum'", "minValue must be <= maxValue", "minValue=1.0, maxValue=0.1", "Swap them"]),
    ({"minValue": 0.0}, ["params[1] 'momentum'", "UNIT_LOG_SCALE needs minValue > 0", "minValue=0.0",
                         "positive minValue"]),
    ({"scaleType": "UNIT_REVERSE_LOG_SCALE", "minValue": -1.0}, ["UNIT_REVERSE_LOG_SCALE needs minValue > 0"]),
    ({"type": "FLOAT64"}, ["'momentum'", "'FLOAT64'", "INTEGER, DOUBLE, CATEGORICAL, DISCRETE"]),
    ({"type": "CATEGORICAL", "minValue": None, "maxValue": None, "scaleType": None, "categoricalValues": []},
     ["'momentum'", "non-empty list of values", "values=[]"]),
])
def test_invalid_parameters_name_field_value_and_fix(changes, fragments):
    d = ai_platform(**changes)
    for p in d["trainingInput"]["hyperparameters"]["params"]:
        for key in [k for k, v in p.items() if v is None]:
            del p[key]
    with pytest.raises(StudySpecError) as err:
        StudySpec.from_ai_platform(d)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_min_greater_than_max_exact_message():
    with pytest.raises(StudySpecError, match=r"^params\[1\] 'momentum': minValue must be <= maxValue, but got "
                                             r"minValue=1.0, maxValue=0.1. Swap them.$"):
        StudySpec.from_ai_platform(ai_platform(minValue=1.0, maxValue=0.1))


def test_parallel_above_max_trials():
    d = ai_platform()
    d["trainingInput"]["hyperparameters"]["maxParallelTrials"] = 20
    with pytest.raises(StudySpecError, match=r"maxParallelTrials must be <= maxTrials.*=20.*=10.*Lower"):
        StudySpec.from_ai_platform(d)


def test_duplicate_names():
    d = ai_platform(parameterName="n_layers")
    with pytest.raises(StudySpecError, match=r"'n_layers': duplicate parameter name.*unique"):
        StudySpec.from_ai_platform(d)


def test_unknown_algorithm_lists_allowed():
    with pytest.raises(StudySpecError, match=r"algorithm: unknown value 'BAYES'.*GAUSSIAN_PROCESS_BANDIT"):
        StudySpec.from_dict({**StudySpec.from_dict(SEED_YAML).to_dict(), "algorithm": "BAYES"})


def test_missing_config_key_mapping():
    with pytest.raises(StudySpecError, match=r"param_map: no config key mapping for parameter\(s\) \['momentum'\]"):
        StudySpec.from_ai_platform(SEED_YAML, param_map={"n_layers": "model.n_layers"})
    with pytest.raises(StudySpecError, match=r"'lr': no config key mapping. Set config_key"):
        StudySpec(MetricSpec("acc"), (ParameterSpec("lr", "DOUBLE", 0.1, 1.0),))


def test_native_unknown_field_and_child_with_infeasible_parent():
    with pytest.raises(StudySpecError, match=r"unknown field\(s\) \['mx'\]"):
        StudySpec.from_dict({"metric": "acc", "parameters": [{"name": "x", "type": "DOUBLE", "min": 0, "mx": 1}]})
    with pytest.raises(StudySpecError, match=r"child 'm' is activated by 'nag'"):
        StudySpec.from_dict({"metric": "acc", "parameters": [{
            "name": "o", "type": "CATEGORICAL", "values": ["sgd"],
            "children": [{"name": "m", "type": "DOUBLE", "min": 0, "max": 1, "when": ["nag"]}]}]})


def test_overrides_use_config_keys():
    from tuners import Trial

    spec = StudySpec.from_ai_platform(SEED_YAML, {"n_layers": "model.n_layers", "momentum": "model.opt.momentum"})
    trial = Trial(0, {"n_layers": 12, "momentum": 0.5},
                  config_keys={p.name: p.config_key for p in spec.all_parameters()})
    assert trial.overrides() == ["model.n_layers=12", "model.opt.momentum=0.5"]
