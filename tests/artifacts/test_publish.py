"""The publisher: complete-or-nothing artifacts, distinct numbers under concurrency, readable by another user."""
from __future__ import annotations

import multiprocessing
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.artifacts import publish


def _write_version(tmp: Path) -> None:
    (tmp / "variables").mkdir()
    (tmp / "saved_model.pb").write_bytes(b"graph")
    (tmp / "variables" / "variables.index").write_bytes(b"index")


def _publish_in_process(model_dir: str, start_at: float, queue) -> None:
    """One publisher process: waits for the common start time so every process races for the same number."""
    def write(tmp: Path) -> None:
        _write_version(tmp)
        time.sleep(max(0.0, start_at - time.time()))

    queue.put(publish.publish_directory(Path(model_dir), write).name)


def test_concurrent_publisher_processes_get_distinct_numbers(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 1.0
    procs = [ctx.Process(target=_publish_in_process, args=(str(tmp_path / "m"), start_at, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    names = sorted(queue.get(timeout=5) for _ in procs)
    assert names == ["0001", "0002", "0003", "0004"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == names  # no temporaries left


def test_next_number_counts_files_beside_versions_and_keeps_suffix(tmp_path):
    (tmp_path / "0003.int8.tflite").write_bytes(b"x")
    assert publish.publish_directory(tmp_path, _write_version).name == "0004"
    assert publish.publish_directory(tmp_path, _write_version, suffix="-canary").name == "0005-canary"


def test_stale_temporaries_go_and_fresh_ones_stay(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    stale_dir, stale_file, fresh = model_dir / ".tmp-version-dead", model_dir / ".tmp-models.config-dead", model_dir / ".tmp-version-busy"
    stale_dir.mkdir()
    (stale_dir / "saved_model.pb").write_bytes(b"half")
    stale_file.write_text("half")
    fresh.mkdir()
    two_hours_ago = time.time() - 2 * 3600
    for p in (stale_dir, stale_file):
        os.utime(p, (two_hours_ago, two_hours_ago))
    published = publish.publish_directory(model_dir, _write_version)
    assert published.name == "0001"
    assert not stale_dir.exists() and not stale_file.exists()
    assert fresh.is_dir()  # may belong to a publisher still writing
    publish.write_text(model_dir / "models.config", "x")  # a file publish cleans the same way
    assert fresh.is_dir()


def test_failure_inside_write_leaves_nothing(tmp_path):
    def broken(tmp: Path) -> None:
        _write_version(tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish.publish_directory(tmp_path / "m", broken)
    assert list((tmp_path / "m").iterdir()) == []


def test_failed_file_publish_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "models.config"
    publish.write_text(target, "old")

    class Unencodable(str):
        def encode(self, *a, **k):
            raise UnicodeError("cannot encode")

    with pytest.raises(UnicodeError):
        publish.publish_file(target, Unencodable("new"))
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["models.config"]


def test_taken_name_is_refused_and_cleaned_up(tmp_path):
    publish.publish_directory(tmp_path, _write_version, name="0007")
    with pytest.raises(FileExistsError):
        publish.publish_directory(tmp_path, _write_version, name="0007")
    assert [p.name for p in tmp_path.iterdir()] == ["0007"]


def test_numbered_files_never_replace_each_other(tmp_path):
    names = [publish.publish_numbered_file(tmp_path, f"v{i}", suffix=".txt").name for i in range(3)]
    assert names == ["0001.txt", "0002.txt", "0003.txt"]
    assert (tmp_path / "0002.txt").read_text() == "v1"


def test_move_aside_never_replaces(tmp_path):
    version = publish.publish_directory(tmp_path, _write_version)
    aside = publish.move_aside(version, tmp_path / ".removed-0001")
    assert aside.is_dir() and not version.exists()
    other = publish.publish_directory(tmp_path, _write_version)
    with pytest.raises(FileExistsError):
        publish.move_aside(other, aside)


def _modes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.fixture
def shared_dir():
    """A directory another user can reach (pytest's tmp_path lives under a private 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="tfscale-publish-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def test_published_modes_ignore_a_private_umask(shared_dir):
    old = os.umask(0o077)
    try:
        version = publish.publish_directory(shared_dir / "m", _write_version)
        tflite = publish.publish_file(shared_dir / "m" / "0001.int8.tflite", b"model")
        config = publish.write_json(shared_dir / "m" / "status.json", {"state": "running"})
    finally:
        os.umask(old)
    assert _modes(version) == {".": 0o755, "variables": 0o755, "saved_model.pb": 0o644, "variables/variables.index": 0o644}
    assert stat.S_IMODE(tflite.stat().st_mode) == 0o644
    assert stat.S_IMODE(config.stat().st_mode) == 0o644


def _read_as_nobody(paths) -> int:
    """Read every path as the ``nobody`` user in a forked child; its exit code is the number of failures."""
    pid = os.fork()
    if pid == 0:
        failures = 0
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            for p in paths:
                try:
                    if Path(p).is_dir():
                        os.listdir(p)
                    else:
                        Path(p).read_bytes()
                except OSError:
                    failures += 1
        except BaseException:
            failures = 99
        os._exit(failures)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="switching to another user needs root")
def test_another_user_can_read_what_was_published(shared_dir):
    old = os.umask(0o077)
    try:
        version = publish.publish_directory(shared_dir / "m", _write_version)
        tflite = publish.publish_file(shared_dir / "m" / "0001.int8.tflite", b"model")
    finally:
        os.umask(old)
    assert stat.S_IMODE((shared_dir / "m").stat().st_mode) == 0o755  # created by the publisher
    paths = [version, version / "saved_model.pb", version / "variables", version / "variables" / "variables.index", tflite]
    assert _read_as_nobody(paths) == 0


def test_without_renameat2_nothing_is_replaced_either(tmp_path, monkeypatch):
    """Filesystems or C libraries without RENAME_NOREPLACE get the same guarantees through link/rename."""
    monkeypatch.setattr(publish, "_renameat2", None)
    assert publish.publish_directory(tmp_path, _write_version).name == "0001"
    assert publish.publish_numbered_file(tmp_path, "a", suffix=".txt").name == "0002.txt"
    (tmp_path / "0003").mkdir()  # an empty directory must not be silently replaced
    assert publish.publish_directory(tmp_path, _write_version).name == "0004"
    with pytest.raises(FileExistsError):
        publish.publish_directory(tmp_path, _write_version, name="0003")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0001", "0002.txt", "0003", "0004"]
