"""The streaming input pipeline on small shards written here: records, sharding, parsing, counting."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.config.compose import compose
from orchestrator.config.schema import ShardPolicy
from orchestrator.config.streams import choose_policy, shard_files


@pytest.fixture(scope="module")
def tf():
    from orchestrator.runtime.tf_env import import_tensorflow

    return import_tensorflow()


@pytest.fixture(scope="module")
def labelled_shards(tmp_path_factory, tf):
    """8 TFRecord shards of 10 records; a record's label is its shard's number and x[0] its row number."""
    from orchestrator.training.shards import write_split

    root = tmp_path_factory.mktemp("shards")
    x = np.zeros((80, 4), dtype="float32")
    x[:, 0] = np.arange(80)
    y = np.repeat(np.arange(8), 10)
    write_split(root, "train", x, y, shards=8)
    write_split(root, "validation", x[:30], y[:30], shards=2)
    return root


def _source(tf, root, *overrides, batch=5):
    from orchestrator.training.streaming import StreamingSource

    cfg = compose(["data=tfrecord", f"data.train={root}/train-*.tfrecord", f"data.validation={root}/validation-*.tfrecord",
                   "data.feature_shape=[4]", "data.num_classes=8", *overrides])
    return StreamingSource(tf, cfg.data, batch_size=batch, seed=0, count_cache=root / "counts.json")


def test_encoded_examples_are_what_tf_train_example_serializes(tf):
    from orchestrator.training.shards import encode_examples

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 7)).astype("float32"), rng.integers(0, 2**40, size=50)
    y[:3] = [0, 127, 128]
    for i, raw in enumerate(encode_examples({"x": x}, y, "y")):
        ref = tf.train.Example(features=tf.train.Features(feature={
            "x": tf.train.Feature(float_list=tf.train.FloatList(value=x[i])),
            "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y[i])]))}))
        assert tf.train.Example.FromString(raw) == ref


def test_one_epoch_reads_every_record_once_and_counts_are_cached(tf, labelled_shards):
    src = _source(tf, labelled_shards, "data.shuffle_buffer=0", "data.adapt_batches=16")
    assert src.train_records == 80 and src.records_counted and not src.count_cached
    assert src.steps_per_epoch(5) == 16 and src.input_shape == (4,) and src.scale == 79.0  # adapted on the first 16 batches: all of them
    rows = np.concatenate([x[:, 0] for x, _ in src.train(5).take(16).as_numpy_iterator()])
    assert sorted(rows) == list(range(80))
    assert _source(tf, labelled_shards).count_cached  # the second source reads the cached count
    evaluated = np.concatenate([y for _, y in src.evaluation("validation").as_numpy_iterator()])
    assert len(evaluated) == 30 and src.evaluation_split == "validation"


@pytest.mark.parametrize("policy", [ShardPolicy.file, ShardPolicy.data])
def test_pipelines_split_the_records_between_them(tf, labelled_shards, policy):
    src = _source(tf, labelled_shards, "data.shuffle_buffer=0", f"data.shard_policy={policy.value}")
    seen = []
    for i in range(2):
        rows = np.concatenate([x[:, 0] for x, _ in src.train(5, pipelines=2, index=i, policy=policy).take(8).as_numpy_iterator()])
        labels = np.concatenate([y for _, y in src.train(5, pipelines=2, index=i, policy=policy).take(8).as_numpy_iterator()])
        if policy == ShardPolicy.file:  # its own files: every other shard
            assert set(labels) == set(range(i, 8, 2))
        seen.append(set(rows))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 80


def test_worker_index_known_only_at_run_time_picks_the_files(tf, labelled_shards):
    """ParameterServerStrategy builds one dataset function for all workers; the index is then a tensor."""
    src = _source(tf, labelled_shards)

    @tf.function
    def labels_of(index):
        ds = src.train(10, pipelines=4, index=index, policy=ShardPolicy.file)
        return ds.take(4).reduce(tf.zeros([8], tf.int64), lambda acc, b: acc + tf.math.bincount(b[1], minlength=8, dtype=tf.int64))

    counts = labels_of(tf.constant(3, tf.int64)).numpy()
    assert set(np.nonzero(counts)[0]) == {3, 7}


def test_shard_policy_choice():
    assert choose_policy(ShardPolicy.auto, 16, 2)[0] == ShardPolicy.file
    assert choose_policy(ShardPolicy.auto, 1, 2)[0] == ShardPolicy.data
    assert choose_policy(ShardPolicy.data, 16, 2)[0] == ShardPolicy.data
    assert shard_files(list("abcde"), 2, 1, ShardPolicy.file) == ["b", "d"]
    assert shard_files(list("abcde"), 2, 1, ShardPolicy.data) == list("abcde")


def test_csv_shards_with_a_header(tf, tmp_path):
    from orchestrator.training.shards import write_split
    from orchestrator.training.streaming import StreamingSource

    x = np.arange(60, dtype="float32").reshape(20, 3)
    y = np.arange(20) % 4
    write_split(tmp_path, "train", x, y, shards=3, fmt="csv", columns=["a", "b", "c"], label_key="label")
    cfg = compose(["data=csv_shards", f"data.train={tmp_path}/train-*.csv", f"data.validation={tmp_path}/train-*.csv",
                   "data.label_key=label", "data.num_classes=4", "+data.features={c: {}, a: {}}", "data.shuffle_buffer=0"])
    src = StreamingSource(tf, cfg.data, batch_size=20, seed=0)
    xb, yb = next(iter(src.evaluation("validation")))
    assert src.input_shape == (2,) and src.train_records == 20
    np.testing.assert_array_equal(xb.numpy()[:, 0] - 2, xb.numpy()[:, 1])  # columns c then a
    assert sorted(yb.numpy().tolist()) == sorted(y.tolist())


def test_several_features_are_concatenated(tf, tmp_path):
    from orchestrator.training.shards import encode_examples
    from orchestrator.training.streaming import StreamingSource

    with tf.io.TFRecordWriter(str(tmp_path / "t.tfrecord")) as w:
        for raw in encode_examples({"img": np.ones((6, 2, 2), "float32"), "extra": np.full((6, 3), 2.0, "float32")}, np.arange(6) % 2, "label"):
            w.write(raw)
    cfg = compose(["data=tfrecord", f"data.train={tmp_path}/*.tfrecord", f"data.validation={tmp_path}/*.tfrecord",
                   "+data.features={img: {shape: [2, 2]}, extra: {shape: [3]}}", "data.label_key=label", "data.num_classes=2",
                   "data.train_records=6"])
    src = StreamingSource(tf, cfg.data, batch_size=3, seed=0)
    x, _ = next(iter(src.evaluation("validation")))
    assert src.input_shape == (7,) and x.numpy().tolist()[0] == [1.0] * 4 + [2.0] * 3
