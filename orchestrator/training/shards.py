"""Writing sharded datasets: arrays in, N TFRecord (or CSV) shards per split and a ``spec.json`` out.

``tfscale data convert`` (``orchestrator.app.data_convert``) reads an .npz, .csv or Parquet file (or
scikit-learn's digits), splits it exactly as the in-memory path does (:func:`orchestrator.training.data.split_arrays`)
and writes each split here. The directory is published through the project's publisher: it is written
into a hidden temporary sibling and renamed into place, so a reader never sees half a dataset.

Layout of a converted dataset::

    DIR/train-00000-of-00016.tfrecord ... train-00015-of-00016.tfrecord
    DIR/validation-00000-of-00002.tfrecord ...
    DIR/test-00000-of-00002.tfrecord ...
    DIR/spec.json      format, features, label key, classes, scale, and per split its pattern and record count

``data=tfrecord data.spec=DIR`` reads it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from orchestrator.config.streams import SPEC_FILE

SUFFIX = {"tfrecord": "tfrecord", "csv": "csv"}


# ------------------------------------------------------------------------------------------ encoding
def _varint(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Protobuf varints of non-negative int64 ``values``: a (n, 10) byte array and each one's length."""
    v = values.astype(np.uint64).copy()
    out = np.zeros((len(v), 10), dtype=np.uint8)
    lengths = np.ones(len(v), dtype=np.int64)
    for i in range(10):
        byte = (v & np.uint64(0x7F)).astype(np.uint8)
        v >>= np.uint64(7)
        more = v > 0
        out[:, i] = byte | (more.astype(np.uint8) << 7)
        lengths += more
        if not more.any():
            break
    return out, lengths


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _varint_bytes(len(payload)) + payload


def encode_examples(features: Dict[str, np.ndarray], labels: np.ndarray, label_key: str) -> List[bytes]:
    """Serialized ``tf.train.Example`` records of float features and an int64 label, encoded with numpy.

    The same bytes ``tf.train.Example(...).SerializeToString()`` gives up to map order (which parsing
    ignores), about thirty times faster: each row is a fixed float block plus the label's varint.
    """
    n = len(labels)
    labels = np.asarray(labels).astype(np.int64)
    if (labels < 0).any():
        raise ValueError("labels must be non-negative class indices")
    # Every float feature: map entry {key, Feature{float_list{packed values}}}, the same length on every row.
    blocks: List[np.ndarray] = []
    for name, values in features.items():
        flat = np.ascontiguousarray(values.reshape(n, -1), dtype="<f4")
        k = flat.shape[1]
        float_list_head = bytes([0x0A]) + _varint_bytes(4 * k)
        float_list_len = len(float_list_head) + 4 * k
        feature_head = bytes([0x12]) + _varint_bytes(float_list_len)
        feature_len = len(feature_head) + float_list_len
        entry_body_head = _field(0x0A, name.encode()) + bytes([0x12]) + _varint_bytes(feature_len)
        entry_len = len(entry_body_head) + feature_len
        head = bytes([0x0A]) + _varint_bytes(entry_len) + entry_body_head + feature_head + float_list_head
        blocks.append(np.concatenate([np.broadcast_to(np.frombuffer(head, np.uint8), (n, len(head))), flat.view(np.uint8)], axis=1))
    body = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), np.uint8)
    varints, lengths = _varint(labels)
    out: List[bytes] = [b""] * n
    for length in np.unique(lengths):  # rows whose label varint has the same length share every header
        rows = np.nonzero(lengths == length)[0]
        int64_list = 2 + length  # 0x0A, len, varint
        feature_len = 2 + int64_list  # 0x1A, len, Int64List
        entry_body_head = _field(0x0A, label_key.encode()) + bytes([0x12]) + _varint_bytes(feature_len) + bytes([0x1A, int64_list, 0x0A, length])
        entry = bytes([0x0A]) + _varint_bytes(len(entry_body_head) + length) + entry_body_head
        features_len = body.shape[1] + len(entry) + length
        example_head = bytes([0x0A]) + _varint_bytes(features_len)
        head = np.broadcast_to(np.frombuffer(example_head, np.uint8), (len(rows), len(example_head)))
        tail = np.broadcast_to(np.frombuffer(entry, np.uint8), (len(rows), len(entry)))
        block = np.concatenate([head, body[rows], tail, varints[rows, :length]], axis=1)
        for r, raw in zip(rows, block):
            out[r] = raw.tobytes()
    return out


# ------------------------------------------------------------------------------------------ writing
def shard_name(split: str, index: int, shards: int, fmt: str) -> str:
    return f"{split}-{index:05d}-of-{shards:05d}.{SUFFIX[fmt]}"


def shard_pattern(split: str, shards: int, fmt: str) -> str:
    return f"{split}-*-of-{shards:05d}.{SUFFIX[fmt]}"


def write_split(directory: Path, split: str, x: np.ndarray, y: np.ndarray, *, shards: int, fmt: str = "tfrecord",
                features_key: str = "x", label_key: str = "y", columns: Optional[Sequence[str]] = None,
                chunk_rows: int = 65536) -> Dict[str, Any]:
    """Write one split as ``shards`` files of contiguous rows; returns its ``spec.json`` entry.

    Rows are encoded ``chunk_rows`` at a time, so memory holds the input arrays and one chunk.
    """
    directory = Path(directory)
    shards = max(1, min(int(shards), len(y))) if len(y) else 1
    bounds = np.linspace(0, len(y), shards + 1).astype(int)
    if fmt == "csv":
        names = list(columns or [f"f{i}" for i in range(int(np.prod(x.shape[1:])))])
        header = ",".join([*names, label_key])
        for i in range(shards):
            lo, hi = bounds[i], bounds[i + 1]
            table = np.column_stack([x[lo:hi].reshape(hi - lo, -1), y[lo:hi]]) if hi > lo else np.zeros((0, len(names) + 1))
            np.savetxt(directory / shard_name(split, i, shards, fmt), table, delimiter=",", header=header, comments="", fmt="%.9g")
    else:
        from orchestrator.runtime.tf_env import import_tensorflow

        tf = import_tensorflow()
        for i in range(shards):
            with tf.io.TFRecordWriter(str(directory / shard_name(split, i, shards, fmt))) as writer:
                for lo in range(bounds[i], bounds[i + 1], chunk_rows):
                    hi = min(lo + chunk_rows, bounds[i + 1])
                    for record in encode_examples({features_key: x[lo:hi]}, y[lo:hi], label_key):
                        writer.write(record)
    return {"pattern": shard_pattern(split, shards, fmt), "files": shards, "records": int(len(y))}


