"""Conformance suite for deploy targets, shipped so every implementation (here or in plugins) runs it.

A test module subclasses :class:`BasicDeployTargetTestCase`, sets ``name`` and fills in ``valid_overrides``
and ``invalid_overrides``; pytest collects the inherited ``test_*`` methods. ``deploy`` gets a real
published SavedModel version: a tiny tf_keras model exported once per test session by
:func:`orchestrator.artifacts.export.export_version` and copied for each test (marked ``slow``: it imports
TensorFlow).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from orchestrator.config.compose import compose
from orchestrator.config.registry import DEPLOY_TARGETS, deploy_target
from orchestrator.config.testing import Invalid, assert_accepted, assert_rejected
from orchestrator.deploy.base import DeployTarget
from orchestrator.runtime.testing import child_pids, left_behind

__all__ = ["BasicDeployTargetTestCase", "Invalid", "shared_version"]

_SHARED: Dict[str, Path] = {}  # root -> the version published there: exported once per test session


def shared_version(root: Path) -> Path:
    """A SavedModel version of a tiny digits classifier, published under ``root`` once per process."""
    if str(root) not in _SHARED:
        from orchestrator.artifacts.export import export_version
        from orchestrator.runtime.tf_env import import_keras, import_tensorflow

        tf, keras = import_tensorflow(), import_keras()
        cfg = compose([f"export.model_base={root / 'models'}"])
        shape = [int(n) for n in cfg.data.image_shape]
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.layers.Input(shape), keras.layers.Flatten(),
                                  keras.layers.Dense(10, activation="softmax")])
        _SHARED[str(root)] = export_version(tf, model, cfg, shape, {"run_dir": str(root), "test": {}})
    return _SHARED[str(root)]


def _contents(directory: Path) -> Dict[str, str]:
    """Every file under ``directory`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


class BasicDeployTargetTestCase:
    """Behaviour every deploy target must show; subclasses set ``name`` and ``valid_overrides(workdir)``."""

    #: The name the target is registered under (``deploy.target``).
    name: str = ""
    #: Keys the dict ``deploy`` returns must have (it is recorded under ``deploy`` in metrics.json).
    result_keys: Sequence[str] = ()
    exit_grace_s: float = 20.0

    # ------------------------------------------------------------------------------------- hooks
    def valid_overrides(self, workdir: Path) -> List[str]:
        """Overrides that select this target with settings it accepts (paths under ``workdir``)."""
        raise AssertionError("subclasses must define valid_overrides()")

    def invalid_overrides(self, workdir: Path) -> List[Invalid]:
        """Settings ``check`` must reject, with the key its ConfigError must name."""
        return []

    def missing_requirement(self) -> Optional[str]:
        """Why ``deploy`` cannot run on this machine (an external tool is missing), or None."""
        return None

    def check_result(self, result: Dict[str, Any], version_dir: Path, workdir: Path) -> None:
        """Further assertions on what ``deploy`` returned and left behind."""

    # ------------------------------------------------------------------------------------ helpers
    def target(self) -> DeployTarget:
        return deploy_target(self.name)

    @pytest.fixture
    def published_version(self, tmp_path_factory, tmp_path) -> Path:
        """A copy of the session's published version at ``<tmp_path>/models/<name>/0001``."""
        why = self.missing_requirement()
        if why is not None:
            pytest.skip(f"deploy={self.name} cannot deploy here: {why}")
        shared = shared_version(tmp_path_factory.getbasetemp() / "deploy_conformance")
        version = tmp_path / "models" / shared.parent.name / shared.name
        shutil.copytree(shared, version)
        return version

    # -------------------------------------------------------------------------------------- tests
    def test_registered_under_its_name(self):
        assert self.name in DEPLOY_TARGETS
        target = self.target()
        assert isinstance(target, DeployTarget) and type(target).name == self.name

    def test_check_accepts_valid_settings_fast_and_without_tensorflow(self, tmp_path):
        cfg = assert_accepted(self.target().check, self.valid_overrides(tmp_path))
        assert cfg.deploy.target == self.name

    def test_check_rejects_bad_settings_naming_key_and_value(self, tmp_path):
        cases = self.invalid_overrides(tmp_path)
        if not cases:
            pytest.skip(f"deploy={self.name} has no settings to get wrong")
        for case in cases:
            assert_rejected(self.target().check, case)

    @pytest.mark.slow
    def test_deploy_records_json_and_leaves_the_version_and_no_process(self, published_version, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        model_base = published_version.parent.parent
        cfg = compose([*self.valid_overrides(tmp_path), f"export.model_base={model_base}"])
        contents = _contents(published_version)
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        before = child_pids()
        result = self.target().deploy(cfg, published_version, run_dir)
        assert isinstance(result, dict)
        assert json.loads(json.dumps(result)) == result, "the result is recorded in metrics.json: plain JSON only"
        for key in self.result_keys:
            assert key in result, sorted(result)
        # A deploy reads the published version; it never changes it (servers may be loading it).
        assert _contents(published_version) == contents
        self.check_result(result, published_version, tmp_path)
        left = left_behind(model_base, before, self.exit_grace_s)
        assert not left, f"processes left behind by deploy={self.name}: {left}"
