"""Datasets: raw arrays from a source, seeded splits, and tf.data pipelines over them.

Inputs stay raw (digits 0..16, images 0..255): the exported model rescales them itself, so a client of
the served model sends what the dataset holds. Targets are class ids (int64), multi-hot label rows (int64,
two dimensions) or values (float32, regression); a regression model's output is in the targets' units too.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from orchestrator.errors import ConfigError, TaskFailedError
from orchestrator.config.data import data_format
from orchestrator.config.schema import DataConfig, DataFormat, DataName

log = logging.getLogger(__name__)

KERAS_DATASETS = {"mnist": "mnist.npz", "fashion_mnist": "fashion-mnist", "cifar10": "cifar-10-batches-py"}
# diabetes: scikit-learn centres each feature and scales it to norm 1, a standard deviation of 1/sqrt(442).
DEFAULT_SCALE = {"digits": 16.0, "mnist": 255.0, "fashion_mnist": 255.0, "cifar10": 255.0, "diabetes": 0.05}


@dataclass
class Splits:
    """Raw arrays of one dataset, split three ways."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int  # classes, labels of a multi-hot target, or values per example of a regression target
    scale: float
    target_offset: Optional[float] = None  # regression: mean and spread of the training targets
    target_scale: Optional[float] = None

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def target_stats(self) -> Optional[Tuple[float, float]]:
        """``(offset, scale)`` of regression targets (the model learns them standardised); None for classes."""
        return None if self.target_offset is None else (self.target_offset, float(self.target_scale or 1.0))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test))

    # What quantization asks of its data; a streamed source (orchestrator.training.streaming) answers the same.
    streaming = False
    evaluation_split = "test"

    def calibration_rows(self, batches: int, batch_size: int, seed: int = 0) -> list:
        """Up to ``batches`` batches of training rows (a seeded sample, so reruns calibrate alike)."""
        from orchestrator.artifacts.quantization import calibration_batches

        return calibration_batches(self.x_train, batches, batch_size, seed=seed)

    def evaluation_batches(self, batch_size: int = 4096, split: Optional[str] = None):
        """The test split (or ``split``: ``validation``) as ``(x, y)`` batches."""
        x, y = (self.x_val, self.y_val) if split == "validation" else (self.x_test, self.y_test)
        return ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))


def _keras_dataset(name: str, cache_dir: Optional[str]):
    from orchestrator.runtime.tf_env import import_keras

    keras = import_keras()
    loader = getattr(keras.datasets, name)
    cache = Path(cache_dir).expanduser() if cache_dir else Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets"
    if cache_dir and not (cache / KERAS_DATASETS[name]).exists():
        # An explicit cache means "read from here": never fall back to downloading.
        raise TaskFailedError(f"data.cache_dir={cache_dir!r} has no {KERAS_DATASETS[name]} for data.name={name!r}. "
                              f"Place the dataset's files at {cache / KERAS_DATASETS[name]}, or set data.cache_dir=null "
                              "to let tf_keras download it (needs internet), or use data=digits, which ships with scikit-learn.")
    try:
        if name == "mnist" and cache_dir:
            return loader.load_data(path=str(cache / "mnist.npz"))
        return loader.load_data()
    except Exception as exc:  # network errors surface as many exception types
        raise TaskFailedError(
            f"Could not load data.name={name!r}: {exc}. This machine may be offline: place the dataset's files "
            f"at {cache / KERAS_DATASETS[name]} (the tf_keras cache), set data.cache_dir to where they are, "
            "or use data=digits, which ships with scikit-learn.") from exc


def _read_bytes(path: str) -> bytes:
    if "://" in path:
        from orchestrator.runtime.tf_env import import_tensorflow

        tf = import_tensorflow()
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _load_files(d: DataConfig, values: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    fmt = data_format(d.path, d.format)
    target = "float32" if values else "int64"
    if fmt == DataFormat.npz:
        with np.load(io.BytesIO(_read_bytes(d.path))) as npz:
            for key in (d.features_key, d.label_key):
                if key not in npz:
                    k = "data.features_key" if key == d.features_key else "data.label_key"
                    raise ConfigError(k, key, f"{d.path} has arrays {sorted(npz.files)}; set {k} to one of them.")
            return npz[d.features_key].astype("float32"), npz[d.label_key].astype(target)
    if fmt == DataFormat.csv:
        text = _read_bytes(d.path).decode()
        header = text.splitlines()[0].split(",")
        if d.label_key not in header:
            raise ConfigError("data.label_key", d.label_key, f"{d.path} has columns {header}; set data.label_key to the label column.")
        table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype="float32", ndmin=2)
        col = header.index(d.label_key)
        return np.delete(table, col, axis=1), table[:, col].astype(target)
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    shape = list(d.feature_shape)
    spec = {d.features_key: tf.io.FixedLenFeature(shape, tf.float32),
            d.label_key: tf.io.FixedLenFeature([], tf.float32 if values else tf.int64)}
    xs, ys = [], []
    for rec in tf.data.TFRecordDataset([d.path]):
        ex = tf.io.parse_single_example(rec, spec)
        xs.append(ex[d.features_key].numpy())
        ys.append(ex[d.label_key].numpy())
    if not xs:
        raise ConfigError("data.path", d.path, "The TFRecord file holds no examples.")
    return np.stack(xs).astype("float32"), np.asarray(ys, dtype=target)


