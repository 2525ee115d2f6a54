"""Checks of the ``quantization`` group against the rest of the experiment, before TensorFlow is imported.

The conversion itself lives in :mod:`orchestrator.artifacts.quantization`; what can be known about it from the
config alone (the mode, the gate, calibration rows, layers the toolkit can wrap, mixed precision) is checked here.
"""
from __future__ import annotations

import math
import os
from typing import Optional

from orchestrator.config.schema import (
    DataConfig,
    DataName,
    ExperimentConfig,
    MixedPrecision,
    QuantizationMode,
    QuantizationSplit,
)
from orchestrator.errors import ConfigError

#: Modes that calibrate activation ranges on batches of the training split.
CALIBRATED_MODES = frozenset({QuantizationMode.int8, QuantizationMode.qat})

# tf_keras layer classes the toolkit's default 8-bit scheme can wrap (its Default8BitQuantizeRegistry),
# plus Rescaling, which tfscale puts in front of every model and annotates itself. Checking declared
# layers against this list catches an unwrappable model before TensorFlow is imported.
QAT_LAYERS = frozenset({
    "Activation", "ReLU", "Softmax", "LeakyReLU", "Concatenate", "Add", "Dense", "Conv2D", "DepthwiseConv2D",
    "Conv2DTranspose", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling2D", "ZeroPadding1D",
    "ZeroPadding2D", "ActivityRegularization", "Dropout", "Flatten", "Permute", "Reshape", "SpatialDropout1D",
    "SpatialDropout2D", "SpatialDropout3D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "MaxPooling2D", "BatchNormalization", "InputLayer", "Rescaling",
})

# Training-set sizes of the built-in datasets before splitting (the Keras datasets bring their own test set).
_DATASET_ROWS = {DataName.digits: 1797, DataName.diabetes: 442, DataName.mnist: 60000, DataName.fashion_mnist: 60000, DataName.cifar10: 50000}
# Streamed sources bring their own test files (or evaluate on their validation files).
_OWN_TEST_SET = frozenset({DataName.mnist, DataName.fashion_mnist, DataName.cifar10, DataName.tfrecord, DataName.csv_shards})
_STREAMED = frozenset({DataName.tfrecord, DataName.csv_shards})


# ------------------------------------------------------------------------------------------ checks
def _count_file_rows(d: DataConfig) -> Optional[int]:
    """Examples in a local ``data=files`` npz/csv file, or None when that is not cheap to know."""
    import numpy as np
    from orchestrator.config.data import data_format

    if not d.path or "://" in d.path or not os.path.exists(d.path):
        return None
    fmt = data_format(d.path, d.format)
    if fmt == "csv":
        with open(d.path) as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    if fmt == "npz":
        with np.load(d.path) as npz:
            return int(npz[d.label_key].shape[0]) if d.label_key in npz.files else None
    return None


def expected_train_rows(d: DataConfig) -> Optional[int]:
    """Rows the training split will hold, computed the way ``data.load_splits`` splits; None if unknown."""
    n = _DATASET_ROWS.get(d.name) if d.name != DataName.files else _count_file_rows(d)
    if n is None:
        return None
    if d.limit:
        n = min(n, d.limit)
    test = 0.0 if d.name in _OWN_TEST_SET else d.test_split
    rest = n - (math.ceil(test * n) if test > 0 else 0)
    if d.validation_split > 0 and rest > 0:
        rest -= math.ceil(d.validation_split / (1.0 - test) * rest)
    return max(0, rest)


def _check_qat_layers(cfg: ExperimentConfig) -> None:
    m = cfg.model
    if m.builder:
        return  # a builder's layers are known only once it runs; prepare_model checks them before training
    for i, layer in enumerate(m.layers):
        target = str(layer.get("_target_", ""))
        cls = target.rsplit(".", 1)[-1]
        if cls not in QAT_LAYERS:
            raise ConfigError(
                f"model.layers[{i}]._target_", target,
                f"quantization=qat wraps the model with tensorflow-model-optimization, whose default 8-bit scheme "
                f"cannot quantize {cls}. Replace the layer with one it supports ({', '.join(sorted(QAT_LAYERS - {'InputLayer'}))}), "
                f"or use post-training quantization instead: quantization=int8.")


def _check_validation_split(cfg: ExperimentConfig) -> None:
    d = cfg.data
    if d.name in _STREAMED:
        if not (d.validation or d.spec):
            raise ConfigError("quantization.evaluation_split", "validation",
                              f"data={d.name} declares no validation files to measure the converted model on. Set "
                              "data.validation to their file pattern, or quantization.evaluation_split=test.")
    elif d.validation_split <= 0:
        raise ConfigError("quantization.evaluation_split", "validation",
                          f"data.validation_split={d.validation_split} leaves no validation split to measure the converted "
                          "model on. Set data.validation_split (e.g. 0.1), or quantization.evaluation_split=test.")


def check(cfg: ExperimentConfig) -> None:
    """Validate the ``quantization`` group against the rest of the experiment (no TensorFlow imported).

    ``quantization.mode`` itself is a :class:`QuantizationMode`, checked when the config is composed.
    """
    q = cfg.quantization
    if q.max_accuracy_drop is not None and not 0.0 <= q.max_accuracy_drop < 1.0:
        raise ConfigError("quantization.max_accuracy_drop", q.max_accuracy_drop,
                          "It is the accuracy (0..1 scale) the converted model may lose: use a value in [0, 1), "
                          "e.g. 0.005 for half a point, or null for no gate.")
    if q.mode == QuantizationMode.none:
        return
    if q.evaluation_split == QuantizationSplit.validation:
        _check_validation_split(cfg)
    elif cfg.data.test_split <= 0 and cfg.data.name not in _OWN_TEST_SET:
        raise ConfigError("data.test_split", cfg.data.test_split,
                          f"quantization={q.mode} measures the converted model against the float one on the test split: "
                          "keep one, e.g. data.test_split=0.2, or use quantization=none.")
    if q.mode in CALIBRATED_MODES:
        if q.calibration_batches < 1:
            raise ConfigError("quantization.calibration_batches", q.calibration_batches,
                              f"quantization={q.mode} calibrates activation ranges on batches of the training split: "
                              "use at least 1, e.g. quantization.calibration_batches=100.")
        if q.calibration_batch_size < 1:
            raise ConfigError("quantization.calibration_batch_size", q.calibration_batch_size,
                              "Use at least 1 example per calibration batch.")
        rows = expected_train_rows(cfg.data)
        if rows == 0:
            key = "data.path" if cfg.data.name == DataName.files else "data.validation_split"
            value = cfg.data.path if cfg.data.name == DataName.files else cfg.data.validation_split
            raise ConfigError(key, value,
                              f"quantization={q.mode} draws its calibration batches from the training split, and this data "
                              "config leaves no training rows. Give data with examples in it, lower data.validation_split / "
                              "data.test_split or raise data.limit; or use quantization=dynamic or float16, which need no calibration.")
    if q.mode == QuantizationMode.qat:
        if cfg.trainer.mixed_precision != MixedPrecision.none:
            raise ConfigError("trainer.mixed_precision", cfg.trainer.mixed_precision,
                              "quantization=qat trains with float32 fake-quantization ops: set trainer.mixed_precision=none.")
        _check_qat_layers(cfg)
