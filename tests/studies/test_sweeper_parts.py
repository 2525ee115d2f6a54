"""The sweeper's metric lookup, the launchers' GPU assignment and stop requests, without training."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from orchestrator.errors import ConfigError
from orchestrator.launch.hydra_launchers import STOP_FILE, _run_job_in_worker, gpu_slots, visible_gpu_ids
from orchestrator.launch.sweeper import epoch_key, objective_from_files, objective_from_metrics, tags_found

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

    with EventWriter(tmp_path / "tensorboard" / "validation") as writer:
        writer.add_scalar("epoch_accuracy", 0.5, 0)
        writer.add_scalar("epoch_accuracy", 0.75, 1)
    assert objective_from_files(tmp_path, "accuracy") == 0.75
    report_metric(0.42, step=3, tag="f1", path=tmp_path / "reported_metrics.jsonl")
    assert objective_from_files(tmp_path, "f1") == pytest.approx(0.42)
    assert objective_from_files(tmp_path, "auc") is None
    found = tags_found({"validation": {"accuracy": 0.9}}, tmp_path)
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


def test_a_stop_request_terminates_the_job_process(tmp_path):
    job_dir = tmp_path / "trial_0"
    threading.Timer(1.5, lambda: (job_dir / STOP_FILE).touch()).start()
    start = time.monotonic()
    out = _run_job_in_worker([sys.executable, "-c", "import time; time.sleep(120)"], {"TFSCALE_TRIAL_ID": "0"},
                             str(tmp_path), str(job_dir), stop_timeout_s=2.0)
    assert out["stopped"] and out["returncode"] != 0
    assert time.monotonic() - start < 20
