"""The study store: a SQLite file holding the spec and every trial, so that a study survives its driver.

Location: ``<sweep_dir>/study.db`` by default, or a ``sqlite:///path/to/study.db`` URL (``sqlite://`` or
``:memory:`` for a throwaway in-memory store). One driver writes a study at a time: it holds the store's
lock (:meth:`StudyStore.lock`, see :mod:`tuners.study_lock`), and a new trial never replaces a stored one
(:meth:`StudyStore.add_trial`). Every change is its own transaction, so a driver killed at any point leaves a
consistent file.

Resume semantics are implemented by :class:`tuners.Study` on top of :meth:`StudyStore.load_trials`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuners.errors import StudyStoreError
from tuners.study_lock import StudyLock
from tuners.study_spec import Measurement, StudySpec, Trial, TrialStatus

__all__ = ["StudyStore", "spec_differences"]

_SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    objective REAL,
    measurements TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    log_path TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    objectives TEXT NOT NULL DEFAULT '{}',
    started_at REAL,
    ended_at REAL
);
"""


def spec_differences(stored: Any, given: Any, path: str = "") -> list[str]:
    """``path: stored X, given Y`` for every leaf where two spec dicts differ."""
    if isinstance(stored, Mapping) and isinstance(given, Mapping):
        out: list[str] = []
        for key in sorted(set(stored) | set(given), key=str):
            sub = f"{path}.{key}" if path else str(key)
            out += spec_differences(stored.get(key), given.get(key), sub)
        return out
    if isinstance(stored, list) and isinstance(given, list) and len(stored) == len(given):
        return [d for i, (a, b) in enumerate(zip(stored, given)) for d in spec_differences(a, b, f"{path}[{i}]")]
    return [] if stored == given else [f"{path}: stored {stored!r}, given {given!r}"]


