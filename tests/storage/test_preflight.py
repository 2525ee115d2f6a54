"""Before any training: a bucket URI that cannot be written fails in one line, exit 2, in seconds, writing nothing."""
from __future__ import annotations

import socket

import pytest

from tfscale_testing import run_tfscale, tfscale_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict:
    env = tfscale_env(**extra)
    for key in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        if key not in extra:
            env.pop(key, None)
    return env


def _assert_refused(result, uri: str, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("tfscale: error: Invalid config 'runs_dir'"), result.output
    assert uri in lines[0] and all(w in lines[0] for w in words), lines[0]
    assert result.seconds < 8, result.seconds
    assert list(result.cwd.iterdir()) == [], "a refused run wrote into its working directory"


def test_missing_bucket(gcs_server, tmp_path):
    uri = "gs://no-such-bucket-here/runs"
    result = run_tfscale([f"runs_dir={uri}"], tmp_path, env=_env(STORAGE_EMULATOR_HOST=gcs_server), timeout=60)
    _assert_refused(result, uri, "does not exist", "gcloud storage buckets create gs://no-such-bucket-here")


def test_unreachable_endpoint(tmp_path):
    uri = "gs://tfscale-test/runs"
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_tfscale([f"runs_dir={uri}"], tmp_path, env=_env(STORAGE_EMULATOR_HOST=closed), timeout=60)
    _assert_refused(result, uri, "Cannot reach", closed, "STORAGE_EMULATOR_HOST")


def test_missing_credentials(tmp_path):
    pytest.importorskip("gcsfs")
    uri = "gs://tfscale-test/runs"
    result = run_tfscale([f"runs_dir={uri}"], tmp_path, env=_env(GOOGLE_APPLICATION_CREDENTIALS="/nonexistent"),
                         timeout=60)
    _assert_refused(result, uri, "No Google Cloud credentials", "GOOGLE_APPLICATION_CREDENTIALS")


def test_model_base_is_checked_too(gcs_server, tmp_path):
    uri = "gs://no-such-bucket-here/models"
    result = run_tfscale([f"export.model_base={uri}"], tmp_path, env=_env(STORAGE_EMULATOR_HOST=gcs_server), timeout=60)
    assert result.returncode == 2 and "Invalid config 'export.model_base'" in result.stderr and uri in result.stderr, result.output
    assert not (tmp_path / "runs").exists()
