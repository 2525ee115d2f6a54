"""Helpers of the serving tests: a tiny digits-shaped SavedModel published like tfscale's export does."""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "digits_mlp"
PYTHON = sys.executable


def build_saved_model(path: Path, seed: int) -> None:
    """A Dense 64 -> 10 classifier with tfscale's serving_default signature (features -> probabilities, classes)."""
    from orchestrator.runtime.tf_env import import_keras, import_tensorflow

    tf = import_tensorflow()
    keras = import_keras()
    tf.random.set_seed(seed)
    inputs = keras.Input((64,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="features")])
    def serve(features):
        probs = model(features, training=False)
        return {"probabilities": probs, "classes": tf.argmax(probs, axis=-1)}

    tf.saved_model.save(model, str(path), signatures={"serving_default": serve.get_concrete_function()})


def publish(model_dir: Path, version: int, template: Path) -> Path:
    """Publish ``template`` as ``model_dir/<NNNN>`` by copying to a hidden sibling and renaming it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    shutil.copytree(template, tmp)
    target = model_dir / f"{version:04d}"
    os.rename(tmp, target)
    return target


def reference_predictions(path: Path, rows: np.ndarray):
    """In-process predictions of a SavedModel's serving_default signature."""
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = fn(features=tf.constant(rows))
    return {k: v.numpy() for k, v in out.items()}


def serving_settings(base: Path, **overrides):
    """A ServingConfig on free ports, fast polling."""
    from omegaconf import OmegaConf

    from orchestrator.config.serving import ServingConfig

    cfg = OmegaConf.structured(ServingConfig(model_base=str(base), rest_port=0, grpc_port=0,
                                             file_system_poll_wait_seconds=0.2))
    return OmegaConf.merge(cfg, OmegaConf.create(overrides))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
