"""Helpers of the quantization tests: run the real ``tfscale`` console script in a scratch directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

@dataclass
class Run:
    """One finished ``tfscale`` invocation."""

    cwd: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def run_dir(self) -> Path:
        dirs = sorted((self.cwd / "runs").glob("*/*/"))
        assert dirs, f"no run directory under {self.cwd}\n{self.output}"
        return dirs[-1]

    @property
    def metrics(self) -> Dict[str, Any]:
        return json.loads((self.run_dir / "metrics.json").read_text())


def run_tfscale(cwd: Path, *args: str, env: Optional[Dict[str, str]] = None, timeout: float = 300) -> Run:
    """Run the installed ``tfscale`` command as a user would, with ``cwd`` as the working directory."""
    exe = shutil.which("tfscale")
    assert exe, "the tfscale console script is not installed (pip install -e .)"
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    start = time.perf_counter()
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    return Run(Path(cwd), proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)



# Trained long enough for the float model to settle (about 97% on digits); two seconds of fitting.
TRAIN = ("trainer.epochs=20", "trainer.verbose=0", "trainer.tensorboard=false")
