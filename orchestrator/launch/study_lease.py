"""The lease of a study kept in a bucket: one driver at a time, across machines.

A study whose directory is a bucket URI is downloaded by each driver into a scratch directory of its own, so
the study store's POSIX lock (:class:`tuners.study_lock.StudyLock`) only sees drivers on the same machine.
The lease is the bucket's own lock: numbered objects ``<study>/.lease/<seq:08d>.json``, each holding
``{host, pid, started_at, renewed_at}``; the object with the highest number is the holder.

* :func:`acquire` creates ``00000001.json`` in a study without one. When the highest lease was renewed within
  ``ttl_s`` (by its ``renewed_at`` or, if later, the object's time on the server) the study is held: the
  driver is refused (:class:`~tuners.errors.StudyLockedError` naming the holder's host and pid) having
  written nothing. A lease silent for longer is taken over by creating the next number with a create-only
  write (GCS ``ifGenerationMatch=0``, S3 ``If-None-Match``), so of two drivers taking over at once exactly one
  wins; the other is refused, naming the winner. The winner removes the leases it superseded, so a study
  released cleanly later holds none.
* :meth:`Lease.renew` rewrites the holder's object with a new ``renewed_at`` (at most every ``ttl_s / 4``);
  :meth:`Lease.check` raises :class:`LeaseLostError` once another driver has taken the study over (this one
  was silent for longer than ``ttl_s``), so a superseded driver never overwrites the new holder's files;
  :meth:`Lease.release` removes the holder's own object.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from typing import Any, Dict, List, Optional, Tuple

from tuners.study_lock import describe_holder, refusal

from orchestrator.artifacts import storage
from orchestrator.errors import TfscaleError

__all__ = ["LEASE_DIR", "Lease", "LeaseLostError", "acquire"]

LEASE_DIR = ".lease"  # below the study directory; never part of what a driver downloads or uploads
_NAME = re.compile(r"^(\d{8})\.json$")
_ATTEMPTS = 3  # a lease released between listing and reading it: look again


class LeaseLostError(TfscaleError):
    """Another driver took over this driver's study (this one was silent for longer than the lease's TTL)."""

    exit_code = 2


def _name(seq: int) -> str:
    return f"{seq:08d}.json"


def _seqs(study_uri: str) -> List[int]:
    """The numbers of the lease objects of ``study_uri``, highest first."""
    found = (_NAME.match(n) for n in storage.listdir(storage.join(study_uri, LEASE_DIR)))
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def _read(uri: str) -> Tuple[Dict[str, Any], float]:
    """A lease object's record ({} if unreadable) and the time it was last renewed, by its record or the server.

    Raises:
        FileNotFoundError: the object is gone (released meanwhile).
    """
    _, mtime = storage.stat(uri)
    try:
        record = json.loads(storage.read_bytes(uri))
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        record = {}
    renewed = record.get("renewed_at")
    return record, max(float(renewed) if isinstance(renewed, (int, float)) else 0.0, mtime)


class Lease:
    """The lease this driver holds on a bucket study; see the module docstring.

    Attributes:
        study_uri: the study directory.
        seq: this lease's number; ``uri`` its object.
        record: what the object holds (host, pid, started_at, renewed_at).
        ttl_s: how long the lease holds without a renewal.
        took_over: the record of the lease this one took over (its driver went silent), or ``None``.
    """

    def __init__(self, study_uri: str, seq: int, record: Dict[str, Any], ttl_s: float,
                 took_over: Optional[Dict[str, Any]] = None) -> None:
        self.study_uri = study_uri
        self.seq = seq
        self.record = record
        self.ttl_s = float(ttl_s)
        self.took_over = took_over
        self.released = False
        self._renewed = time.monotonic()

    @property
    def uri(self) -> str:
        return storage.join(self.study_uri, LEASE_DIR, _name(self.seq))

    def _mine(self, record: Dict[str, Any]) -> bool:
        return all(record.get(k) == self.record.get(k) for k in ("host", "pid", "started_at"))

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if another driver holds the study now; the message names it."""
        for _ in range(_ATTEMPTS):
            seqs = _seqs(self.study_uri)
            top = seqs[0] if seqs else None
            if top is None or top < self.seq:
                raise self._lost(None)
            try:
                record, _ = _read(storage.join(self.study_uri, LEASE_DIR, _name(top)))
            except FileNotFoundError:
                continue  # released between the listing and the read
            if top == self.seq and self._mine(record):
                return
            raise self._lost(record)
        raise self._lost(None)

    def _lost(self, holder: Optional[Dict[str, Any]]) -> LeaseLostError:
        if holder is None:
            what = f"its lease {self.uri} was removed by someone else"
            then = "Make sure no other driver runs this study"
        else:
            what = f"another driver took the study over ({describe_holder(holder)})"
            then = (f"Let it run, or stop it (kill {holder.get('pid', '?')} on {holder.get('host', '?')})")
        return LeaseLostError(
            f"{self.study_uri}: {what} after this driver's lease went unrenewed for more than "
            f"hydra.sweeper.lease_ttl_s={self.ttl_s:g}s; this driver stopped its trials and wrote nothing more. "
            f"{then}; the same command then resumes the study. If this driver was only slow (long uploads, a "
            f"suspended machine), raise hydra.sweeper.lease_ttl_s.")

    def renew(self, force: bool = False) -> bool:
        """Write a new ``renewed_at`` (at most every ``ttl_s / 4`` unless ``force``); True if it was written.

        Raises:
            LeaseLostError: another driver holds the study now (nothing was written).
        """
        if self.released or (not force and time.monotonic() - self._renewed < self.ttl_s / 4):
            return False
        self.check()
        record = {**self.record, "renewed_at": time.time()}
        storage.put_bytes(self.uri, json.dumps(record).encode())
        self.record = record
        self._renewed = time.monotonic()
        return True

    def release(self) -> None:
        """Remove this lease's object, if it is still this driver's (a missing one is fine); idempotent."""
        if self.released:
            return
        self.released = True
        try:
            record, _ = _read(self.uri)
        except FileNotFoundError:
            return
        if self._mine(record):
            storage.remove(self.uri)


