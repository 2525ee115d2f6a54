"""Storage hiccups: a repository that vanishes for a moment, and a version that is still being copied."""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time

import numpy as np
import requests

from serving_testkit import MODEL, reference_predictions


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_repository_moved_away_for_3s_under_load_fails_no_request(repo, start_server, digits_rows, caplog):
    caplog.set_level(logging.INFO, "tfscale.serving")
    server = start_server(repo, unload_grace_s=30.0)
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict"
    body = {"instances": digits_rows[:2].tolist()}
    stop = threading.Event()
    outcomes = []

    def load():
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    outcomes.append(s.post(url, json=body, timeout=10).status_code)
                except requests.RequestException as e:
                    outcomes.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        away = repo.with_name("models-away")
        os.rename(repo, away)  # e.g. a mount that drops, or a repository swapped by rename
        time.sleep(3.0)  # 15 polls see no repository
        os.rename(away, repo)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    failed = [o for o in outcomes if o != 200]
    assert len(outcomes) > 20 and not failed, (len(outcomes), failed[:5])
    assert "keep serving for up to 30s" in caplog.text and "are back after" in caplog.text


def test_a_vanished_model_is_unloaded_once_the_grace_period_ends(repo, start_server, digits_rows):
    server = start_server(repo, unload_grace_s=1.0)
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict"
    body = {"instances": digits_rows[:1].tolist()}
    shutil.rmtree(repo / MODEL)
    t0 = time.monotonic()
    _wait(lambda: requests.post(url, json=body, timeout=10).status_code == 404, 10, "a 404 after the grace period")
    assert time.monotonic() - t0 >= 0.9


def test_a_half_copied_version_is_served_once_the_copy_completes(repo, start_server, templates, digits_rows, caplog):
    caplog.set_level(logging.INFO, "tfscale.serving")
    server = start_server(repo)
    status_url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}"
    # A copy that writes files in place (rsync --inplace, gsutil cp): saved_model.pb and the variables index are
    # there, the variables data is cut short.
    partial = repo / MODEL / ".partial"
    shutil.copytree(templates[2], partial)
    full = (templates[2] / "variables" / "variables.data-00000-of-00001").read_bytes()
    (partial / "variables" / "variables.data-00000-of-00001").write_bytes(full[: len(full) // 2])
    version = repo / MODEL / "0002"
    os.rename(partial, version)
    data = version / "variables" / "variables.data-00000-of-00001"
    dir_mtimes = {p: os.stat(p).st_mtime_ns for p in (version, version / "variables")}
    started = time.monotonic()

    def v2_state():
        states = {s["version"]: s for s in requests.get(status_url, timeout=10).json()["model_version_status"]}
        return states.get("2")

    failed = _wait(lambda: (s := v2_state()) and s["state"] == "END" and s["status"]["error_message"] and s, 15,
                   "version 2 to fail to load")
    assert "failed" in failed["status"]["error_message"]
    r = requests.post(status_url + ":predict", json={"instances": digits_rows[:1].tolist()}, timeout=10)
    assert r.status_code == 200 and r.json()  # version 1 keeps serving meanwhile
    time.sleep(max(0.0, 8.0 - (time.monotonic() - started)))
    with open(data, "r+b") as f:  # the rest of the copy arrives 8 s later, into the same file
        f.write(full)
    assert {p: os.stat(p).st_mtime_ns for p in dir_mtimes} == dir_mtimes  # no directory changed: only file contents

    _wait(lambda: (s := v2_state()) and s["state"] == "AVAILABLE", 30, "version 2 to be AVAILABLE")
    expected = reference_predictions(templates[2], digits_rows)
    got = requests.post(status_url + ":predict", json={"instances": digits_rows.tolist()}, timeout=10).json()
    assert [p["classes"] for p in got["predictions"]] == expected["classes"].tolist()
    np.testing.assert_allclose([p["probabilities"] for p in got["predictions"]], expected["probabilities"], atol=1e-5)
    assert "changed since it failed to load; trying again" in caplog.text
