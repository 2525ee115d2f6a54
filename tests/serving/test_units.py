"""Version policies, the batcher and the REST codec, without a server."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from orchestrator.serving.batching import Batcher
from orchestrator.serving.repository import VersionPolicy, version_dirs
from orchestrator.serving.status import ErrorCode, RequestError


def test_version_policies_select_versions():
    available = [3, 1, 2, 10]
    assert VersionPolicy("latest", 1).select(available) == [10]
    assert VersionPolicy("latest", 2).select(available) == [3, 10]
    assert VersionPolicy("all").select(available) == [1, 2, 3, 10]
    assert VersionPolicy("specific", versions=(2, 7)).select(available) == [2]


def test_only_numeric_directories_are_versions(tmp_path):
    for name in ("0001", "0002", ".tmp-0003", ".removed-0004-x", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "0005").write_text("a file, not a version")
    assert sorted(version_dirs(tmp_path)) == [1, 2]


def _double(inputs):
    return {"y": inputs["x"] * 2, "n": np.full((len(inputs["x"]),), len(inputs["x"]))}


def test_batcher_merges_and_splits_rows_in_order():
    batcher = Batcher(_double, max_batch_size=16, batch_timeout_micros=200_000, num_batch_threads=1,
                      max_enqueued_batches=4, name="t")
    results = {}

    def one(i, rows):
        results[i] = batcher.submit({"x": np.full((rows, 2), i, np.float32)}, rows)

    try:
        threads = [threading.Thread(target=one, args=(i, 1 + i % 3)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        batcher.close()
    for i in range(6):
        rows = 1 + i % 3
        assert results[i]["y"].shape == (rows, 2) and np.all(results[i]["y"] == 2 * i)
    assert max(int(r["n"][0]) for r in results.values()) > 3  # at least one call saw several requests


def test_batcher_runs_oversized_requests_alone_and_reports_errors():
    def failing(inputs):
        raise ValueError("model failed")

    batcher = Batcher(_double, max_batch_size=4, batch_timeout_micros=1000, num_batch_threads=1,
                      max_enqueued_batches=1, name="t")
    try:
        out = batcher.submit({"x": np.ones((10, 2), np.float32)}, 10)
        assert out["n"][0] == 10
    finally:
        batcher.close()
    broken = Batcher(failing, max_batch_size=4, batch_timeout_micros=1000, num_batch_threads=1,
                     max_enqueued_batches=1, name="t")
    try:
        with pytest.raises(ValueError, match="model failed"):
            broken.submit({"x": np.ones((1, 2), np.float32)}, 1)
    finally:
        broken.close()


def test_batcher_queue_limit_answers_unavailable():
    gate = threading.Event()

    def slow(inputs):
        gate.wait(5)
        return _double(inputs)

    batcher = Batcher(slow, max_batch_size=2, batch_timeout_micros=0, num_batch_threads=1,
                      max_enqueued_batches=1, name="t")
    try:
        threads = [threading.Thread(target=batcher.submit, args=({"x": np.ones((2, 1))}, 2)) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.2)  # the first is running, the second fills the queue
        with pytest.raises(RequestError) as info:
            batcher.submit({"x": np.ones((1, 1))}, 1)
        assert info.value.code is ErrorCode.UNAVAILABLE and "max_enqueued_batches" in info.value.message
    finally:
        gate.set()
        for t in threads:
            t.join()
        batcher.close()


class _Spec:
    """A stand-in for tf.TensorSpec with what the codec reads."""

    def __init__(self, shape, dtype):
        import tensorflow as tf

        self.shape = tf.TensorShape(shape)
        self.dtype = tf.as_dtype(dtype)


def test_codec_formats_follow_tf_serving_rules():
    from orchestrator.serving.codec import COLUMNAR, ROW, decode_rest, encode_rest

    specs = {"a": _Spec([None, 2], "float32"), "b": _Spec([None], "int64")}
    inputs, fmt = decode_rest({"instances": [{"a": [1, 2], "b": 3}, {"a": [4, 5], "b": 6}]}, specs, False)
    assert fmt == ROW and inputs["a"].dtype == np.float32 and inputs["b"].tolist() == [3, 6]
    with pytest.raises(RequestError, match="non-integer"):
        decode_rest({"inputs": {"a": [[1, 2]], "b": [1.5]}}, specs, False)
    with pytest.raises(RequestError, match="batch sizes"):
        decode_rest({"inputs": {"a": [[1, 2]], "b": [1, 2]}}, specs, False)
    outputs = {"p": np.array([[0.5, 0.5]], np.float32), "c": np.array([1])}
    assert encode_rest(outputs, ROW) == {"predictions": [{"c": 1, "p": [0.5, 0.5]}]}
    assert encode_rest({"p": outputs["p"]}, ROW) == {"predictions": [[0.5, 0.5]]}
    assert encode_rest(outputs, COLUMNAR) == {"outputs": {"c": [1], "p": [[0.5, 0.5]]}}
    assert encode_rest({"c": outputs["c"]}, COLUMNAR) == {"outputs": [1]}
