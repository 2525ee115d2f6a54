"""Fixtures of the Vertex tests: the local fake API and the real ``tfscale`` console script."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vertex_fake_server import FakeVertex  # noqa: E402

TFSCALE = shutil.which("tfscale") or str(Path(sys.executable).parent / "tfscale")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_tfscale(cwd: Path, *args: str, env: dict | None = None, timeout: float = 300) -> Run:
    """Run the installed ``tfscale`` console script in ``cwd``."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    full_env.update(env or {})
    start = time.perf_counter()
    proc = subprocess.run([TFSCALE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


LOCATION = ["vertex.project=tfscale-test", "vertex.region=us-central1", "vertex.bucket=tfscale-test-bucket"]


@pytest.fixture
def fake_vertex():
    server = FakeVertex().start()
    yield server
    server.stop()


@pytest.fixture
def local_vertex(fake_vertex, tmp_path):
    """Overrides pointing tfscale at the fake API, with staging in ``tmp_path``."""
    return LOCATION + [f"vertex.api_endpoint={fake_vertex.address}", "vertex.insecure=true",
                       f"vertex.staging_dir={tmp_path / 'staging'}", f"vertex.output_dir={tmp_path / 'job_output'}",
                       "vertex.poll_interval_s=0.05", "vertex.max_poll_interval_s=0.2"]


def run_dir(cwd: Path) -> Path:
    """The single run directory a tfscale run created under ``cwd/runs``."""
    dirs = [p.parent for p in (cwd / "runs").rglob("config.resolved.yaml")]
    assert len(dirs) == 1, dirs
    return dirs[0]
