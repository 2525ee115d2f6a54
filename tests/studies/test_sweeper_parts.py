"""The sweeper's metric lookup, the launchers' GPU assignment and the trial channel, without training."""
from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.launch.hydra_launchers import gpu_slots, visible_gpu_ids
from orchestrator.launch.sweeper import epoch_key, objective_from_files, objective_from_metrics, tags_found
from orchestrator.launch.trial_channel import TrialChannel

METRICS = {"validation": {"accuracy": 0.9, "loss": 0.3}, "test": {"accuracy": 0.8, "loss": 0.5},
           "train": {"accuracy": 0.95, "loss": 0.2}, "examples_per_second": 120.0}


@pytest.mark.parametrize("tag,value", [
    ("accuracy", 0.9), ("epoch_accuracy", 0.9), ("val_accuracy", 0.9), ("validation/epoch_accuracy", 0.9),
    ("validation.accuracy", 0.9), ("test.accuracy", 0.8), ("test_accuracy", 0.8), ("train/epoch_loss", 0.2),
    ("loss", 0.3), ("examples_per_second", 120.0), ("f1", None),
])
def test_metric_tags_map_to_the_return_value(tag, value):
    assert objective_from_metrics(METRICS, tag) == value


def test_without_validation_split_accuracy_is_the_test_accuracy():
    assert objective_from_metrics({"test": {"accuracy": 0.7}}, "accuracy") == 0.7


def test_per_epoch_keys_follow_keras_history_names():
    assert epoch_key("accuracy") == "val_accuracy"
    assert epoch_key("validation/epoch_loss") == "val_loss"
    assert epoch_key("train/epoch_accuracy") == "accuracy"
    assert epoch_key("test.accuracy") is None  # no per-epoch test values: no early stopping on it


def test_objective_from_event_files_then_reported_metrics(tmp_path):
    from tuners import report_metric
    from tuners.metrics import EventWriter

    channel = TrialChannel(tmp_path)
    with EventWriter(tmp_path / "tensorboard" / "validation") as writer:
        writer.add_scalar("epoch_accuracy", 0.5, 0)
        writer.add_scalar("epoch_accuracy", 0.75, 1)
    assert objective_from_files(channel, "accuracy") == 0.75
    report_metric(0.42, step=3, tag="f1", path=channel.reported_metrics_path)
    assert objective_from_files(channel, "f1") == pytest.approx(0.42)
    assert objective_from_files(channel, "auc") is None
    found = tags_found({"validation": {"accuracy": 0.9}}, channel)
    assert {"validation.accuracy", "validation/epoch_accuracy", "f1"} <= set(found)


def test_parallel_trials_get_disjoint_gpus(monkeypatch):
    monkeypatch.setenv("TFSCALE_FAKE_GPU_COUNT", "4")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = visible_gpu_ids()
    assert gpus == ["0", "1", "2", "3"]
    assert gpu_slots(2, gpus, None) == [["0", "1"], ["2", "3"]]
    assert gpu_slots(4, gpus, None) == [["0"], ["1"], ["2"], ["3"]]
    assert gpu_slots(3, gpus, None) == [["0"], ["1"], ["2"]]
    # More parallel trials than GPUs: fewer run at once rather than sharing a GPU.
    assert gpu_slots(6, gpus, None) == [["0"], ["1"], ["2"], ["3"]]
    assert gpu_slots(2, gpus, 0) == [[], []]
    with pytest.raises(ConfigError, match="gpus_per_trial"):
        gpu_slots(2, gpus, 5)


def test_gpu_ids_come_from_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("TFSCALE_FAKE_GPU_COUNT", "8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert gpu_slots(2, visible_gpu_ids(), None) == [["4", "5"], ["6", "7"]]


def test_no_gpu_leaves_cuda_visible_devices_alone(monkeypatch):
    monkeypatch.setenv("TFSCALE_FAKE_GPU_COUNT", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_slots(2, visible_gpu_ids(), None) == [None, None]


def test_the_trial_channel_carries_stop_requests_and_measurements(tmp_path, monkeypatch):
    from orchestrator.artifacts.run_record import RunRecord
    from tuners import report_metric

    channel = TrialChannel(tmp_path / "trial_3")
    channel.reset()
    assert not channel.stop_requested and channel.epochs() == [] and channel.final_metrics() is None
    # The trial side: its run record and report_metric, which finds the file through the channel's env.
    record = RunRecord(channel.dir)
    record.append_epoch({"epoch": 1, "val_accuracy": 0.5})
    record.append_epoch({"epoch": 2, "val_accuracy": 0.7})
    record.write_metrics({"validation": {"accuracy": 0.7}})
    for name, value in channel.env().items():
        monkeypatch.setenv(name, value)
    report_metric(0.3, step=2, tag="f1")
    assert [e["val_accuracy"] for e in channel.epochs()] == [0.5, 0.7]
    assert [r["value"] for r in channel.reported_metrics("f1")] == [0.3]
    assert channel.final_metrics() == {"validation": {"accuracy": 0.7}}
    channel.request_stop()
    assert TrialChannel(channel.dir).stop_requested
    channel.reset()  # a re-run of the trial: nothing of the interrupted attempt is left
    assert not channel.stop_requested and channel.epochs() == [] and channel.reported_metrics() == []
