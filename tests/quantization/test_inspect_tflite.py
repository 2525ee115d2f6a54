"""``orchestrator.app.inspect_tflite``: describe and run a TFLite file."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.app.inspect_tflite import describe, run

pytestmark = pytest.mark.slow  # uses the int8 run's files


def test_describe_a_float_input_int8_model(int8_run):
    text = describe(int8_run.cwd / "models" / "digits_mlp" / "0001.int8.tflite")
    assert "signature 'serving_default':" in text
    assert "input  features: dtype=float32 shape=[-1, 64] quantization: none" in text
    assert "output probabilities: dtype=float32" in text and "output classes" not in text  # the model's one output
    assert "int8 x" in text  # integer tensors inside


def test_describe_the_float32_baseline(int8_run):
    text = describe(int8_run.run_dir / "quantization" / "float32.tflite")
    tensors = text.splitlines()[-1]
    assert tensors.startswith("tensors: float32 x") and "int8" not in tensors


def test_run_classifies_digits(int8_run):
    from sklearn.datasets import load_digits

    d = load_digits()
    out = run(int8_run.cwd / "models" / "digits_mlp" / "0001.int8.tflite", {"features": d.data[:20].astype("float32")})
    assert set(out) == {"probabilities"} and out["probabilities"].shape == (20, 10)
    assert np.mean(out["probabilities"].argmax(axis=1) == d.target[:20]) >= 0.9


def test_run_names_the_expected_inputs(int8_run):
    with pytest.raises(ConfigError) as err:
        run(int8_run.cwd / "models" / "digits_mlp" / "0001.int8.tflite", {"x": np.zeros((1, 64), "float32")})
    assert "['features']" in str(err.value)


def test_not_a_tflite_file(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(ConfigError):
        describe(bad)
    with pytest.raises(ConfigError):
        describe(tmp_path / "missing.tflite")
