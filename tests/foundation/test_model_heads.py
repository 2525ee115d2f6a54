"""``model.head`` and the export signatures: inconsistent combinations are refused before compute, in one line
naming the key and the fix; consistent ones validate. No TensorFlow here."""
from __future__ import annotations

import pytest

from orchestrator.config.compose import compose
from orchestrator.config.validation import validate
from orchestrator.errors import ConfigError

REGRESSION = ["experiment=diabetes_regression"]

# (overrides, key named, a word of the fix)
INCONSISTENT = [
    (["model.head=linear", "data=diabetes"], "model.loss", "model.loss=mse"),
    (REGRESSION + ["model.loss=sparse_categorical_crossentropy"], "model.loss", "model.loss=mse"),
    (["model.loss=mse"], "model.loss", "sparse_categorical_crossentropy"),
    (["model.head=sigmoid"], "model.loss", "binary_crossentropy"),
    (["model.head=sigmoid", "model.loss=binary_crossentropy"], "model.head", "model.head=softmax"),
    (REGRESSION + ["model.metrics=[accuracy]"], "model.metrics", "model.metrics=[mae]"),
    (["model=mlp_regressor"], "model.head", "experiment=diabetes_regression"),
    (["data=diabetes"], "model.head", "model.head=linear"),
    (["export.signatures=[classification]"], "export.signatures", "serving_default"),
    (["export.signatures=[serving_default,regression]"], "export.signatures", "classification"),
    (REGRESSION + ["export.signatures=[serving_default,classification]"], "export.signatures", "regression"),
    (REGRESSION + ["export.outputs=[classes]"], "export.outputs", "export.outputs=[]"),
    (["export.outputs=[classes,classes]"], "export.outputs", "once"),
    (["export.outputs=[classes]", "export.output_name=classes"], "export.output_name", "rename"),
    (REGRESSION + ["quantization=int8", "quantization.max_accuracy_drop=0.01"], "quantization.max_accuracy_drop",
     "max_mae_increase"),
    (["quantization=int8", "quantization.max_mae_increase=1.0"], "quantization.max_mae_increase", "max_accuracy_drop"),
]


@pytest.mark.parametrize("overrides,key,fix", INCONSISTENT, ids=[" ".join(c[0]) for c in INCONSISTENT])
def test_inconsistent_head_is_refused_with_the_fix(overrides, key, fix):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert err.value.key == key
    assert fix in str(err.value) and "\n" not in str(err.value)


def test_a_closed_choice_lists_the_heads():
    with pytest.raises(ConfigError) as err:
        compose(["model.head=tanh"])
    assert "softmax" in str(err.value) and "linear" in str(err.value)


@pytest.mark.parametrize("overrides", [
    [],
    ["export.outputs=[classes]", "export.signatures=[serving_default,classification]"],
    REGRESSION,
    REGRESSION + ["quantization=int8", "quantization.max_mae_increase=2.0"],
    ["model.head=none", "model.builder=pkg.mod:build", "model.allowed_modules=[tf_keras,pkg]"],
])
def test_consistent_heads_validate(overrides):
    validate(compose(overrides))


def test_the_cli_answers_in_one_line(tfscale):
    result = tfscale("experiment=diabetes_regression", "model.loss=sparse_categorical_crossentropy")
    assert result.returncode == 2, result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "'model.loss'" in message and "model.loss=mse" in message
    assert not (tfscale.cwd / "runs").exists() and not (tfscale.cwd / "models").exists()


def test_regression_targets_load_as_values(tmp_path):
    import numpy as np

    from orchestrator.training.data import load_splits, targets_are_values

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "values.npz", x=rng.random((100, 4)).astype("float32"), y=rng.normal(150.0, 70.0, 100))
    cfg = compose(["data=files", f"data.path={tmp_path / 'values.npz'}", "model=mlp_regressor"])
    validate(cfg)
    assert targets_are_values(cfg)
    splits = load_splits(cfg.data, values=True)
    assert splits.y_train.dtype == np.float32 and splits.num_classes == 1
    offset, spread = splits.target_stats
    assert 100 < offset < 200 and 40 < spread < 100  # the linear head learns standardised targets
    assert load_splits(compose(["data=diabetes"]).data).target_stats is not None
    assert load_splits(compose([]).data).target_stats is None  # class ids: no standardising
