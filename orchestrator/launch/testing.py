"""Conformance suite for backends, shipped so every implementation (here or in plugins) runs it.

A test module subclasses :class:`BasicBackendTestCase`, sets ``name`` and fills in ``valid_overrides`` and
``invalid_overrides``; pytest collects the inherited ``test_*`` methods. Configs are composed from the
project's ``conf/`` as a user's command line would be. ``run`` trains a tiny experiment (1 epoch on a few
hundred digits, marked ``slow``) from a run directory prepared as ``tfscale`` prepares it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence

import pytest

from orchestrator.config.compose import compose
from orchestrator.config.registry import BACKENDS, backend
from orchestrator.config.testing import Invalid, assert_accepted, assert_rejected
from orchestrator.config.validation import validate
from orchestrator.launch.base import Backend
from orchestrator.runtime.testing import child_pids, left_behind

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

__all__ = ["BasicBackendTestCase", "Invalid", "TINY", "prepare_run_dir"]

#: Added to every run of the suite: one short epoch, no TensorBoard, quiet; no SavedModel (what a backend
#: returns is the chief's metrics; publishing is the deploy suite's concern).
TINY = ("trainer=quick", "trainer.epochs=1", "trainer.batch_size=32", "data.limit=300", "trainer.tensorboard=false",
        "trainer.verbose=0", "backend.stream_logs=false", "export=none")


class BasicBackendTestCase:
    """Behaviour every backend must show; subclasses set ``name`` and ``valid_overrides(workdir)``."""

    #: The name the backend is registered under (``backend.name``).
    name: str = ""
    #: Keys of the metrics ``run`` returns (what the chief wrote to metrics.json).
    metric_keys: Sequence[str] = ("test", "validation")
    #: Seconds the slow run may take, and how long its processes may take to go away afterwards.
    run_timeout_s: float = 300.0
    exit_grace_s: float = 20.0

    # ------------------------------------------------------------------------------------- hooks
    def valid_overrides(self, workdir: Path) -> List[str]:
        """Overrides of an experiment this backend runs (``backend=<name>`` and what it needs)."""
        raise AssertionError("subclasses must define valid_overrides()")

    def invalid_overrides(self, workdir: Path) -> List[Invalid]:
        """Configs this backend cannot run, with the key its ConfigError must name."""
        return []

    def check_metrics(self, metrics: Dict[str, Any], run_dir: Path) -> None:
        """Further assertions on what ``run`` returned (e.g. the job's final state)."""

    # ------------------------------------------------------------------------------------ helpers
    def backend(self) -> Backend:
        return backend(self.name)

    # -------------------------------------------------------------------------------------- tests
    def test_registered_under_its_name(self):
        assert self.name in BACKENDS
        b = self.backend()
        assert isinstance(b, Backend) and type(b).name == self.name
        assert isinstance(type(b).launches_clusters, bool)

    def test_check_accepts_a_valid_config_fast_and_without_tensorflow(self, tmp_path):
        cfg = assert_accepted(self.backend().check, self.valid_overrides(tmp_path))
        assert cfg.backend.name == self.name

    def test_check_rejects_what_it_cannot_run_naming_key_and_value(self, tmp_path):
        cases = self.invalid_overrides(tmp_path)
        if not cases:
            pytest.skip(f"backend={self.name} runs every valid experiment")
        for case in cases:
            assert_rejected(self.backend().check, case)

    @pytest.mark.slow
    def test_run_returns_the_chiefs_metrics_and_leaves_no_process(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)  # relative paths of the config (models/, runs/) land here
        cfg = compose([*self.valid_overrides(tmp_path), *TINY])
        validate(cfg)
        run_dir = prepare_run_dir(cfg, tmp_path / "runs" / "conformance")
        before = child_pids()
        start = time.monotonic()
        metrics = self.backend().run(cfg, run_dir)
        assert time.monotonic() - start < self.run_timeout_s
        assert isinstance(metrics, dict)
        for key in self.metric_keys:
            assert key in metrics, sorted(metrics)
        for split in ("test", "validation"):
            if split in self.metric_keys:
                values = metrics[split]
                assert values and all(isinstance(v, float) for v in values.values()), values
                if "accuracy" in values:
                    assert 0.0 <= values["accuracy"] <= 1.0
        recorded = json.loads((run_dir / "metrics.json").read_text())
        assert recorded == json.loads(json.dumps(metrics)), "run must return what metrics.json records"
        self.check_metrics(metrics, run_dir)
        left = left_behind(run_dir, before, self.exit_grace_s)
        assert not left, f"processes left behind by backend={self.name}: {left}"


def prepare_run_dir(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """A run directory as ``tfscale`` leaves it before a backend runs: holding the resolved config."""
    from orchestrator.artifacts.run_record import RunRecord

    RunRecord(run_dir).write_config(cfg)
    return run_dir
