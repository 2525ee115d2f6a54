"""Device planning (no TensorFlow) and atomic publishing of model versions."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestrator.config.compose import compose
from orchestrator.errors import ConfigError
from orchestrator.artifacts.export import existing_versions, publish_directory
from orchestrator.config.devices import plan_devices
from orchestrator.training.topology import set_process_environment


def test_cpu_split_plan():
    plan = plan_devices(compose(["topology=cpu_x4"]).topology, gpus_on_machine=0)
    assert (plan.logical_cpus, plan.logical_gpus) == (4, 0)
    assert plan.accelerator_devices == ["/cpu:0", "/cpu:1", "/cpu:2", "/cpu:3"]


def test_virtual_gpus_multiply_physical():
    plan = plan_devices(compose(["topology=gpu_split2"]).topology, env={}, gpus_on_machine=2)
    assert (plan.physical_gpus, plan.logical_gpus) == (2, 4)
    assert plan.accelerator_devices[-1] == "/gpu:3"


def test_visible_devices_restrict_gpus():
    plan = plan_devices(compose(["topology=gpu_growth"]).topology, env={}, gpus_on_machine=4)
    assert plan.physical_gpus == 2
    plan = plan_devices(compose([]).topology, env={"CUDA_VISIBLE_DEVICES": "1"}, gpus_on_machine=4)
    assert plan.physical_gpus == 1


def test_missing_gpu_is_an_error_unless_fallback_is_explicit():
    with pytest.raises(ConfigError, match="no visible GPU"):
        plan_devices(compose(["topology=gpu_split2"]).topology, env={}, gpus_on_machine=0)
    plan = plan_devices(compose(["topology=gpu_split2", "topology.on_missing_gpu=cpu_fallback"]).topology, env={}, gpus_on_machine=0)
    assert plan.gpu_fallback and plan.logical_gpus == 0 and "cpu_fallback" in plan.notes[0]


def test_process_environment_orders_gpus_by_pci_bus():
    env: dict = {}
    set_process_environment(compose(["topology=gpu_growth"]).topology, env)
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    env = {}
    set_process_environment(compose(["topology=cpu"]).topology, env)
    assert env["CUDA_VISIBLE_DEVICES"] == "-1"


def test_versions_are_numbered_and_ignore_temporaries(tmp_path: Path):
    model_dir = tmp_path / "m"
    first = publish_directory(model_dir, lambda d: (d / "saved_model.pb").write_text("x"))
    (model_dir / ".tmp-version-abc").mkdir()
    (model_dir / "notes").mkdir()
    second = publish_directory(model_dir, lambda d: (d / "saved_model.pb").write_text("y"))
    assert (first.name, second.name) == ("0001", "0002")
    assert existing_versions(model_dir) == [1, 2]


def test_failed_write_leaves_nothing(tmp_path: Path):
    model_dir = tmp_path / "m"

    def broken(d: Path):
        (d / "half").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        publish_directory(model_dir, broken)
    assert list(model_dir.iterdir()) == []


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path):
    model_dir = tmp_path / "m"
    results, barrier = [], threading.Barrier(4)

    def writer(d: Path):
        (d / "saved_model.pb").write_text(str(threading.get_ident()))
        barrier.wait()  # all four race for the same next number

    threads = [threading.Thread(target=lambda: results.append(publish_directory(model_dir, writer))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in results) == ["0001", "0002", "0003", "0004"]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]
