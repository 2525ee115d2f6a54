"""Several study trials on one GPU (``hydra.launcher.trials_per_gpu``), and the GPU check script on a machine
without a GPU. The GPU paths themselves run in ``benchmarks/gpu_check.py`` on a GPU machine."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from orchestrator.config.devices import check_gpu_share
from orchestrator.errors import ConfigError
from orchestrator.launch.hydra_launchers import ProcessesLauncher, gpu_slots

REPO = Path(__file__).resolve().parents[2]


def test_trials_per_gpu_hands_each_gpu_to_that_many_slots():
    assert gpu_slots(2, ["0"], None, trials_per_gpu=2) == [["0"], ["0"]]
    # Round robin: with two GPUs, two trials go to different GPUs before any GPU gets a second one.
    assert gpu_slots(4, ["0", "1"], None, trials_per_gpu=2) == [["0"], ["1"], ["0"], ["1"]]
    assert gpu_slots(2, ["0", "1"], 1, trials_per_gpu=3) == [["0"], ["1"]]
    # More trials than shares: fewer run at once.
    assert gpu_slots(5, ["0"], None, trials_per_gpu=2) == [["0"], ["0"]]
    assert gpu_slots(2, ["0", "1"], None) == [["0"], ["1"]]  # the default stays one trial per GPU


def test_trials_per_gpu_needs_a_gpu_and_one_gpu_per_trial():
    with pytest.raises(ConfigError) as err:
        gpu_slots(2, [], None, trials_per_gpu=2)
    assert err.value.key == "hydra.launcher.trials_per_gpu" and "no GPU" in str(err.value)
    with pytest.raises(ConfigError) as err:
        gpu_slots(2, ["0", "1"], 2, trials_per_gpu=2)
    assert err.value.key == "hydra.launcher.gpus_per_trial"
    with pytest.raises(ConfigError) as err:
        ProcessesLauncher(trials_per_gpu=0)
    assert err.value.key == "hydra.launcher.trials_per_gpu"


def test_sharing_a_gpu_needs_a_memory_slice_per_trial():
    with pytest.raises(ConfigError) as err:
        check_gpu_share(2, None)
    assert err.value.key == "hydra.launcher.trials_per_gpu"
    assert "topology.gpu_memory_limit_mb" in str(err.value) and "/ 2" in str(err.value)
    check_gpu_share(1, None)
    check_gpu_share(2, 4096)


def test_a_study_sharing_gpus_without_a_memory_limit_stops_before_any_trial(tfscale):
    result = tfscale("-m", "study=diabetes_mae", "hydra.launcher.trials_per_gpu=2", timeout=120)
    assert result.returncode == 2, result.output[-2000:]
    assert "hydra.launcher.trials_per_gpu" in result.stderr and "topology.gpu_memory_limit_mb" in result.stderr
    assert not (tfscale.cwd / "runs").exists()  # refused at validation: no study directory, no trial


def test_gpu_check_skips_without_a_gpu():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "TFSCALE_FAKE_GPU_COUNT": "0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no GPU: skipped"
