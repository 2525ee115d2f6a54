"""Bad quantization settings are rejected before training, naming the setting and the fix."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.config.compose import compose
from orchestrator.errors import ConfigError
from orchestrator.artifacts.quantization import tflite_path
from orchestrator.config.quantization import QAT_LAYERS, check, expected_train_rows


def _check(*overrides: str) -> None:
    check(compose(list(overrides)))


@pytest.mark.parametrize("mode", ["none", "dynamic", "float16", "int8", "qat"])
def test_every_mode_composes_and_validates(mode):
    cfg = compose([f"quantization={mode}"])
    assert cfg.quantization.mode == mode
    check(cfg)


def test_unknown_mode_names_the_modes():
    with pytest.raises(ConfigError) as err:
        _check("quantization.mode=int4")
    assert err.value.key == "quantization.mode"
    assert "dynamic, float16, int8, qat" in str(err.value)


def test_unknown_mode_override_is_one_line_with_the_modes(tfscale):
    run = tfscale("quantization.mode=foo")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "tfscale: error: Invalid config 'quantization.mode' = 'foo'. Use one of: none, dynamic, float16, int8, qat."]
    assert not (tfscale.cwd / "models").exists() and not (tfscale.cwd / "runs").exists()


def test_unknown_group_option_is_a_compose_error(tfscale):
    run = tfscale("quantization=int4")
    assert run.returncode == 2
    assert "Did you mean quantization=int8?" in run.stderr


@pytest.mark.parametrize("mode", ["int8", "qat"])
def test_zero_calibration_batches(tfscale, mode):
    run = tfscale(f"quantization={mode}", "quantization.calibration_batches=0")
    assert run.returncode == 2
    assert "'quantization.calibration_batches' = 0" in run.stderr
    assert "quantization.calibration_batches=100" in run.stderr
    assert not (tfscale.cwd / "models").exists() and not (tfscale.cwd / "runs").exists()


def test_calibration_batch_size_must_be_positive():
    with pytest.raises(ConfigError) as err:
        _check("quantization=int8", "quantization.calibration_batch_size=0")
    assert err.value.key == "quantization.calibration_batch_size"


def test_data_without_training_rows_is_rejected_for_int8(tfscale):
    # The file must exist for data validation to get that far: a CSV with a header and no rows.
    (tfscale.cwd / "header_only.csv").write_text("a,b,y\n")
    run = tfscale("quantization=int8", "data=files", "data.path=header_only.csv")
    assert run.returncode == 2, run.output
    assert "'data.path' = 'header_only.csv'" in run.stderr
    assert "no training rows" in run.stderr and "quantization=dynamic or float16" in run.stderr
    # Modes that need no calibration do not care.
    check(compose(["quantization=dynamic", "data=files", f"data.path={tfscale.cwd / 'header_only.csv'}"]))


def test_expected_train_rows_follows_the_splits():
    d = compose(["data.validation_split=0.1", "data.test_split=0.2"]).data
    assert expected_train_rows(d) == 1797 - 360 - 180  # what load_splits produces for digits
    d = compose(["data=files", "data.path=/nonexistent.npz"]).data
    assert expected_train_rows(d) is None  # unknown: checked again before training


def test_qat_rejects_a_layer_the_toolkit_cannot_wrap(tfscale):
    run = tfscale("quantization=qat", "+model.layers.1={_target_:tf_keras.layers.LayerNormalization}")
    assert run.returncode == 2
    assert "model.layers[1]._target_" in run.stderr
    assert "LayerNormalization" in run.stderr and "quantization=int8" in run.stderr
    assert run.seconds < 15  # rejected before TensorFlow or training


def test_qat_accepts_the_bundled_models():
    for model in ("mlp", "cnn"):
        _check("quantization=qat", f"model={model}")
    assert {"Dense", "Conv2D", "Flatten", "Reshape", "MaxPooling2D", "Dropout"} <= QAT_LAYERS


def test_qat_needs_float32_training():
    with pytest.raises(ConfigError) as err:
        _check("quantization=qat", "trainer.mixed_precision=mixed_bfloat16")
    assert err.value.key == "trainer.mixed_precision"


@pytest.mark.parametrize("gate", [-0.1, 1.5])
def test_gate_is_a_fraction(gate):
    with pytest.raises(ConfigError) as err:
        _check("quantization=int8", f"quantization.max_accuracy_drop={gate}")
    assert err.value.key == "quantization.max_accuracy_drop"


def test_validation_imports_no_tensorflow():
    code = ("import sys, json\n"
            "from orchestrator.config.compose import compose\n"
            "from orchestrator.config.validation import validate\n"
            "validate(compose(['quantization=qat']))\n"
            "print(json.dumps([m for m in ('tensorflow', 'tf_keras', 'tensorflow_model_optimization', 'ai_edge_litert') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_file_is_named_after_the_version_and_mode(tmp_path):
    assert tflite_path(tmp_path / "models" / "digits_mlp" / "0007", "int8") == tmp_path / "models" / "digits_mlp" / "0007.int8.tflite"


def test_conversion_needs_a_test_split():
    with pytest.raises(ConfigError) as err:
        _check("quantization=float16", "data.test_split=0")
    assert err.value.key == "data.test_split"
    _check("quantization=none", "data.test_split=0")
