"""Shards in a bucket (fake-gcs-server): the framing reader, the same batches as local files, preflight errors,
and real runs that train from the bucket (alone, and as 2 MultiWorkerMirrored workers reading their own files)."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from orchestrator.artifacts import storage
from orchestrator.config.compose import compose
from storage.conftest import gcs, gcs_server  # noqa: F401  (the fake-gcs-server fixtures)
from tfscale_testing import run_tfscale, tfscale_env

QUIET = ["trainer.verbose=2", "trainer.tensorboard=false"]


@pytest.fixture(scope="module")
def tf():
    from orchestrator.runtime.tf_env import import_tensorflow

    return import_tensorflow()


def _records() -> list:
    """Records of every awkward size: empty, tiny, and larger than the chunks read below."""
    rng = np.random.default_rng(0)
    return [b"", b"x", *(rng.bytes(int(n)) for n in rng.integers(1, 3000, size=40)), rng.bytes(70000)]


def _write(tf, path: Path, records) -> Path:
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return path


def _read(uri: str, **kw) -> list:
    from orchestrator.training.records import tfrecord_chunks

    with storage.open_stream(uri) as f:
        return [r for chunk in tfrecord_chunks(f, str(uri), **kw) for r in chunk]


# ------------------------------------------------------------------------------------------ the framing reader
def test_framing_reader_reads_what_tfrecordwriter_wrote_locally_and_from_the_bucket(tf, tmp_path, gcs):
    records = _records()
    local = _write(tf, tmp_path / "a.tfrecord", records)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(local))] == records  # the reference reader agrees
    for chunk_bytes in (7, 4096, 1 << 21):  # records split across chunks, and whole files in one chunk
        assert _read(str(local), chunk_bytes=chunk_bytes) == records
    uri = f"{gcs}/a.tfrecord"
    storage.put_bytes(uri, local.read_bytes())
    assert _read(uri) == records and _read(uri, chunk_bytes=1000) == records


@pytest.mark.parametrize("where, damage, words", [
    (0, "flip", "the length at byte 0 fails its checksum"),
    (13, "flip", "fails its data checksum"),
    (-3, "truncate", "truncated TFRecord"),
])
def test_a_damaged_shard_fails_naming_the_file(tf, tmp_path, gcs, where, damage, words):
    from orchestrator.training.records import CorruptRecordError

    raw = bytearray(_write(tf, tmp_path / "a.tfrecord", [b"first record", b"second"]).read_bytes())
    if damage == "flip":
        raw[where] ^= 0x40
    else:
        raw = raw[:where]
    uri = f"{gcs}/bad-{damage}.tfrecord"
    storage.put_bytes(uri, bytes(raw))
    with pytest.raises(CorruptRecordError) as err:
        _read(uri)
    assert str(err.value).startswith(uri) and words in str(err.value)
    # Through tf.data, as a training run reads it: the error still names the file.
    from orchestrator.training.streaming import reader

    with pytest.raises(tf.errors.OpError) as tf_err:
        list(reader(tf, "tfrecord", remote=True)(tf.constant(uri)))
    assert uri in tf_err.value.message and words in tf_err.value.message


# ------------------------------------------------------------------------------------------ the same batches
@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tf):
    """4 TFRecord + 2 CSV shards of 10 rows (x[0] is the row number, the label its shard's number)."""
    from orchestrator.training.shards import write_split

    root = tmp_path_factory.mktemp("labelled")
    x = np.zeros((40, 4), dtype="float32")
    x[:, 0] = np.arange(40)
    y = np.repeat(np.arange(4), 10)
    write_split(root, "train", x, y, shards=4)
    write_split(root, "validation", x[:20], y[:20], shards=2)
    write_split(root, "csv", x[:20], y[:20], shards=2, fmt="csv", label_key="y")
    return root


def _batches(ds) -> list:
    return [(x.tolist(), y.tolist()) for x, y in ds.as_numpy_iterator()]


def test_a_bucket_source_gives_the_batches_of_the_same_local_files(tf, labelled, gcs):
    from orchestrator.training.streaming import StreamingSource

    storage.upload_dir(labelled, gcs)
    sources = {}
    for where in (str(labelled), gcs):
        cfg = compose(["data=tfrecord", f"data.train={where}/train-*.tfrecord", f"data.validation={where}/validation-*.tfrecord",
                       "data.feature_shape=[4]", "data.num_classes=4", "data.shuffle_buffer=100"])
        sources[where] = StreamingSource(tf, cfg.data, batch_size=5, seed=3)
    local, bucket = sources[str(labelled)], sources[gcs]
    assert bucket.files["train"] == [f"{gcs}/train-{i:05d}-of-00004.tfrecord" for i in range(4)]
    assert bucket.train_records == 40 and bucket.scale == local.scale
    assert bucket.describe()["read_through"] == {"train": "storage layer", "validation": "storage layer"}
    assert _batches(bucket.train(5).take(12)) == _batches(local.train(5).take(12))  # same records, same order
    for i in range(2):  # each pipeline of two: its own files, as from local disk
        assert _batches(bucket.train(5, pipelines=2, index=i).take(4)) == _batches(local.train(5, pipelines=2, index=i).take(4))
    assert _batches(bucket.evaluation("validation")) == _batches(local.evaluation("validation"))

    cfg = compose(["data=csv_shards", f"data.train={gcs}/csv-*.csv", f"data.validation={gcs}/csv-*.csv", "data.label_key=y",
                   "data.num_classes=4", "data.shuffle_buffer=0"])
    csv = StreamingSource(tf, cfg.data, batch_size=20, seed=0)
    (x, y), = _batches(csv.evaluation("validation"))
    assert csv.train_records == 20 and sorted(r[0] for r in x) == list(range(20)) and sorted(y) == sorted([0] * 10 + [1] * 10)


# ------------------------------------------------------------------------------------------ checked before training
def _one_line(result, key: str, *words: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"tfscale: error: Invalid config '{key}'") and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_uri_syntax_is_checked_offline(tmp_path):
    base = ["data=tfrecord", "data.feature_shape=[4]", "data.num_classes=4", "data.validation=gs://b/v-*.tfrecord"]
    env = {k: v for k, v in tfscale_env().items() if k != "STORAGE_EMULATOR_HOST"}
    for pattern, words in (("gs://bucket-*/train-*.tfrecord", "cannot hold a wildcard"), ("gs://just-a-bucket", "Name the files"),
                           ("hdfs://nn/train-*.tfrecord", "gs://, gcs://, s3://")):
        result = run_tfscale([*base, f"data.train={pattern}"], tmp_path, env=env, timeout=60)
        _one_line(result, "data.train", pattern, *words)
    result = run_tfscale([*base, "data.train=gs://b/t-*.tfrecord", "backend=processes", "cluster=ps_2x1",
                          "strategy=parameter_server"], tmp_path, env=env, timeout=60)
    _one_line(result, "data.train", "strategy=parameter_server", "multi_worker_mirrored")
    assert list(tmp_path.iterdir()) == []


def test_preflight_lists_the_bucket(tf, labelled, gcs, tmp_path):
    storage.upload_dir(labelled, gcs)
    base = ["data=tfrecord", "data.feature_shape=[4]", "data.num_classes=4", f"data.validation={gcs}/validation-*.tfrecord"]
    nothing = f"{gcs}/nothing-*.tfrecord"
    _one_line(run_tfscale([*base, f"data.train={nothing}"], tmp_path, timeout=60), "data.train", nothing, "matches no object")
    two = f"{gcs}/validation-*.tfrecord"  # 2 files for a chief and 2 workers, each wanting its own
    result = run_tfscale([*base, f"data.train={two}", "data.shard_policy=file", "trainer.batch_size=30", "backend=processes", "cluster=chief_workers_2",
                          "strategy=multi_worker_mirrored"], tmp_path, timeout=60)
    _one_line(result, "data.shard_policy", "matches 2 file(s) but 3 input pipelines")
    missing = f"{gcs}/no-dataset-here"
    _one_line(run_tfscale(["data=tfrecord", f"data.spec={missing}"], tmp_path, timeout=60), "data.spec", "Cannot read it")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ real runs
def _start(args, cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", *args, *QUIET], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=tfscale_env())


def _finish(proc: subprocess.Popen, cwd: Path, timeout: float = 400) -> dict:
    text, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, text[-4000:]
    run_dir = sorted(Path(cwd, "runs").glob("*/*/"))[-1]
    return {**json.loads((run_dir / "metrics.json").read_text()), "_run_dir": run_dir, "_output": text}


@pytest.fixture
def digits_in_bucket(gcs, tmp_path):
    """``tfscale data convert --digits`` published to the bucket (4 training shards), and a local copy of it."""
    uri = f"{gcs}/digits"
    result = run_tfscale(["data", "convert", "--digits", "--output", uri, "--shards", "4"], tmp_path, timeout=120)
    assert result.returncode == 0 and f"-> {uri}" in result.stdout, result.output
    assert sorted(storage.files(uri)) == sorted(["spec.json", *(f"train-{i:05d}-of-00004.tfrecord" for i in range(4)),
                                                 "validation-00000-of-00001.tfrecord", "test-00000-of-00001.tfrecord"])
    local = storage.download_dir(uri, tmp_path / "digits")
    return uri, local


@pytest.mark.slow
def test_training_from_the_bucket_matches_the_local_shards(digits_in_bucket, tmp_path):
    uri, local = digits_in_bucket
    args = {where: ["data=tfrecord", f"data.train={where}/train-*.tfrecord", f"data.validation={where}/validation-*.tfrecord",
                    "data.feature_shape=[64]", "data.num_classes=10", "trainer.epochs=1", "trainer.seed=7",
                    "trainer.deterministic=true", "runs_dir=runs", "export.model_base=models"]
            for where in (uri, str(local))}
    procs = {where: _start(a, tmp_path / ("bucket" if where == uri else "local")) for where, a in args.items()}
    m = {where: _finish(p, tmp_path / ("bucket" if where == uri else "local")) for where, p in procs.items()}
    bucket, disk = m[uri], m[str(local)]
    assert bucket["input"]["read_through"]["train"] == "storage layer" and disk["input"]["read_through"]["train"] == "tf.data"
    assert bucket["input"]["train_records"] == disk["input"]["train_records"] > 1000
    # Same records in the same order: the same steps, so the losses agree to float rounding.
    assert bucket["history"]["loss"] == pytest.approx(disk["history"]["loss"], rel=1e-5)
    assert bucket["validation"]["accuracy"] == pytest.approx(disk["validation"]["accuracy"], abs=1e-6)
    assert bucket["validation"]["accuracy"] > 0.5 and (tmp_path / "bucket" / bucket["model_version"] / "saved_model.pb").is_file()
    print(f"loss bucket {bucket['history']['loss']} local {disk['history']['loss']}; "
          f"val accuracy bucket {bucket['validation']['accuracy']:.4f} local {disk['validation']['accuracy']:.4f}")


@pytest.mark.slow
def test_two_workers_stream_their_own_files_from_the_bucket(digits_in_bucket, tmp_path):
    uri, _ = digits_in_bucket
    m = _finish(_start(["data=tfrecord", f"data.spec={uri}", "data.shard_policy=file", "trainer.epochs=1", "export.enabled=false",
                        "backend=processes", "cluster=workers_2", "strategy=multi_worker_mirrored"], tmp_path), tmp_path)
    files = m["input"]["shards"]["files"]
    assert m["input"]["shards"]["pipelines"] == 2 and len(files["0"]) == len(files["1"]) == 2
    assert all(f.startswith(f"{uri}/train-") for f in files["0"] + files["1"]) and not set(files["0"]) & set(files["1"])
    assert sorted(m["input"]["this_task"][0]["streamed"]) == sorted(files["0"])  # what the chief's pipeline opened
    log1 = (m["_run_dir"] / "tasks" / "worker-1.log").read_text()
    streamed = [line.rsplit("streaming ", 1)[1].split()[0] for line in log1.splitlines() if "input pipeline 1 of 2: streaming" in line]
    assert sorted(streamed) == sorted(files["1"]), log1[-3000:]
    assert m["history"]["loss"][-1] < 2.3  # it learned something in one epoch of 2 x 2 files