def acquire(study_uri: str, ttl_s: float) -> Lease:
    """Take the lease of the bucket study ``study_uri``, or refuse while another driver holds it.

    Raises:
        StudyLockedError: a lease renewed within ``ttl_s`` exists, or another driver took a silent one over at
            the same moment; the message names that driver's host and pid. Nothing was written.
    """
    for _ in range(_ATTEMPTS):
        seqs = _seqs(study_uri)
        took_over: Optional[Dict[str, Any]] = None
        if seqs:
            try:
                record, renewed = _read(storage.join(study_uri, LEASE_DIR, _name(seqs[0])))
            except FileNotFoundError:
                continue  # released between the listing and the read
            age = max(time.time() - renewed, 0.0)
            if age < ttl_s:
                raise refusal(study_uri, record, "another driver is running this study",
                               f" (a driver that died without releasing its lease, renewed {age:.0f}s ago, is taken "
                               f"over once hydra.sweeper.lease_ttl_s={ttl_s:g}s have passed: in {ttl_s - age:.0f}s)")
            took_over = record
        seq = (seqs[0] if seqs else 0) + 1
        now = time.time()
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now, "renewed_at": now}
        uri = storage.join(study_uri, LEASE_DIR, _name(seq))
        try:
            storage.put_bytes(uri, json.dumps(mine).encode(), create_only=True)
        except FileExistsError:
            try:
                winner, _ = _read(uri)
            except FileNotFoundError:
                continue  # the winner has released it already
            raise refusal(study_uri, winner, "another driver took this study over just now") from None
        for old in seqs:  # superseded: a study released cleanly later holds no lease
            storage.remove(storage.join(study_uri, LEASE_DIR, _name(old)))
        return Lease(study_uri, seq, mine, ttl_s, took_over)
    raise refusal(study_uri, {}, "its lease changed hands repeatedly while this driver looked")
