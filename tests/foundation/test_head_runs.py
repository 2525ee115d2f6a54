"""A multi-label model (``model.head=sigmoid``) trains, is measured per label, and exports its labels (slow)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_sigmoid_head_learns_multi_hot_labels(tfscale):
    rng = np.random.default_rng(0)
    x = rng.random((600, 12)).astype("float32")
    y = np.stack([x[:, 0] > 0.5, x[:, 1] + x[:, 2] > 1.0, x[:, 3] < 0.3], axis=1).astype("int64")
    np.savez(tfscale.cwd / "labels.npz", x=x, y=y)
    run = tfscale("data=files", "data.path=labels.npz", "model.head=sigmoid", "model.loss=binary_crossentropy",
                  "trainer.epochs=15", "trainer.verbose=0", "trainer.tensorboard=false", "quantization=dynamic",
                  "export.outputs=[classes]", "export.signatures=[serving_default,classification]")
    assert run.returncode == 0, run.output[-3000:]
    m = run.metrics
    # "accuracy" is per label for a sigmoid head, as the quantization report measures it.
    assert m["test"]["accuracy"] > 0.85
    assert m["quantization"]["float"]["accuracy"] == pytest.approx(m["test"]["accuracy"], abs=1e-3)

    import tensorflow as tf

    loaded = tf.saved_model.load(str(tfscale.cwd / "models" / "files_mlp" / "0001"))
    out = loaded.signatures["serving_default"](features=tf.constant(x[:4]))
    assert set(out) == {"probabilities", "classes"} and out["probabilities"].shape == (4, 3)
    np.testing.assert_array_equal(out["classes"].numpy(), (out["probabilities"].numpy() > 0.5).astype("int64"))
    assert set(loaded.signatures) == {"serving_default", "classification"}
