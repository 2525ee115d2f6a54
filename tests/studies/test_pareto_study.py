"""A two-objective study end to end: ``tfscale -m study=digits_pareto`` returns a Pareto set of trials, each
with its overrides, measured on the validation split (the test split stays unseen by the search)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.launch.objectives import trial_objectives
from orchestrator.launch.trial_channel import TrialChannel
from tfscale_testing import run_tfscale

ACCURACY, SIZE = "quantization.quantized.accuracy", "quantization.quantized.tflite_bytes"


@pytest.mark.slow
def test_digits_pareto_study_returns_a_pareto_set_with_overrides(tmp_path):
    result = run_tfscale(["-m", "study=digits_pareto", "study.max_trials=6", "trainer.epochs=3", "trainer.verbose=0",
                          "export.enabled=false", "hydra.sweeper.plots=false"], tmp_path, timeout=600)
    assert result.returncode == 0, result.output
    sweep_dir = tmp_path / "runs" / "studies" / "digits_pareto"
    with open(sweep_dir / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 3, rows
    for row in rows:
        keys = [o.split("=")[0] for o in row["overrides"].split()]
        assert keys == ["model.layers.1.units", "model.optimizer.learning_rate"], row
        report = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())["quantization"]
        assert report["mode"] == "int8" and report["evaluated_on"] == "validation"
        assert float(row[ACCURACY]) == report["quantized"]["accuracy"]
        assert float(row[SIZE]) == report["quantized"]["tflite_bytes"]
    # No point of the set is beaten on both metrics by another, and smaller files come with lower accuracy.
    points = sorted((float(r[SIZE]), float(r[ACCURACY])) for r in rows)
    assert all(a[1] < b[1] for a, b in zip(points, points[1:]) if a[0] < b[0]), points
    assert f"Pareto set (maximize {ACCURACY}, minimize {SIZE}): {len(rows)} trials" in result.stdout
    assert "## Pareto set" in (sweep_dir / "study.md").read_text()


def test_an_objective_measured_on_the_test_split_is_refused(tmp_path):
    metrics = {"quantization": {"evaluated_on": "test", "quantized": {"accuracy": 0.9, "tflite_bytes": 5000}}}
    channel = TrialChannel(tmp_path)
    assert trial_objectives(metrics, channel, [f"{SIZE}"]) == {SIZE: 5000.0}  # a size reads no labels
    with pytest.raises(ConfigError, match="quantization.evaluation_split=validation"):
        trial_objectives(metrics, channel, [ACCURACY, SIZE])
    metrics["quantization"]["evaluated_on"] = "validation"
    assert trial_objectives(metrics, channel, [ACCURACY]) == {ACCURACY: 0.9}


def test_validation_split_evaluation_needs_a_validation_split(tfscale):
    result = tfscale("quantization=int8", "quantization.evaluation_split=validation", "data.validation_split=0")
    assert result.returncode != 0
    assert "quantization.evaluation_split" in result.stderr and "data.validation_split" in result.stderr
    assert result.seconds < 15
