"""The one place where tfscale imports TensorFlow.

``TF_USE_LEGACY_KERAS=1`` must be set before the first ``import tensorflow``: tfscale trains with
tf_keras (Keras 3 cannot ``fit`` under MultiWorkerMirrored/ParameterServer strategies, and the model
optimization toolkit wraps only tf_keras models). Setting it here, explicitly, keeps the behaviour from
depending on which module happens to import TensorFlow first.
"""
from __future__ import annotations

import os


def prepare_environment() -> None:
    """Environment TensorFlow reads at import time."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow():
    """Import and return ``tensorflow`` with tfscale's environment in place."""
    import sys

    prepare_environment()
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    from orchestrator.runtime import collection

    with collection.paused():  # a quarter less time (see orchestrator.runtime.collection)
        import tensorflow as tf

    return tf


def import_keras():
    """Return the tf_keras module tfscale builds models with."""
    import_tensorflow()
    import tf_keras

    return tf_keras
