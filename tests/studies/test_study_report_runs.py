"""The study report of a real ``tfscale -m`` study, on an install without matplotlib (slow: it trains)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tfscale_testing import run_tfscale, tfscale_env

# A core install (`pip install -e .`, no extras) has no matplotlib: every process of the study meets the
# ImportError a missing package raises.
SITECUSTOMIZE = 'import sys\nsys.modules["matplotlib"] = None\n'


@pytest.mark.slow
def test_a_study_without_matplotlib_runs_to_its_end_with_report_and_hparams(tmp_path):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import metadata

    from tuners.metrics import iter_tfrecords
    from tuners.results import PLOTS_MISSING

    shim = tmp_path / "no_matplotlib"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    work = tmp_path / "work"
    work.mkdir()
    result = run_tfscale(["-m", "study=digits_lr_units", "study.max_trials=2", "trainer.epochs=2", "trainer.verbose=0",
                          "export.enabled=false", "data.limit=300"], work, timeout=600,
                         env=tfscale_env(PYTHONPATH=str(shim)))
    assert result.returncode == 0, result.output[-4000:]
    assert PLOTS_MISSING in result.output and "Traceback" not in result.output
    sweep_dir = work / "runs" / "studies" / "digits_lr_units"
    assert not list(sweep_dir.glob("*.png"))
    assert PLOTS_MISSING in (sweep_dir / "study.md").read_text()
    html = (sweep_dir / "study.html").read_text()
    assert "<svg" in html and "Parallel coordinates" in html and 'href="trial_0/"' in html
    # HParams: one session per trial in the study's view, and every trial, a tfscale run, has its own with
    # its overrides as hyperparameters.
    assert sorted(p.name for p in (sweep_dir / "tensorboard").iterdir()) == ["trial_0", "trial_1"]
    (session,) = (sweep_dir / "trial_0" / "tensorboard").glob("*.hparams")
    values = {v.tag: v for r in iter_tfrecords(session) for v in event_pb2.Event.FromString(r).summary.value}
    start = metadata.parse_session_start_info_plugin_data(
        values["_hparams_/session_start_info"].metadata.plugin_data.content)
    assert {"model.optimizer.learning_rate", "model.layers.1.units", "trainer.epochs"} <= set(start.hparams)
    assert start.hparams["trainer.epochs"].number_value == 2
    assert "final/test_accuracy" in values and "_hparams_/session_end_info" in values
    assert Path(session).stat().st_size < 4096
