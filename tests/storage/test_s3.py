"""The same publishing contract on S3, against moto's S3 server (``AWS_ENDPOINT_URL``)."""
from __future__ import annotations

import socket
import sys
import time
import urllib.request

import pytest

from orchestrator.artifacts import publish, storage
from orchestrator.errors import ConfigError
from orchestrator.runtime import supervisor

BUCKET = "tfscale-test"


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("moto.server", reason="pip install -e '.[dev]' (moto[server])")
    pytest.importorskip("s3fs", reason="pip install -e '.[storage]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    child = supervisor.start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                             stdout=supervisor.DEVNULL, stderr=supervisor.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start")
                time.sleep(0.1)
        yield endpoint
    finally:
        child.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    import botocore.session

    client = botocore.session.get_session().create_client("s3", endpoint_url=s3_server)
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return f"s3://{BUCKET}"


def _version(tmp):
    (tmp / "variables").mkdir()
    (tmp / "variables" / "variables.index").write_bytes(b"index")
    (tmp / "saved_model.pb").write_bytes(b"graph")


def test_publish_into_s3(s3):
    model = f"{s3}/models/m"
    assert publish.publish_directory(model, _version) == f"{model}/0001"
    assert publish.publish_directory(model, _version) == f"{model}/0002"
    assert publish.existing_versions(model) == [1, 2]
    with pytest.raises(FileExistsError):  # the claim is create-only (If-None-Match: *)
        storage.put_bytes(f"{model}/.versions/0001.claim", b"x", create_only=True)


def test_preflight_names_a_missing_s3_bucket(s3):
    storage.check_access(f"{s3}/runs", "runs_dir")
    with pytest.raises(ConfigError, match="Bucket no-such-bucket does not exist"):
        storage.check_access("s3://no-such-bucket/runs", "runs_dir")
