"""Helpers for tests: run the real ``tfscale`` command as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def tfscale_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def run_tfscale(args: Sequence[str], cwd: Path, *, timeout: float = 600, env: dict | None = None) -> Result:
    """Run ``tfscale ARGS`` as a user would, in ``cwd``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env or tfscale_env())
    return Result(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)
