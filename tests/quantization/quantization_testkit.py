"""Helpers of the quantization tests: the shared runner of the real ``tfscale`` command, called cwd-first."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from tfscale_testing import Result, tfscale_env
from tfscale_testing import run_tfscale as run_tfscale_in

Run = Result


def run_tfscale(cwd: Path, *args: str, env: Optional[Dict[str, str]] = None, timeout: float = 300) -> Run:
    """Run ``tfscale`` as a user would, with ``cwd`` as the working directory (``env`` adds variables)."""
    return run_tfscale_in(args, cwd, timeout=timeout, env=tfscale_env(**(env or {})))


# Trained long enough for the float model to settle (about 97% on digits); two seconds of fitting.
TRAIN = ("trainer.epochs=20", "trainer.verbose=0", "trainer.tensorboard=false")
