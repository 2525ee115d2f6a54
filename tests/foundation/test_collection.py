"""The collector pause around the imports of long-lived state (orchestrator.runtime.collection)."""
from __future__ import annotations

import gc

from orchestrator.runtime import collection


def test_paused_phases_nest_and_restore_the_collector_as_it_was():
    assert gc.isenabled()
    with collection.paused():
        assert not gc.isenabled()
        with collection.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer phase still runs
    assert gc.isenabled()
    gc.disable()
    try:
        with collection.paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
    collection.resume()  # without a pause: nothing happens
    assert gc.isenabled()


def test_freeze_moves_what_the_phase_built_out_of_the_collections():
    before = gc.get_freeze_count()
    try:
        with collection.paused(freeze=True):
            kept = [{"n": i} for i in range(1000)]
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()