def spec_document(*, fmt: str, feature_shape: Sequence[int], features_key: str, label_key: str, num_classes: int,
                  scale: Optional[float], splits: Dict[str, Dict[str, Any]], source: str, seed: int) -> Dict[str, Any]:
    """The ``spec.json`` of a converted dataset (what ``data.spec`` reads)."""
    features = ({features_key: {"shape": [int(s) for s in feature_shape], "dtype": "float32"}} if fmt == "tfrecord" else {})
    return {"format": fmt, "features": features, "label_key": label_key, "num_classes": int(num_classes),
            "scale": scale, "splits": splits, "source": source, "seed": int(seed),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_dataset(output: Union[str, Path], arrays: Dict[str, Tuple[np.ndarray, np.ndarray]], *, shards: int, eval_shards: int,
                  fmt: str, features_key: str, label_key: str, num_classes: int, scale: Optional[float], source: str,
                  seed: int, columns: Optional[Sequence[str]] = None) -> Union[str, Path]:
    """Publish ``output`` (a local path or a bucket URI): every non-empty split of ``arrays`` as shards, and ``spec.json``.

    ``output`` must not exist; it appears complete (a renamed temporary directory; in a bucket, uploaded
    with ``spec.json`` last) or not at all.
    """
    from orchestrator.artifacts import storage
    from orchestrator.artifacts.publish import publish_directory

    if storage.exists(output):
        raise FileExistsError(str(output))
    parent, name = storage.split(output)
    feature_shape = next(iter(arrays.values()))[0].shape[1:]

    def write(tmp: Path) -> None:
        entries = {}
        for split, (x, y) in arrays.items():
            if len(y):
                entries[split] = write_split(tmp, split, x, y, shards=shards if split == "train" else eval_shards, fmt=fmt,
                                             features_key=features_key, label_key=label_key, columns=columns)
        doc = spec_document(fmt=fmt, feature_shape=feature_shape, features_key=features_key, label_key=label_key,
                            num_classes=num_classes, scale=scale, splits=entries, source=source, seed=seed)
        (tmp / SPEC_FILE).write_text(json.dumps(doc, indent=2) + "\n")

    return publish_directory(parent if storage.is_remote(output) else Path(parent), write, name=name)


# ------------------------------------------------------------------------------------------ synthetic data
def synthetic_chunk(start: int, rows: int, *, features: int = 64, classes: int = 10, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Rows ``start .. start+rows`` of a synthetic classification set: uniform values in [0, 16), the label
    the arg-max of a fixed random linear map (learnable, like digits). Any range can be made on its own."""
    weights = np.random.default_rng(seed).normal(size=(features, classes)).astype("float32")
    x = np.random.default_rng([seed, start]).uniform(0.0, 16.0, size=(rows, features)).astype("float32")
    return x, np.argmax((x - 8.0) @ weights, axis=1).astype("int64")


def write_synthetic(output: Path, *, records: int, shards: int, eval_records: int = 0, features: int = 64,
                    classes: int = 10, seed: int = 0, chunk_rows: int = 65536) -> Path:
    """Publish a synthetic TFRecord dataset of ``records`` training rows in ``shards`` shards of (near-)equal
    size (and ``eval_records`` validation rows in one shard), with its ``spec.json``; memory holds one chunk.

    Used by the input-pipeline benchmark and the tests: the size changes, the shape and the memory do not.
    """
    from orchestrator.artifacts.publish import publish_directory
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    output = Path(output)

    def write_rows(path: Path, first: int, count: int) -> None:
        with tf.io.TFRecordWriter(str(path)) as writer:
            for lo in range(first, first + count, chunk_rows):
                x, y = synthetic_chunk(lo, min(chunk_rows, first + count - lo), features=features, classes=classes, seed=seed)
                for record in encode_examples({"x": x}, y, "y"):
                    writer.write(record)

    def write(tmp: Path) -> None:
        bounds = np.linspace(0, records, shards + 1).astype(int)
        for i in range(shards):
            write_rows(tmp / shard_name("train", i, shards, "tfrecord"), int(bounds[i]), int(bounds[i + 1] - bounds[i]))
        splits = {"train": {"pattern": shard_pattern("train", shards, "tfrecord"), "files": shards, "records": int(records)}}
        if eval_records:
            write_rows(tmp / shard_name("validation", 0, 1, "tfrecord"), int(records), int(eval_records))
            splits["validation"] = {"pattern": shard_pattern("validation", 1, "tfrecord"), "files": 1, "records": int(eval_records)}
        doc = spec_document(fmt="tfrecord", feature_shape=[features], features_key="x", label_key="y", num_classes=classes,
                            scale=16.0, splits=splits, source="synthetic", seed=seed)
        (tmp / SPEC_FILE).write_text(json.dumps(doc, indent=2) + "\n")

    return publish_directory(output.parent, write, name=output.name)
