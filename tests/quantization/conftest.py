"""Fixtures of the quantization tests (helpers live in quantization_testkit.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The helpers module sits beside this file; tests here are plain modules (no package).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quantization_testkit import TRAIN, Run, run_tfscale  # noqa: E402


@pytest.fixture
def tfscale(tmp_path):
    """``tfscale(*args)`` in ``tmp_path`` (also ``tfscale.cwd``)."""
    def _run(*args: str, **kw) -> Run:
        return run_tfscale(tmp_path, *args, **kw)

    _run.cwd = tmp_path
    return _run


@pytest.fixture(scope="session")
def int8_run(tmp_path_factory) -> Run:
    """A digits MLP trained and converted to full int8, with a half-point gate."""
    run = run_tfscale(tmp_path_factory.mktemp("int8"), "quantization=int8", "quantization.max_accuracy_drop=0.005", *TRAIN)
    assert run.returncode == 0, run.output
    return run
