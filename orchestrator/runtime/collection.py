"""Python's cyclic garbage collector, paused while a process builds the state it keeps for its whole life.

Importing TensorFlow and tf_keras creates about 400,000 objects that live as long as the process. With the
collector running, every few hundred allocations start a collection, and the older generations' collections
walk everything made so far again: on the 2-core development machine ``import tensorflow, tf_keras`` took
2.15-2.35 s with the collector on and 1.55-1.70 s with it paused (the import makes next to no garbage, so
nothing is lost by not collecting during it). A study's driver builds its long-lived state (Hydra, the
composed sweep, the study, the data) the same way before its first trial starts.

:func:`paused` is for such a phase: the collector is off inside it and on again after it, as it was before;
``freeze=True`` moves what exists at the end into the permanent generation (``gc.freeze``), so later
collections never walk it again (for a process that forks workers from that state, or keeps it to the end).
Nested phases keep it paused until the outermost one ends.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator

_depth = 0
_was_enabled = False


def pause() -> None:
    """Stop automatic collections until the matching :func:`resume`."""
    global _depth, _was_enabled
    if _depth == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _depth += 1


def resume(*, freeze: bool = False) -> None:
    """End a :func:`pause`; the outermost one turns collections back on (if they were on) after ``gc.freeze``
    when ``freeze``. Without a pause, only freezes when asked to."""
    global _depth
    if _depth == 0:
        if freeze:
            gc.freeze()
        return
    _depth -= 1
    if _depth == 0:
        if freeze:
            gc.freeze()
        if _was_enabled:
            gc.enable()


@contextlib.contextmanager
def paused(*, freeze: bool = False) -> Iterator[None]:
    """Collections paused for the ``with`` block (see the module docstring)."""
    pause()
    try:
        yield
    finally:
        resume(freeze=freeze)
