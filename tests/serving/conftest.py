"""Fixtures of the serving tests (helpers live in serving_testkit.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# The helpers module sits beside this file; tests here are plain modules (no package).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_testkit import MODEL, REPO_ROOT, build_saved_model, publish, serving_settings


@pytest.fixture(scope="session")
def templates(tmp_path_factory):
    """Two different SavedModels (seeds 1 and 2), built once per session."""
    root = tmp_path_factory.mktemp("templates")
    out = {}
    for v in (1, 2):
        build_saved_model(root / f"v{v}", seed=v)
        out[v] = root / f"v{v}"
    return out


@pytest.fixture()
def repo(tmp_path, templates):
    """A model repository with ``digits_mlp/0001``."""
    base = tmp_path / "models"
    publish(base / MODEL, 1, templates[1])
    return base


@pytest.fixture(scope="session")
def digits_rows():
    """Eight rows of scikit-learn's digits as float32 [8, 64]."""
    from sklearn.datasets import load_digits

    return load_digits().data[:8].astype(np.float32)


@pytest.fixture()
def start_server():
    """Start EmbeddedServers in this process; every one is stopped at the end of the test."""
    from orchestrator.serving.server import EmbeddedServer

    started = []

    def start(base, **overrides):
        server = EmbeddedServer(serving_settings(base, **overrides))
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def python_env():
    """Environment for child processes that import orchestrator from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env
