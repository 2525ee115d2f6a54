"""Shared fixtures: run the real ``tfscale`` command in a scratch directory."""
from __future__ import annotations

import pytest

from tfscale_testing import Result, run_tfscale


@pytest.fixture
def tfscale(tmp_path):
    """``tfscale(*args)`` runs the CLI with ``tmp_path`` as the working directory."""
    def _run(*args: str, **kw) -> Result:
        return run_tfscale(args, tmp_path, **kw)

    _run.cwd = tmp_path
    return _run
