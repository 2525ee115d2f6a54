"""The lease of a study kept in a bucket (fake-gcs-server): one driver at a time across machines, a silent one
taken over, a superseded one stopped before it overwrites anything."""
from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from orchestrator.artifacts import storage
from orchestrator.launch import study_lease
from orchestrator.launch.study_lease import LeaseLostError
from tfscale_testing import run_tfscale, tfscale_env
from tuners.errors import StudyLockedError

OTHER = {"host": "gpu-box-7", "pid": 4242}


def lease_names(study):
    return storage.listdir(storage.join(study, ".lease"))


def put_lease(study, seq, renewed_at=None, **record):
    now = time.time()
    record = {**OTHER, "started_at": now - 3600, "renewed_at": now if renewed_at is None else renewed_at, **record}
    storage.put_bytes(storage.join(study, ".lease", f"{seq:08d}.json"), json.dumps(record).encode())
    return record


def test_a_live_lease_refuses_a_second_driver_naming_it_and_nothing_is_written(gcs):
    study = f"{gcs}/study"
    put_lease(study, 1, renewed_at=time.time() - 3600)  # its record is old, the object new: the later one counts
    before = storage.files(study)
    with pytest.raises(StudyLockedError) as refused:
        study_lease.acquire(study, ttl_s=60)
    message = str(refused.value)
    assert "host gpu-box-7, pid 4242" in message and "kill 4242 on gpu-box-7" in message, message
    assert "the same command then resumes" in message and "hydra.sweeper.lease_ttl_s=60s" in message, message
    assert (refused.value.host, refused.value.pid) == ("gpu-box-7", 4242)
    assert storage.files(study) == before

    mine = study_lease.acquire(f"{gcs}/other", ttl_s=60)  # another study is free; this driver's own lease refuses
    with pytest.raises(StudyLockedError, match=f"host {socket.gethostname()}, pid {os.getpid()}"):
        study_lease.acquire(f"{gcs}/other", ttl_s=60)
    assert (mine.seq, mine.took_over, lease_names(f"{gcs}/other")) == (1, None, ["00000001.json"])


def test_a_silent_lease_is_taken_over_with_the_next_number(gcs):
    study = f"{gcs}/study"
    old = put_lease(study, 1, renewed_at=time.time() + 1)  # a holder whose clock runs ahead: still live
    time.sleep(0.6)
    with pytest.raises(StudyLockedError):
        study_lease.acquire(study, ttl_s=0.5)
    time.sleep(1.0)
    lease = study_lease.acquire(study, ttl_s=0.5)
    assert lease.seq == 2 and lease.took_over == old
    assert lease_names(study) == ["00000002.json"]  # the superseded lease goes
    record = json.loads(storage.read_bytes(lease.uri))
    assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())

    lease.release()
    lease.release()  # idempotent
    assert lease_names(study) == []
    fresh = study_lease.acquire(study, ttl_s=60)  # released cleanly: nobody to take over
    assert (fresh.seq, fresh.took_over) == (1, None)


def test_renew_is_rate_limited_and_moves_renewed_at(gcs):
    lease = study_lease.acquire(f"{gcs}/study", ttl_s=40)
    first = lease.record["renewed_at"]
    assert lease.renew() is False  # within ttl/4 of the last write
    assert lease.renew(force=True) is True
    assert json.loads(storage.read_bytes(lease.uri))["renewed_at"] > first


def test_a_superseded_lease_fails_its_check_naming_the_new_holder_and_writes_nothing(gcs):
    study = f"{gcs}/study"
    lease = study_lease.acquire(study, ttl_s=60)
    lease.check()
    put_lease(study, 2)  # another driver took over while this one looked silent
    for call in (lease.check, lambda: lease.renew(force=True)):
        with pytest.raises(LeaseLostError) as lost:
            call()
        message = str(lost.value)
        assert "took the study over (host gpu-box-7, pid 4242" in message, message
        assert "kill 4242 on gpu-box-7" in message and "hydra.sweeper.lease_ttl_s" in message, message
        assert lost.value.exit_code == 2
    assert json.loads(storage.read_bytes(lease.uri))["renewed_at"] == lease.record["renewed_at"]
    lease.release()  # its own object only
    assert lease_names(study) == ["00000002.json"]


def test_release_leaves_a_lease_that_is_no_longer_its_own(gcs):
    study = f"{gcs}/study"
    lease = study_lease.acquire(study, ttl_s=60)
    other = put_lease(study, 1)  # the number came round again: a later driver's lease under the same name
    with pytest.raises(LeaseLostError, match="host gpu-box-7, pid 4242"):
        lease.check()
    lease.release()
    assert json.loads(storage.read_bytes(lease.uri)) == other
    storage.remove(lease.uri)
    with pytest.raises(LeaseLostError, match="was removed"):
        lease.check()


def test_two_drivers_taking_over_a_silent_lease_at_once_one_wins(gcs, monkeypatch):
    study = f"{gcs}/study"
    put_lease(study, 1)
    time.sleep(0.4)
    both_looked = threading.Barrier(2, timeout=20)
    put = storage.put_bytes

    def put_after_both_looked(uri, data, *, create_only=False):
        if create_only:
            both_looked.wait()  # each has seen lease 1 silent and picked number 2
        put(uri, data, create_only=create_only)

    monkeypatch.setattr(storage, "put_bytes", put_after_both_looked)
    outcomes = []

    def driver():
        try:
            outcomes.append(study_lease.acquire(study, ttl_s=0.3))
        except StudyLockedError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=driver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    won = [o for o in outcomes if isinstance(o, study_lease.Lease)]
    lost = [o for o in outcomes if isinstance(o, StudyLockedError)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert won[0].seq == 2 and won[0].took_over["host"] == "gpu-box-7"
    assert "took this study over just now" in str(lost[0]) and f"pid {os.getpid()}" in str(lost[0])
    assert lease_names(study) == ["00000002.json"]
    won[0].check()


def test_the_study_mirror_leaves_out_the_lease_and_the_local_lock():
    from orchestrator.launch.sweeper import StudySweeper

    assert StudySweeper._not_mirrored(".lease/00000001.json") and StudySweeper._not_mirrored("study.db.lock")
    assert not StudySweeper._not_mirrored("study.db") and not StudySweeper._not_mirrored("trial_0/.lease")


def test_a_second_tfscale_on_a_bucket_study_held_elsewhere_exits_2_naming_the_holder(gcs, gcs_server, tmp_path):
    study = f"{gcs}/studies/lr"
    record = put_lease(study, 1)
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    result = run_tfscale(["-m", "study=digits_lr_units", f"hydra.sweep.dir={study}", "hydra.launcher.warm=false"], cwd,
                         timeout=120, env=tfscale_env(STORAGE_EMULATOR_HOST=gcs_server, TMPDIR=str(tmp)))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfscale: error:")]
    assert len(errors) == 1 and "host gpu-box-7, pid 4242" in errors[0] and study in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "[study]" not in result.stdout
    assert set(storage.files(study)) == {".lease/00000001.json"}
    assert json.loads(storage.read_bytes(f"{study}/.lease/00000001.json")) == record
    assert not list(tmp.glob("tfscale-study-*")) and not list(cwd.iterdir())
