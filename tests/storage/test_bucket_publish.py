"""Publishing into a bucket keeps the model-repository contract (against a real fake-gcs-server).

A server listing the bucket never sees half a version: ``saved_model.pb`` is the last object of a version,
concurrent publishers get distinct numbers, and a publisher killed mid-upload leaves nothing a server loads.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.artifacts import publish, storage
from orchestrator.artifacts.run_record import RunRecord, RunState

FILES = {"variables/variables.index": b"i" * 100, "variables/variables.data-00000-of-00001": b"d" * 4000,
         "fingerprint.pb": b"f", "assets.extra/tfscale.json": b"{}", "saved_model.pb": b"graph"}


def write_version(tmp: Path, files=FILES) -> None:
    """The shape of a SavedModel (the publisher treats its files alike, but for saved_model.pb)."""
    for rel, data in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)


def generations(uri: str) -> dict:
    fs, path = storage.filesystem(uri)
    return {k[len(path) + 1:]: int(v["generation"]) for k, v in fs.find(path, detail=True).items()}


def test_version_is_uploaded_whole_with_saved_model_pb_last(gcs):
    model = f"{gcs}/models/m"
    target = publish.publish_directory(model, write_version)
    assert target == f"{model}/0001"
    written = generations(target)
    assert set(written) == set(FILES)
    assert max(written, key=written.get) == "saved_model.pb", written
    assert storage.read_bytes(f"{target}/variables/variables.data-00000-of-00001") == FILES["variables/variables.data-00000-of-00001"]
    assert publish.existing_versions(model) == [1]
    assert publish.publish_directory(model, write_version) == f"{model}/0002"
    assert sorted(publish.visible_versions(model)) == [1, 2]
    # The number is claimed by a create-only object; the claims are hidden from servers (dot directory).
    assert storage.listdir(f"{model}/.versions") == ["0001.claim", "0002.claim"]


def test_a_numeric_directory_without_saved_model_pb_is_not_a_version(gcs):
    model = f"{gcs}/models/m"
    storage.put_bytes(f"{model}/0007/variables/variables.index", b"x")
    assert publish.existing_versions(model) == []
    assert publish.visible_versions(model) == {}
    # ... but its number is taken: the next version goes above it.
    assert publish.publish_directory(model, write_version) == f"{model}/0008"


def test_files_and_numbered_files_in_a_bucket(gcs):
    model = f"{gcs}/models/m"
    assert publish.publish_numbered_file(model, b"tflite", suffix=".int8.tflite") == f"{model}/0001.int8.tflite"
    assert publish.publish_numbered_file(model, b"tflite", suffix=".int8.tflite") == f"{model}/0002.int8.tflite"
    publish.write_json(f"{gcs}/x/info.json", {"a": 1})
    assert json.loads(storage.read_text(f"{gcs}/x/info.json")) == {"a": 1}


PUBLISHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from orchestrator.artifacts import publish
    files = int(sys.argv[3])
    def write(tmp):
        for i in range(files):
            (tmp / "variables").mkdir(exist_ok=True)
            (tmp / "variables" / f"part-{i:03d}").write_bytes(b"x" * 200_000)
        (tmp / "saved_model.pb").write_bytes(b"graph")
        if sys.argv[2] == "barrier":  # start uploading at the same moment as the other publisher
            while time.time() < float(sys.argv[4]):
                time.sleep(0.005)
    print(publish.publish_directory(sys.argv[1], write), flush=True)
""")


def _publisher(model: str, mode: str, files: int, at: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, model, mode, str(files), str(at)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def test_two_publishers_at_once_get_distinct_numbers(gcs):
    model = f"{gcs}/models/m"
    publish.publish_directory(model, write_version)  # 0001 exists already
    at = time.time() + 2.0  # both children are importing by then
    procs = [_publisher(model, "barrier", 2, at) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out.strip())
    assert sorted(outs) == [f"{model}/0002", f"{model}/0003"]
    assert publish.existing_versions(model) == [1, 2, 3]


def test_publisher_killed_mid_upload_leaves_no_version(gcs):
    model = f"{gcs}/models/m"
    proc = _publisher(model, "plain", 60)  # 60 objects of 200 kB: seconds of upload
    fs, path = storage.filesystem(model)
    try:
        deadline = time.monotonic() + 60
        while not [f for f in storage.files(model) if f.startswith("0001/")]:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the publisher uploaded nothing"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    uploaded = storage.files(f"{model}/0001")
    assert uploaded and "saved_model.pb" not in uploaded and len(uploaded) < 61
    assert publish.existing_versions(model) == [] and publish.visible_versions(model) == {}
    # The next publish keeps a partial upload younger than an hour (its publisher may still be running) ...
    assert publish.publish_directory(model, write_version) == f"{model}/0002"
    assert storage.files(f"{model}/0001")
    # ... and removes it once it is stale.
    assert publish.remove_stale_uploads(model, older_than_s=0) == [f"{model}/0001"]
    assert storage.files(f"{model}/0001") == {} and publish.existing_versions(model) == [2]


def test_run_record_in_a_bucket(gcs, tmp_path):
    run = f"{gcs}/runs/exp/1"
    record = RunRecord(run)
    record.mark_running()
    assert record.state() is RunState.RUNNING
    record.append_epoch({"epoch": 1, "loss": 1.0})
    record.append_epoch({"epoch": 2, "loss": 0.5})
    record.add_facts({"backend": {"tasks": 1}})
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- vertex.api_key=s3cret\n")
    (tmp_path / "tensorboard" / "train").mkdir(parents=True)
    (tmp_path / "tensorboard" / "train" / "events.out.tfevents.1.v2").write_bytes(b"\0events")
    record.upload(tmp_path)
    record.mark_completed()
    assert [json.loads(line)["epoch"] for line in storage.read_text(f"{run}/epochs.jsonl").splitlines()] == [1, 2]
    assert record.metrics() == {"backend": {"tasks": 1}}
    assert RunRecord(run).state() is RunState.COMPLETED
    assert storage.read_bytes(f"{run}/tensorboard/train/events.out.tfevents.1.v2") == b"\0events"
    assert "s3cret" not in storage.read_text(f"{run}/.hydra/overrides.yaml")
