"""A study tunes the regression preset, minimising its validation error (slow: it trains 2 trials)."""
from __future__ import annotations

import csv

import pytest

from tfscale_testing import run_tfscale

pytestmark = pytest.mark.slow


def test_diabetes_study_minimises_the_validation_mae(tmp_path):
    result = run_tfscale(["-m", "study=diabetes_mae", "study.max_trials=2", "trainer.epochs=2", "trainer.verbose=0",
                          "trainer.tensorboard=false", "export.enabled=false"], tmp_path, timeout=300)
    assert result.returncode == 0, result.output[-3000:]
    sweep = tmp_path / "runs" / "studies" / "diabetes_mae"
    with open(sweep / "study.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["COMPLETED", "COMPLETED"]
    errors = {r["trial_id"]: float(r["validation.mae"]) for r in rows}
    best = min(errors, key=errors.get)
    assert f"best trial {best}: validation.mae=" in result.stdout  # the lower error wins: MINIMIZE