def loads_without_tensorflow(d: DataConfig) -> bool:
    """Whether :func:`load_splits` can load ``data`` without TensorFlow (digits; local npz and CSV files).

    Such data can be loaded by a process that never imports TensorFlow — the ``tfscale`` parent, while its
    task process is still importing it.
    """
    if d.name in (DataName.digits, DataName.diabetes):
        return True
    if d.name != DataName.files or not d.path or "://" in d.path:
        return False
    try:
        return data_format(d.path, d.format) in (DataFormat.npz, DataFormat.csv)
    except ConfigError:
        return False


def load_splits(d: DataConfig, *, values: bool = False) -> Splits:
    """Load ``data`` and split it into train/validation/test with ``data.shuffle_seed``.

    ``values``: the targets are values to regress (``model.head=linear``, see :func:`targets_are_values`), so
    ``data=files`` keeps its labels as float32 instead of class ids.
    """
    test = None
    if d.name == DataName.digits:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = bunch.data.astype("float32"), bunch.target.astype("int64")
    elif d.name == DataName.diabetes:
        from sklearn.datasets import load_diabetes

        bunch = load_diabetes()
        x, y = bunch.data.astype("float32"), bunch.target.astype("float32")
    elif d.name in KERAS_DATASETS:
        (x, y), test = _keras_dataset(d.name, d.cache_dir)
        x, y = x.astype("float32"), y.reshape(-1).astype("int64")
        test = (test[0].astype("float32"), test[1].reshape(-1).astype("int64"))
    else:
        x, y = _load_files(d, values)
    return split_arrays(x, y, d, test=test)


def targets_are_values(cfg: Any) -> bool:
    """Whether ``cfg``'s model regresses values (its targets load as float32), from ``model.head``."""
    from orchestrator.config.heads import PredictionKind, prediction_kind

    return prediction_kind(cfg) == PredictionKind.regression


def split_arrays(x: np.ndarray, y: np.ndarray, d: DataConfig, *, test: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Splits:
    """Split raw arrays three ways as ``data`` says (``limit``, ``validation_split``, ``test_split``, ``shuffle_seed``).

    ``test``: the dataset's own test split, when it has one. ``tfscale data convert`` splits with this too,
    so converted shards hold exactly the splits the in-memory path trains on.
    """
    from sklearn.model_selection import train_test_split

    if d.limit:
        x, y = x[: d.limit], y[: d.limit]
    regression = np.issubdtype(y.dtype, np.floating)
    if regression or y.ndim > 1:  # values, or multi-hot label rows: one output per column
        num_classes = 1 if y.ndim == 1 else int(y.shape[1])
    else:
        num_classes = int(d.num_classes or (int(max(y.max(), test[1].max() if test else 0)) + 1))
    seed = d.shuffle_seed

    def strata(labels: np.ndarray) -> Optional[np.ndarray]:  # class ids only, each class at least twice
        if regression or labels.ndim > 1:
            return None
        return labels if np.bincount(labels).min() >= 2 else None

    stratify = strata(y)
    if test is None and d.test_split > 0:
        x, x_test, y, y_test = train_test_split(x, y, test_size=d.test_split, random_state=seed, stratify=stratify)
    elif test is not None:
        x_test, y_test = test
    else:
        x_test, y_test = x[:0], y[:0]
    if d.validation_split > 0:
        strat = strata(y)
        frac = d.validation_split / (1.0 - (d.test_split if test is None else 0.0))
        x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=frac, random_state=seed + 1, stratify=strat)
    else:
        x_train, y_train, x_val, y_val = x, y, x[:0], y[:0]
    scale = float(d.scale or DEFAULT_SCALE.get(d.name) or max(1.0, float(np.abs(x_train).max())))
    splits = Splits(x_train, y_train, x_val, y_val, x_test, y_test, num_classes, scale)
    if regression and len(y_train):
        splits.target_offset = float(np.mean(y_train))
        splits.target_scale = float(np.std(y_train)) or 1.0
    return splits


def make_dataset(tf: Any, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int,
                 shuffle_buffer: int = 10000, prefetch: int = -1, repeat: bool = False):
    """A tf.data pipeline: seeded shuffle (reshuffled each epoch), global batch, prefetch."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(min(shuffle_buffer, len(x)), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else prefetch)
