"""Errors raised by the study layer, sorted by what the caller should do.

* :class:`StudySpecError` -- the study configuration is wrong: fix the YAML/dict and retry.
* :class:`StudyStoreError` -- the study store cannot be used as asked (other spec, unreadable file): point
  the sweep at another directory or restore the original spec. :class:`StudyLockedError` -- another live
  driver runs the study: wait for it or stop it.
* :class:`WarmStartError` -- an earlier study named to warm-start from cannot be used (missing, or over
  another search space): fix the list of earlier studies.
* :class:`StudyFailedError` -- too many trials failed: give up and read the trial logs.
* :class:`AlgorithmUnavailableError` -- an optional dependency is missing: install it or pick another
  algorithm.
"""

from __future__ import annotations

__all__ = [
    "AlgorithmUnavailableError",
    "StudyFailedError",
    "StudyLockedError",
    "StudySpecError",
    "StudyStoreError",
    "TunerError",
    "WarmStartError",
]


class TunerError(Exception):
    """Base class of every error raised by :mod:`tuners`."""


class StudySpecError(TunerError, ValueError):
    """A study specification is invalid; the message names the field, the value given and the fix."""


class StudyStoreError(TunerError, RuntimeError):
    """The study store cannot be opened for this study (different spec, corrupt file, unknown URL)."""


class StudyLockedError(StudyStoreError):
    """A live driver holds the study store's lock.

    Attributes:
        host: the host name the holder runs on (``None`` if it did not record one yet).
        pid: its process id on that host.
    """

    def __init__(self, message: str, *, host: str | None = None, pid: int | None = None):
        super().__init__(message)
        self.host = host
        self.pid = pid


class WarmStartError(StudySpecError):
    """An earlier study given to warm-start from is missing or incompatible; the message names it and, for
    another search space, every differing parameter."""


class StudyFailedError(TunerError, RuntimeError):
    """More trials failed than ``max_failed_trials`` allows.

    Attributes:
        failed_count: number of failed trials.
        max_failed_trials: the limit that was exceeded.
        last_errors: ``(trial_id, error)`` of the most recent failures, newest last.
    """

    def __init__(self, message: str, *, failed_count: int, max_failed_trials: int,
                 last_errors: list[tuple[int, str]]):
        super().__init__(message)
        self.failed_count = failed_count
        self.max_failed_trials = max_failed_trials
        self.last_errors = last_errors


class AlgorithmUnavailableError(TunerError, ImportError):
    """The chosen algorithm needs a package that is not installed."""
