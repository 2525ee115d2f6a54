"""Helpers for tests: run the real ``tfscale`` command as a user would."""
from __future__ import annotations

import json
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
    """One finished ``tfscale`` invocation."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    cwd: Path | None = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def run_dir(self) -> Path:
        """The newest run directory the invocation left under ``runs/``."""
        dirs = sorted((self.cwd / "runs").glob("*/*/")) if self.cwd else []
        assert dirs, f"no run directory under {self.cwd}\n{self.output}"
        return dirs[-1]

    @property
    def metrics(self) -> dict:
        return json.loads((self.run_dir / "metrics.json").read_text())


def tfscale_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def run_tfscale(args: Sequence[str], cwd: Path, *, timeout: float = 600, env: dict | None = None) -> Result:
    """Run ``tfscale ARGS`` as a user would, in ``cwd``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env or tfscale_env())
    return Result(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start, Path(cwd))
