"""End-to-end runs of the real ``tfscale`` command on digits (slow: they train)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def metrics_of(cwd: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cwd.glob("runs/*/*/metrics.json"))]


def test_default_experiment_trains_and_publishes_versions(tfscale):
    first = tfscale()
    assert first.returncode == 0, first.output[-3000:]
    versions = tfscale.cwd / "models" / "digits_mlp"
    assert sorted(p.name for p in versions.iterdir()) == ["0001"]
    (metrics,) = metrics_of(tfscale.cwd)
    assert metrics["test"]["accuracy"] >= 0.95
    assert metrics["replicas"] == 1 and metrics["model_version"].endswith("0001")
    run_dir = next(tfscale.cwd.glob("runs/*/*"))
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["packages"]["tensorflow"].startswith("2.21")
    assert prov["topology"]["logical_devices"] == ["/device:CPU:0"]
    assert (run_dir / ".hydra" / "config.yaml").exists() and list((run_dir / "tensorboard").rglob("events.out.tfevents*"))
    record = json.loads((versions / "0001" / "assets.extra" / "tfscale.json").read_text())
    assert record["run_dir"] == str(run_dir.resolve())
    assert "test_accuracy=" in first.stdout

    second = tfscale("trainer.epochs=2", "trainer.verbose=0")
    assert second.returncode == 0, second.output[-3000:]
    assert sorted(p.name for p in versions.iterdir()) == ["0001", "0002"]


@pytest.mark.parametrize("strategy", ["mirrored", "central_storage"])
def test_two_replicas_on_logical_cpus(tfscale, strategy):
    result = tfscale("topology=cpu_x2", f"strategy={strategy}", "trainer.verbose=0")
    assert result.returncode == 0, result.output[-3000:]
    (metrics,) = metrics_of(tfscale.cwd)
    assert metrics["replicas"] == 2 and metrics["strategy"] == strategy
    assert metrics["logical_devices"] == ["/device:CPU:0", "/device:CPU:1"]
    assert metrics["test"]["accuracy"] >= 0.95


def test_deterministic_runs_write_identical_metrics(tfscale):
    args = ("trainer.deterministic=true", "trainer.seed=7", "trainer.epochs=3", "trainer.verbose=0", "export.enabled=false")
    assert tfscale(*args).returncode == 0
    assert tfscale(*args).returncode == 0
    a, b = metrics_of(tfscale.cwd)
    for key in ("train", "validation", "test", "history"):
        assert a[key] == b[key], key


def test_saved_model_cli_agrees_with_inspect(tfscale):
    assert tfscale("trainer.epochs=3", "trainer.verbose=0").returncode == 0
    version = tfscale.cwd / "models" / "digits_mlp" / "0001"
    from sklearn.datasets import load_digits

    rows = load_digits().data[:25].astype("float32")  # raw 0..16 pixel values: the model rescales itself
    np.save(tfscale.cwd / "rows.npy", rows)
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    show = subprocess.run([*cli, "show", "--dir", str(version), "--all"], capture_output=True, text=True)
    assert show.returncode == 0, show.stderr[-2000:]
    assert "serving_default" in show.stdout and "features" in show.stdout and "probabilities" in show.stdout
    run = subprocess.run([*cli, "run", "--dir", str(version), "--tag_set", "serve", "--signature_def", "serving_default",
                          "--inputs", f"features={tfscale.cwd / 'rows.npy'}", "--outdir", str(tfscale.cwd / "out")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    # serving_default has the model's one output, as Keras' own export: the probabilities.
    assert sorted(p.name for p in (tfscale.cwd / "out").iterdir()) == ["probabilities.npy"]
    cli_classes = np.load(tfscale.cwd / "out" / "probabilities.npy").argmax(axis=1)
    ours = tfscale("inspect", str(version), "--run", "--inputs", f"features={tfscale.cwd / 'rows.npy'}")
    assert ours.returncode == 0, ours.output[-2000:]
    text = ours.stdout.split("Result for output key probabilities:")[1].split("Result for")[0]
    inspect_probs = np.array([float(t) for t in text.replace("[", " ").replace("]", " ").split()]).reshape(-1, 10)
    np.testing.assert_array_equal(cli_classes, inspect_probs.argmax(axis=1))
    shown = tfscale("inspect", str(version))
    assert "input  features: dtype=float32 shape=[None, 64]" in shown.stdout


def test_sweep_jobs_with_different_topologies_get_their_own_devices(tfscale):
    """Each job of a ``-m`` sweep trains in a task process of its own, so its topology still applies."""
    result = tfscale("-m", "topology=cpu,cpu_x2", "trainer.epochs=1", "trainer.verbose=0", "export.enabled=false")
    assert result.returncode == 0, result.output[-3000:]
    jobs = sorted(tfscale.cwd.glob("runs/*/multirun_*/*/metrics.json"))
    devices = [json.loads(p.read_text())["logical_devices"] for p in jobs]
    assert devices == [["/device:CPU:0"], ["/device:CPU:0", "/device:CPU:1"]]
    pids = {json.loads((p.parent / "provenance.json").read_text())["pid"] for p in jobs}
    assert len(pids) == 2  # two task processes, one per job
