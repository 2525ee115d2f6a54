"""Errors tfscale raises, sorted by what the caller should do about them."""
from __future__ import annotations


class TfscaleError(Exception):
    """Base of every error tfscale raises on purpose; the CLI prints its message and exits non-zero."""

    exit_code = 1


class ConfigError(TfscaleError, ValueError):
    """The experiment config is invalid. Nothing was computed or written; fix the config and rerun.

    The message names the key, the value given and what is allowed or how to fix it.
    """

    exit_code = 2

    def __init__(self, key: str, value: object, fix: str, *, problem: str | None = None):
        self.key = key
        self.value = value
        self.fix = fix
        shown = "<missing>" if value is _MISSING else repr(value)
        what = f": {problem}" if problem else ""
        super().__init__(f"Invalid config '{key}' = {shown}{what}. {fix}")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
MISSING_VALUE = _MISSING


class TaskFailedError(TfscaleError):
    """A task of the run failed at run time (training, export, deploy). See its log for the cause."""

    exit_code = 1


class GateError(TfscaleError):
    """A quality gate rejected a result (e.g. accuracy drop of a quantized model); nothing was published."""

    exit_code = 3
