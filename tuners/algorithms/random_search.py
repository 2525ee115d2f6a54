"""RANDOM_SEARCH and QUASI_RANDOM_SEARCH."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from tuners.algorithms.base import Designer
from tuners.search_space import UnitCodec, point_key
from tuners.study_spec import StudySpec

__all__ = ["QuasiRandomDesigner", "RandomDesigner"]

# Draws tried per requested point before concluding that a small discrete space is exhausted.
_MAX_DRAWS_PER_POINT = 200


class _UnitSamplerDesigner(Designer):
    """Draws unit-cube points from ``_draw`` and skips assignments already seen."""

    multi_objective = True  # the draws ignore objectives

    def __init__(self, spec: StudySpec, seed: int = 0):
        super().__init__(spec, seed)
        self._codec = UnitCodec(spec)

    @abc.abstractmethod
    def _draw(self) -> np.ndarray:
        """One point of the unit cube."""

    def suggest(self, count: int = 1) -> list[dict[str, Any]]:
        """Up to ``count`` fresh assignments, skipping ones already tried."""
        seen = self._seen_keys()
        out: list[dict[str, Any]] = []
        draws = 0
        while len(out) < count and draws < _MAX_DRAWS_PER_POINT * count:
            draws += 1
            values = self._codec.decode(self._draw())
            key = point_key(values)
            if key not in seen:
                seen.add(key)
                out.append(values)
        return out


class RandomDesigner(_UnitSamplerDesigner):
    """Independent uniform draws in the scaled unit cube (log scales uniform in the logarithm)."""

    def __init__(self, spec: StudySpec, seed: int = 0):
        super().__init__(spec, seed)
        self._rng = np.random.default_rng(seed)

    def _draw(self) -> np.ndarray:
        return self._rng.random(self._codec.dim)


class QuasiRandomDesigner(_UnitSamplerDesigner):
    """A scrambled Halton sequence: low-discrepancy, so it covers the space more evenly than random draws.

    After a restart the sequence replays from its start and the points already tried are skipped, so a
    resumed study continues where it stopped.
    """

    def __init__(self, spec: StudySpec, seed: int = 0):
        super().__init__(spec, seed)
        from scipy.stats import qmc

        self._sampler = qmc.Halton(d=self._codec.dim, scramble=True, seed=np.random.default_rng(seed))

    def _draw(self) -> np.ndarray:
        return self._sampler.random(1)[0]
