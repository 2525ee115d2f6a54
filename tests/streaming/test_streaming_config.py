"""``data=tfrecord`` / ``csv_shards`` config errors and ``tfscale data convert``: one line naming key, value and fix,
before TensorFlow is imported."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tfscale_testing import run_tfscale, tfscale_env


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A spec.json and 4 (empty) training shards: enough for every check made without TensorFlow."""
    root = tmp_path_factory.mktemp("data") / "shards"
    root.mkdir()
    for i in range(4):
        (root / f"train-{i:05d}-of-00004.tfrecord").write_bytes(b"")
    (root / "validation-00000-of-00001.tfrecord").write_bytes(b"")
    (root / "spec.json").write_text(json.dumps({
        "format": "tfrecord", "features": {"x": {"shape": [64], "dtype": "float32"}}, "label_key": "y", "num_classes": 10,
        "scale": 16.0, "splits": {"train": {"pattern": "train-*-of-00004.tfrecord", "records": 100},
                                  "validation": {"pattern": "validation-*-of-00001.tfrecord", "records": 10}}}))
    return root


def _preflight(overrides, cwd):
    code = ("import sys\nfrom orchestrator.app.cli import preflight\nfrom orchestrator.errors import ConfigError\n"
            f"try:\n    preflight({overrides!r})\nexcept ConfigError as e:\n    print(e)\nelse:\n    print('accepted')\n"
            "print('TF' if 'tensorflow' in sys.modules else 'no TF')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=tfscale_env()).stdout
    message, tf = out.strip().splitlines()
    assert tf == "no TF"
    return message


def test_a_spec_directory_is_accepted(shards):
    assert _preflight(["data=tfrecord", f"data.spec={shards}"], shards) == "accepted"


@pytest.mark.parametrize("extra,key,words", [
    (["data.train=nowhere/train-*.tfrecord"], "data.train", "matches no file"),
    (["data.spec=nowhere"], "data.spec", "No such file"),
    (["backend=processes", "cluster=workers_2", "strategy=multi_worker_mirrored", "cluster.worker.count=6",
      "trainer.batch_size=36", "data.shard_policy=file"], "data.shard_policy", "matches 4 file(s) but 6 input pipelines"),
    (["data.spec=null", "data.train=SHARDS/train-*", "data.validation=SHARDS/validation-*"], "data.feature_shape", "features declared"),
    (["data.spec=null", "data.train=SHARDS/train-*", "data.validation=SHARDS/validation-*", "data.feature_shape=[64]"],
     "data.num_classes", "data.num_classes=10"),
    (["data.adapt_batches=0"], "data.adapt_batches", "at least 1"),
])
def test_bad_streaming_config_is_refused_before_tensorflow(shards, extra, key, words):
    extra = [e.replace("SHARDS", str(shards)) for e in extra]
    message = _preflight(["data=tfrecord", f"data.spec={shards}", *extra], shards.parent)
    assert f"'{key}'" in message and words in message, message


def test_fewer_files_than_workers_falls_back_to_the_data_policy(shards):
    overrides = ["data=tfrecord", f"data.spec={shards}", "backend=processes", "cluster=workers_2",
                 "strategy=multi_worker_mirrored", "cluster.worker.count=6", "trainer.batch_size=36"]
    assert _preflight(overrides, shards) == "accepted"  # shard_policy=auto: data


def test_refused_run_writes_nothing(tmp_path):
    result = run_tfscale(["data=tfrecord", "data.train=none/*.tfrecord", "data.validation=none/*.tfrecord"], tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "'data.train'" in result.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,flag", [
    (["--digits", "--output", "out", "--shards", "0"], "--shards"),
    (["--input", "missing.npz", "--output", "out"], "--input"),
    (["--digits", "--output", "out", "--test-split", "1.5"], "--test-split"),
])
def test_convert_refuses_bad_arguments(tmp_path, args, flag):
    result = run_tfscale(["data", "convert", *args], tmp_path)
    assert result.returncode == 2 and f"'{flag}'" in result.stderr, result.output
    assert not (tmp_path / "out").exists()


def test_convert_without_pyarrow_names_the_extra(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    code = ("import sys\nsys.modules['pyarrow'] = None\nsys.modules['pyarrow.parquet'] = None\n"
            "from orchestrator.app.cli import main\n"
            "main(['data', 'convert', '--input', 't.parquet', '--output', 'out'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=tfscale_env())
    assert proc.returncode == 2 and "tfscale[parquet]" in proc.stderr, proc.stderr


def test_convert_writes_shards_and_a_spec(tmp_path):
    pytest.importorskip("pyarrow")
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.arange(200, dtype="float32").reshape(50, 4)
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "label": np.arange(50) % 3}), tmp_path / "t.parquet")
    result = run_tfscale(["data", "convert", "--input", "t.parquet", "--output", "out", "--shards", "4",
                          "--label-key", "label", "--format", "csv"], tmp_path)
    assert result.returncode == 0, result.output
    spec = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert spec["splits"]["train"]["files"] == 4 and spec["num_classes"] == 3 and spec["format"] == "csv"
    assert sum(s["records"] for s in spec["splits"].values()) == 50
    assert (tmp_path / "out" / "train-00000-of-00004.csv").read_text().splitlines()[0] == "a,b,label"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert "data=csv_shards data.spec=out" in result.stdout
