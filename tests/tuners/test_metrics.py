import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tuners import list_tb_tags, read_reported_metrics, read_tb_scalar, report_metric
from tuners.metrics import EventWriter, crc32c, iter_tfrecords


def write_events(logdir, tag, values, *, tensor=False, start_step=0):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.util import tensor_util

    writer = EventWriter(logdir)
    for i, v in enumerate(values):
        if tensor:
            value = summary_pb2.Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(np.float32(v)))
        else:
            value = summary_pb2.Summary.Value(tag=tag, simple_value=v)
        writer.add_event(event_pb2.Event(step=start_step + i, wall_time=100.0 + i,
                                         summary=summary_pb2.Summary(value=[value])))
    writer.close()
    return [str(writer.path)]


def test_crc32c_known_vector():
    assert crc32c(b"123456789") == 0xE3069283


def test_keras_layout_and_aliases(tmp_path):
    write_events(tmp_path / "train", "epoch_accuracy", [0.5, 0.6, 0.7], tensor=True)
    write_events(tmp_path / "validation", "epoch_accuracy", [0.4, 0.55, 0.65], tensor=True)
    assert list_tb_tags(tmp_path) == ["train/epoch_accuracy", "validation/epoch_accuracy"]
    expected = [(0, 0.4), (1, 0.55), (2, 0.65)]
    for tag in ("validation/epoch_accuracy", "val_accuracy", "accuracy"):
        curve = read_tb_scalar(tmp_path, tag)
        assert [s for s, _ in curve] == [s for s, _ in expected]
        assert [v for _, v in curve] == pytest.approx([v for _, v in expected], rel=1e-6)
    with pytest.raises(ValueError, match="several directories.*validation/epoch_accuracy"):
        read_tb_scalar(tmp_path, "epoch_accuracy")
    assert read_tb_scalar(tmp_path, "missing") == []


def test_several_files_and_truncated_last_record(tmp_path):
    write_events(tmp_path, "loss", [3.0, 2.0])
    (path,) = write_events(tmp_path / "more", "loss", [1.5, 1.0, 0.5], start_step=2)
    assert read_tb_scalar(tmp_path, "more/loss") == [(2, 1.5), (3, 1.0), (4, 0.5)]
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-5])  # the writer died mid-record
    assert read_tb_scalar(tmp_path, "more/loss") == [(2, 1.5), (3, 1.0)]
    assert read_tb_scalar(tmp_path, "loss") == [(0, 3.0), (1, 2.0)]
    with open(path, "wb") as f:
        f.write(data[:-30] + b"\x00" * 4 + data[-26:])  # corrupt, not truncated
    assert len(list(iter_tfrecords(path))) < len(list(iter_tfrecords(path, check_data_crc=False))) + 1


def test_report_metric_round_trip(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("TFSCALE_TRIAL_METRICS", str(path))
    report_metric(0.5, step=1, tag="accuracy")
    report_metric(0.7, step=2, tag="accuracy")
    report_metric(1.2, tag="loss", path=path)
    with open(path, "a") as f:
        f.write('{"tag": "accuracy", "val')  # cut short
    records = read_reported_metrics(path, "accuracy")
    assert [(r["step"], r["value"]) for r in records] == [(1, 0.5), (2, 0.7)]
    monkeypatch.delenv("TFSCALE_TRIAL_METRICS")
    with pytest.raises(RuntimeError, match="TFSCALE_TRIAL_METRICS"):
        report_metric(1.0)


@pytest.mark.slow
def test_real_tf_summary_events(tmp_path):
    code = textwrap.dedent(f"""
        import tensorflow as tf
        w = tf.summary.create_file_writer({str(tmp_path / 'validation')!r})
        with w.as_default():
            for step in range(3):
                tf.summary.scalar('epoch_accuracy', 0.25 * (step + 1), step=step)
        w.close()
    """)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    points = read_tb_scalar(tmp_path, "val_accuracy")
    assert [step for step, _ in points] == [0, 1, 2]
    assert [value for _, value in points] == pytest.approx([0.25, 0.5, 0.75])


@pytest.mark.slow
def test_tensorboard_event_file_writer(tmp_path):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(tmp_path))
    for step in range(3):
        value = summary_pb2.Summary.Value(tag="loss", simple_value=1.0 / (step + 1))
        writer.add_event(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[value])))
    writer.close()
    assert read_tb_scalar(tmp_path, "loss") == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]


@pytest.mark.slow
def test_tfscale_run_dir_tags_resolve(tmp_path):
    """A tfscale run writes tf_keras' layout under <run_dir>/tensorboard; short tags find it from the run dir."""
    from tfscale_testing import run_tfscale

    result = run_tfscale(["trainer.epochs=2", "trainer.verbose=0", "export.enabled=false"], tmp_path)
    assert result.returncode == 0, result.output[-2000:]
    run_dir = next(tmp_path.glob("runs/*/*"))
    val = read_tb_scalar(run_dir, "val_accuracy")
    assert [step for step, _ in val] == [0, 1]
    assert read_tb_scalar(run_dir, "accuracy") == val
    assert [s for s, _ in read_tb_scalar(run_dir, "train/epoch_loss")] == [0, 1]