class StudyStore:
    """A SQLite study store.

    Args:
        location: a sweep directory (the file is ``study.db`` inside it), a ``.db`` file path, a
            ``sqlite:///path`` URL, or ``:memory:``/``sqlite://`` for an in-memory store.
    """

    FILENAME = "study.db"

    def __init__(self, location: str | os.PathLike = ":memory:"):
        self.path = self.resolve(location)
        self._lock: StudyLock | None = None
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0)
            with self._conn:
                self._conn.executescript(_SCHEMA)
                self._add_objectives_column()
                self._add_time_columns()
                version = self._meta("schema_version")
                if version is None:
                    self._set_meta("schema_version", _SCHEMA_VERSION)
                elif version != _SCHEMA_VERSION:
                    raise StudyStoreError(
                        f"study store {self.path}: schema version {version}, this tfscale reads version "
                        f"{_SCHEMA_VERSION}. Use a new sweep directory.")
        except sqlite3.DatabaseError as err:
            raise StudyStoreError(f"study store {self.path}: cannot open it as SQLite ({err}). Point the "
                                  f"study at another file or directory.") from err

    @classmethod
    def resolve(cls, location: str | os.PathLike) -> str:
        """The SQLite path a location stands for."""
        text = os.fspath(location)
        if text in (":memory:", "sqlite://", "sqlite:///:memory:"):
            return ":memory:"
        if text.startswith("sqlite:///"):
            # As in SQLAlchemy: sqlite:///rel.db is relative, sqlite:////abs.db absolute.
            return text[len("sqlite:///"):]
        if "://" in text:
            raise StudyStoreError(f"study store {text!r}: only sqlite:/// URLs are supported. Use "
                                  f"sqlite:///path/to/study.db or a directory.")
        path = Path(text)
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return str(path)
        return str(path / cls.FILENAME)

    def _add_objectives_column(self) -> None:
        # Stores written before multi-objective studies lack the column; their trials' single objective is
        # still in `objective`, and the column's default reads back as "no per-metric values".
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(trials)")}
        if "objectives" not in columns:
            self._conn.execute("ALTER TABLE trials ADD COLUMN objectives TEXT NOT NULL DEFAULT '{}'")

    def _add_time_columns(self) -> None:
        # Stores written before trials kept their start and end times: those trials read back without them.
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(trials)")}
        for name in ("started_at", "ended_at"):
            if name not in columns:
                self._conn.execute(f"ALTER TABLE trials ADD COLUMN {name} REAL")

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def attach(self, spec: StudySpec) -> bool:
        """Bind the store to ``spec``: record it in a new store, or check it matches the stored one.

        Returns:
            True if the store already held this study (a resume).

        Raises:
            StudyStoreError: the store holds a different spec; the message lists every difference.
        """
        given = spec.to_dict()
        with self._conn:
            stored = self._meta("spec")
            if stored is None:
                self._set_meta("spec", json.dumps(given, sort_keys=True))
                self._set_meta("created_at", repr(time.time()))
                return False
        differences = spec_differences(json.loads(stored), json.loads(json.dumps(given)))
        if differences:
            raise StudyStoreError(
                f"study store {self.path} holds a different study: " + "; ".join(differences)
                + ". Restore the original study config, or use a new sweep directory to start a new study.")
        return True

    def stored_spec(self) -> StudySpec | None:
        """The spec the store was created for, if any."""
        stored = self._meta("spec")
        return None if stored is None else StudySpec.from_dict(json.loads(stored))

    def load_trials(self) -> list[Trial]:
        """Every trial, by id."""
        rows = self._conn.execute(
            "SELECT id, parameters, status, objective, measurements, error, log_path, created_at, updated_at, "
            "objectives, started_at, ended_at FROM trials ORDER BY id").fetchall()
        return [Trial(id=r[0], parameters=json.loads(r[1]), status=TrialStatus(r[2]), objective=r[3],
                      measurements=[Measurement.from_dict(m) for m in json.loads(r[4])], error=r[5],
                      log_path=r[6], created_at=r[7], updated_at=r[8], objectives=json.loads(r[9] or "{}"),
                      started_at=r[10], ended_at=r[11])
                for r in rows]

    def save_trial(self, trial: Trial) -> None:
        """Insert or update ``trial`` in one transaction."""
        trial.updated_at = time.time()
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO trials (id, parameters, status, objective, measurements, error, "
                "log_path, created_at, updated_at, objectives, started_at, ended_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (trial.id, json.dumps(trial.parameters), trial.status.value, trial.objective,
                 json.dumps([m.to_dict() for m in trial.measurements]), trial.error, trial.log_path,
                 trial.created_at, trial.updated_at, json.dumps(trial.objectives), trial.started_at,
                 trial.ended_at))

    def add_trial(self, trial: Trial) -> None:
        """Insert a new trial; its id must be free.

        Raises:
            StudyStoreError: the store already holds a trial with this id (written by another driver).
        """
        row = self._conn.execute("SELECT status FROM trials WHERE id = ?", (trial.id,)).fetchone()
        if row is not None:
            raise StudyStoreError(
                f"study store {self.path}: trial {trial.id} is already stored ({row[0]}), so another driver is "
                f"writing this study. Run one driver per study; the same command resumes it afterwards.")
        self.save_trial(trial)

    # -- the driver lock ------------------------------------------------------------------------------
    def lock(self) -> dict[str, Any] | None:
        """Take the driver lock of this store (a no-op in memory and when already held).

        Returns:
            The host/pid record of a driver that died holding the lock (this one takes over), or ``None``.

        Raises:
            StudyLockedError: a live driver holds the lock; the message names its host and pid.
        """
        if self.path == ":memory:" or (self._lock is not None and self._lock.held):
            return None
        self._lock = StudyLock.acquire(self.path)
        return self._lock.previous

    def unlock(self) -> None:
        """Release the driver lock, if held."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        """Close the connection and release the driver lock."""
        self._conn.close()
        self.unlock()

    def __enter__(self) -> StudyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
