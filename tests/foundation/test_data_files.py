"""``data=files``: npz, CSV and TFRecord inputs load into the same seeded splits."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.config.compose import compose
from orchestrator.training.data import load_splits
from orchestrator.errors import ConfigError


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, size=(120, 6)).astype("float32")
    y = np.arange(120) % 3
    return x, y


def test_npz_and_csv_give_identical_splits(tmp_path, arrays):
    x, y = arrays
    np.savez(tmp_path / "d.npz", x=x, y=y)
    header = ",".join([f"f{i}" for i in range(6)] + ["y"])
    np.savetxt(tmp_path / "d.csv", np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%g")
    a = load_splits(compose(["data=files", f"data.path={tmp_path / 'd.npz'}"]).data)
    b = load_splits(compose(["data=files", f"data.path={tmp_path / 'd.csv'}"]).data)
    assert a.num_classes == b.num_classes == 3
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (84, 12, 24)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.scale == 15.0  # no dataset default: the largest training value


def test_tfrecord(tmp_path, arrays):
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    x, y = arrays
    path = tmp_path / "d.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for row, label in zip(x, y):
            ex = tf.train.Example(features=tf.train.Features(feature={
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=row)),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}))
            w.write(ex.SerializeToString())
    s = load_splits(compose(["data=files", f"data.path={path}", "data.feature_shape=[6]"]).data)
    assert len(s.x_train) + len(s.x_val) + len(s.x_test) == 120 and s.input_shape == (6,)


def test_wrong_array_name_names_the_arrays(tmp_path, arrays):
    x, y = arrays
    np.savez(tmp_path / "d.npz", features=x, labels=y)
    with pytest.raises(ConfigError, match=r"data.features_key.*\['features', 'labels'\]"):
        load_splits(compose(["data=files", f"data.path={tmp_path / 'd.npz'}"]).data)


def test_offline_keras_dataset_names_the_cache(tmp_path):
    with pytest.raises(Exception, match="cache"):
        load_splits(compose(["data=mnist", f"data.cache_dir={tmp_path}"]).data)
