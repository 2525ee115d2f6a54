"""Test support for the conformance suites of plugins that check configs (backends, deploy targets).

A plugin's ``check`` is asserted the way a user meets it: on a config composed from command-line overrides,
fast, and — for a bad value — with one ConfigError line naming the key, the value and the fix. Where the
schema already knows the rule, composing rejects the value first, which the user sees the same way.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pytest

from orchestrator.config.compose import compose
from orchestrator.config.validation import validate
from orchestrator.errors import ConfigError

#: CPU seconds a ``check`` may take (CPU time: other work on a busy machine does not count).
CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Invalid:
    """Overrides ``check`` must reject with a ConfigError naming ``key`` and showing ``value``."""

    overrides: Sequence[str]
    key: str
    value: Any


def assert_names_key_and_value(err: ConfigError, key: str, value: Any) -> None:
    """``err`` is the one line a user should get: the key, the value given and a fix."""
    message = str(err)
    assert err.key == key, message
    assert f"'{key}'" in message and repr(value) in message, message
    assert err.fix.strip() and "\n" not in message, message


def assert_accepted(check: Callable[[Any], None], overrides: Sequence[str]) -> Any:
    """Compose ``overrides``; ``check`` and the whole validation accept them, fast and without TensorFlow."""
    cfg = compose(list(overrides))
    had_tf = "tensorflow" in sys.modules
    start = time.process_time()
    assert check(cfg) is None
    validate(cfg)
    assert time.process_time() - start < CHECK_SECONDS
    assert had_tf or "tensorflow" not in sys.modules, "checking the config imported TensorFlow"
    return cfg


def assert_rejected(check: Callable[[Any], None], case: Invalid) -> None:
    """Composing ``case.overrides`` or ``check`` of the result raises the ConfigError ``case`` describes."""
    start = None
    with pytest.raises(ConfigError) as err:
        cfg = compose(list(case.overrides))
        start = time.process_time()
        check(cfg)
    assert start is None or time.process_time() - start < CHECK_SECONDS
    assert_names_key_and_value(err.value, case.key, case.value)
