"""Invalid studies are rejected by the driver before any trial runs and before TensorFlow is imported."""
from __future__ import annotations

import pytest

from tfscale_testing import REPO, run_tfscale, tfscale_env

# Cases: (overrides, words the message must contain: the field and the fix).
CASES = {
    "min_above_max": (["study.parameters.1.min=300"], ["'units'", "min must be <= max", "min=300", "max=256"]),
    "log_scale_min_zero": (["study.parameters.0.min=0"], ["'learning_rate'", "UNIT_LOG_SCALE needs min > 0",
                                                          "positive min"]),
    "unknown_type": (["study.parameters.1.type=FLOAT32"], ["'units'", "type", "'FLOAT32'",
                                                          "INTEGER, DOUBLE, CATEGORICAL, DISCRETE"]),
    "empty_categorical": (["study.parameters.1.type=CATEGORICAL", "+study.parameters.1.values=[]"],
                          ["'units'", "CATEGORICAL", "non-empty list of values"]),
    "parallel_above_max": (["study.max_parallel_trials=20"], ["max_parallel_trials", "max_trials=8",
                                                              "Lower max_parallel_trials to 8"]),
    "bad_base_config": (["model.optimizer.name=adamm"], ["model.optimizer.name", "'adamm'", "sgd"]),
    "sweep_syntax": (["trainer.epochs=1,2"], ["trainer.epochs", "A study chooses the values"]),
}


@pytest.fixture
def no_tensorflow(tmp_path):
    """An environment where importing TensorFlow aborts the process with a marker message."""
    fake = tmp_path / "fake_tf"
    (fake / "tensorflow").mkdir(parents=True)
    (fake / "tensorflow" / "__init__.py").write_text('raise SystemExit("TENSORFLOW WAS IMPORTED")\n')
    return tfscale_env(PYTHONPATH=f"{fake}:{REPO}")


@pytest.mark.parametrize("name", list(CASES))
def test_invalid_study_is_rejected_before_any_trial(name, tmp_path, no_tensorflow):
    overrides, words = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    result = run_tfscale(["-m", "study=digits_lr_units", *overrides], work, env=no_tensorflow, timeout=120)
    assert result.returncode != 0, result.output
    assert "TENSORFLOW WAS IMPORTED" not in result.output
    assert "tfscale: error:" in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "Traceback" not in result.stderr
    assert not (work / "runs").exists(), "no study or trial directory may be created"


def test_seed_spec_composes_and_validates_in_full():
    """The seed's AI Platform YAML, verbatim: 10 trials, 2 parallel, both parameters mapped and valid."""
    from tuners import Goal, ParameterType, ScaleType, Study

    from orchestrator.config.compose import compose
    from orchestrator.config.validation import validate
    from orchestrator.launch.sweeper import study_spec

    cfg = compose(["study=seed_mnist"])
    assert cfg.model.optimizer.name == "sgd"
    spec, name = study_spec(cfg.study)
    assert name == "seed_mnist"
    assert (spec.max_trials, spec.max_parallel_trials, spec.metric.tag, spec.metric.goal) == (10, 2, "accuracy",
                                                                                               Goal.MAXIMIZE)
    n_layers, momentum = spec.parameters
    assert (n_layers.type, n_layers.min_value, n_layers.max_value, n_layers.scale) == (
        ParameterType.INTEGER, 10, 100, ScaleType.UNIT_LINEAR_SCALE)
    assert (momentum.type, momentum.min_value, momentum.max_value, momentum.scale) == (
        ParameterType.DOUBLE, 0.1, 1.0, ScaleType.UNIT_LOG_SCALE)
    assert (n_layers.config_key, momentum.config_key) == ("model.layers.1.units", "model.optimizer.momentum")
    first = Study(spec).suggest(2)
    for trial in first:
        trial_cfg = compose(["study=seed_mnist", *trial.overrides()])
        validate(trial_cfg)
        assert trial_cfg.model.layers[1].units == trial.parameters["n_layers"]


def test_unmapped_ai_platform_parameter_is_named(tmp_path, no_tensorflow):
    work = tmp_path / "work"
    work.mkdir()
    result = run_tfscale(["-m", "study=seed_mnist", "~study.param_map.momentum"], work, env=no_tensorflow, timeout=120)
    assert result.returncode != 0
    assert "momentum" in result.stderr and "param_map" in result.stderr, result.stderr
    assert not (work / "runs").exists()
