"""Checks of the ``data`` group: which file format, which splits (the dataset and format names are
:class:`DataName` / :class:`DataFormat` choices, checked when the config is composed)."""
from __future__ import annotations

import os

from orchestrator.config.schema import DataConfig, DataFormat, DataName
from orchestrator.config.streams import check as check_stream
from orchestrator.errors import ConfigError

_SUFFIXES = ((".npz", DataFormat.npz), (".csv", DataFormat.csv), (".tfrecord", DataFormat.tfrecord),
             (".tfrecords", DataFormat.tfrecord))


def data_format(path: str, declared: DataFormat) -> DataFormat:
    """The file format of ``data.path``: the declared one, else inferred from the suffix."""
    if declared != DataFormat.auto:
        return DataFormat(declared)
    lower = path.lower()
    for suffix, fmt in _SUFFIXES:
        if lower.endswith(suffix):
            return fmt
    raise ConfigError("data.format", declared, f"Cannot infer the format of data.path={path!r} from its suffix; set data.format to one of {', '.join(f for f in DataFormat.values() if f != DataFormat.auto)}.")


def check_data(d: DataConfig) -> None:
    """Check the splits, the limit, the scale and a ``data=files`` file of the ``data`` group."""
    for key in ("validation_split", "test_split"):
        v = getattr(d, key)
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"data.{key}", v, "It is a fraction of the examples: use a value in [0, 1).")
    if d.validation_split + d.test_split >= 1.0:
        raise ConfigError("data.validation_split", d.validation_split,
                          f"validation_split + test_split = {d.validation_split + d.test_split:g} leaves no training data; keep the sum below 1.")
    if d.limit is not None and d.limit < 10:
        raise ConfigError("data.limit", d.limit, "Use at least 10 examples, or null for all.")
    if d.scale is not None and d.scale <= 0:
        raise ConfigError("data.scale", d.scale, "Inputs are divided by it: give a positive number, or null.")
    if d.name == DataName.files:
        if not d.path:
            raise ConfigError("data.path", d.path, "data=files reads your own data: set data.path to an .npz, .csv or .tfrecord file.")
        fmt = data_format(d.path, d.format)
        if fmt == DataFormat.tfrecord and not d.feature_shape:
            raise ConfigError("data.feature_shape", d.feature_shape, "TFRecord examples need the shape of one example's features, e.g. data.feature_shape=[64].")
        if "://" not in d.path and not os.path.exists(d.path):
            raise ConfigError("data.path", d.path, f"No such file (looked in {os.path.abspath(d.path)}). Check the path; relative paths are relative to the directory you run tfscale from.")
    if d.image_shape is not None and (len(d.image_shape) != 3 or any(x <= 0 for x in d.image_shape)):
        raise ConfigError("data.image_shape", list(d.image_shape), "Give height, width, channels, e.g. [8, 8, 1].")
    check_stream(d)  # data=tfrecord / csv_shards: patterns match files, features and classes declared

