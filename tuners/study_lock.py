"""The driver lock of a study store: one driver at a time writes a study.

A driver holds a POSIX record lock (``fcntl.lockf``) on ``<store>.lock`` for as long as it runs, and writes
its host, pid and start time into the file. The kernel drops the lock when the driver's process ends in any
way (SIGKILL included), so a lock left by a dead driver is never "held": the next driver takes it over and
reads who held it last. POSIX locks are not inherited by forked children (a trial process never keeps a
study locked after its driver died) and are honoured across machines on NFS with lockd.

A POSIX lock belongs to a process, and closing *any* descriptor of the file releases it. So a process opens
the lock file once: a second lock on the same store in the same process is refused from an in-process
table, without touching the file.
"""

from __future__ import annotations

import json
import os
import socket
import time
import weakref
from typing import Any

from tuners.errors import StudyLockedError, StudyStoreError

__all__ = ["StudyLock"]

# Locks held by this process, by lock file path (weak: a lock whose owner was garbage-collected is gone).
_HELD: weakref.WeakValueDictionary[str, StudyLock] = weakref.WeakValueDictionary()


def describe_holder(holder: dict[str, Any]) -> str:
    """``host H, pid P since YYYY-mm-dd HH:MM:SS`` of a driver's record (``host``, ``pid``, ``started_at``)."""
    since = holder.get("started_at")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}{when}"


def refusal(where: str, holder: dict[str, Any], what: str, after: str = "") -> StudyLockedError:
    """The error refusing a second driver of the study at ``where``, naming its holder and how to go on."""
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    return StudyLockedError(f"{where}: {what} ({describe_holder(holder)}). Wait for it to end, or stop it (kill {pid} "
                            f"on {host}); the same command then resumes the study{after}.",
                            host=holder.get("host"), pid=holder.get("pid"))


class StudyLock:
    """The exclusive lock of one study store, held by the driver writing it.

    Use :meth:`acquire`; :meth:`release` (or garbage collection, or the end of the process) lets it go.

    Attributes:
        path: the lock file.
        previous: host/pid record of a driver that ended without releasing the lock (killed or crashed),
            or ``None``.
    """

    def __init__(self, path: str, fd: int, previous: dict[str, Any] | None):
        self.path = path
        self._fd: int | None = fd
        self.previous = previous

    @classmethod
    def acquire(cls, store_path: str) -> StudyLock:
        """Lock the study store at ``store_path`` (its SQLite file) for this process.

        Raises:
            StudyLockedError: a live driver holds it; the message names its host and pid.
            StudyStoreError: the lock file cannot be created.
        """
        path = os.path.realpath(store_path) + ".lock"
        mine = _HELD.get(path)
        if mine is not None and mine._fd is not None:
            holder = {"host": socket.gethostname(), "pid": os.getpid()}
            raise refusal(store_path, holder, "this process already drives it")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StudyStoreError(f"study store {store_path}: cannot create its driver lock {path} "
                                  f"({err.strerror}). Make the directory writable.") from None
        try:
            import fcntl

            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = cls._read_holder(fd, wait_s=1.0)
            os.close(fd)
            raise refusal(store_path, holder, "another driver is running this study")
        previous = cls._read_holder(fd, wait_s=0.0) or None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time()}
        data = json.dumps(record).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        lock = cls(path, fd, previous)
        _HELD[path] = lock
        return lock

    @staticmethod
    def _read_holder(fd: int, wait_s: float) -> dict[str, Any]:
        # The holder writes its record right after it got the lock: give it a moment before reporting.
        deadline = time.monotonic() + wait_s
        while True:
            try:
                raw = os.pread(fd, 4096, 0)
                record = json.loads(raw) if raw.strip() else {}
                if isinstance(record, dict) and record:
                    return record
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                return {}
            time.sleep(0.05)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Let the lock go; an empty lock file tells the next driver the study was left cleanly."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if _HELD.get(self.path) is self:
            del _HELD[self.path]
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # releases the POSIX lock

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: the process's end releases the lock anyway
            pass
