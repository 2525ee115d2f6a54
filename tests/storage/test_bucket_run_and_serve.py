"""A whole run whose runs_dir and model repository are a bucket, then a server over that bucket (slow)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from orchestrator.artifacts import publish, storage
from tfscale_testing import run_tfscale, tfscale_env

MODEL = "digits_mlp"


@pytest.mark.slow
def test_run_into_a_bucket_then_serve_it_and_pick_up_a_new_version(gcs, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = run_tfscale([f"runs_dir={gcs}/runs", f"export.model_base={gcs}/models", "trainer.epochs=1"], work,
                         env=tfscale_env(), timeout=300)
    assert result.returncode == 0, result.output
    assert list(work.iterdir()) == [], "a run into a bucket wrote into its working directory"

    (run,) = storage.listdir(f"{gcs}/runs/{MODEL}")
    run_uri = f"{gcs}/runs/{MODEL}/{run}"
    record = storage.files(run_uri)
    for name in ("status.json", "metrics.json", "config.resolved.yaml", "provenance.json", "epochs.jsonl",
                 ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert name in record, sorted(record)
    assert any(k.startswith("tensorboard/train/events.out.tfevents") for k in record), sorted(record)
    assert json.loads(storage.read_text(f"{run_uri}/status.json"))["state"] == "completed"
    metrics = json.loads(storage.read_text(f"{run_uri}/metrics.json"))
    assert metrics["model_version"] == f"{gcs}/models/{MODEL}/0001"
    assert publish.existing_versions(f"{gcs}/models/{MODEL}") == [1]
    # The version points back at its run record in the bucket, not at the machine's scratch copy.
    version_record = json.loads(storage.read_text(f"{gcs}/models/{MODEL}/0001/assets.extra/tfscale.json"))
    assert version_record["run_dir"] == run_uri

    ready = tmp_path / "ready.json"
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", "serve", f"serving.model_base={gcs}/models",
                               "serving.rest_port=0", "serving.grpc_port=-1", f"serving.ready_file={ready}",
                               "serving.file_system_poll_wait_seconds=0.3"],
                              cwd=work, env=tfscale_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        url = f"http://127.0.0.1:{json.loads(ready.read_text())['rest_port']}/v1/models/{MODEL}"
        rows = np.zeros((4, 64), np.float32).tolist()
        assert len(requests.post(f"{url}:predict", json={"instances": rows}, timeout=10).json()["predictions"]) == 4

        # 0002 (a copy of 0001) is published into the bucket while requests keep coming.
        publisher = subprocess.Popen([sys.executable, "-c", (
            "import sys; from orchestrator.artifacts import publish, storage; "
            "print(publish.publish_directory(sys.argv[1], lambda tmp: storage.download_dir(sys.argv[1] + '/0001', tmp)))"),
            f"{gcs}/models/{MODEL}"], env=tfscale_env(), stdout=subprocess.PIPE, text=True)
        failed, served, versions = 0, 0, set()
        session = requests.Session()
        end = time.monotonic() + 30
        while time.monotonic() < end:  # bounded: at most 30 s of requests to 127.0.0.1
            r = session.post(f"{url}:predict", json={"instances": rows}, timeout=10)
            served += 1
            failed += r.status_code != 200
            status = session.get(url, timeout=10).json()["model_version_status"]
            versions = {s["version"] for s in status if s["state"] == "AVAILABLE"}
            if versions == {"2"} and publisher.poll() is not None:  # 0002 routed, 0001 retired
                break
        assert publisher.wait(timeout=30) == 0 and publisher.stdout.read().strip() == f"{gcs}/models/{MODEL}/0002"
        assert versions == {"2"}, (tmp_path / "server.log").read_text()
        assert failed == 0 and served > 0, (failed, served)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
            log.close()
    assert list(work.iterdir()) == [], "the server wrote into its working directory"
