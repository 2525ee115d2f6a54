"""Mapping between parameter assignments and points of the unit hypercube.

Algorithms search ``[0, 1]^D`` and never see bounds or scales: :class:`UnitCodec` owns that mapping. DOUBLE
and INTEGER use their scale type (log scales are uniform in the logarithm); DISCRETE and CATEGORICAL values get
equal-width cells, or one one-hot block per CATEGORICAL parameter when ``one_hot=True`` (for models that need
a distance that does not order categories). Every parameter of the tree gets dimensions; the decoder keeps
only those active under the decoded parent values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tuners.study_spec import ParameterSpec, ParameterType, ParameterValue, ScaleType, StudySpec

__all__ = ["UnitCodec", "from_unit", "point_key", "to_unit"]


def _log_bounds(param: ParameterSpec) -> tuple[float, float]:
    return math.log(param.min_value), math.log(param.max_value)


def from_unit(param: ParameterSpec, u: float) -> ParameterValue:
    """The value of ``param`` at position ``u`` in [0, 1] of its scaled domain."""
    u = min(max(float(u), 0.0), 1.0)
    if param.type in (ParameterType.CATEGORICAL, ParameterType.DISCRETE):
        return param.values[min(int(u * len(param.values)), len(param.values) - 1)]
    lo, hi = param.min_value, param.max_value
    if param.type is ParameterType.INTEGER and param.scale is ScaleType.UNIT_LINEAR_SCALE:
        # Widen by half a step on each side so that every integer owns an equal share of [0, 1].
        return int(min(max(round(lo - 0.5 + u * (hi - lo + 1) - 1e-9), lo), hi))
    if lo == hi:
        value = float(lo)
    elif param.scale is ScaleType.UNIT_LOG_SCALE:
        a, b = _log_bounds(param)
        value = math.exp(a + u * (b - a))
    elif param.scale is ScaleType.UNIT_REVERSE_LOG_SCALE:
        a, b = _log_bounds(param)
        value = hi + lo - math.exp(a + (1.0 - u) * (b - a))
    else:
        value = lo + u * (hi - lo)
    value = min(max(value, lo), hi)
    if param.type is ParameterType.INTEGER:
        return int(min(max(round(value), lo), hi))
    return float(value)


def to_unit(param: ParameterSpec, value: Any) -> float:
    """Inverse of :func:`from_unit`: the centre of the cell of ``value`` for discrete kinds."""
    if param.type in (ParameterType.CATEGORICAL, ParameterType.DISCRETE):
        if param.type is ParameterType.DISCRETE:
            index = int(np.argmin([abs(float(value) - v) for v in param.values]))
        else:
            index = param.values.index(value)
        return (index + 0.5) / len(param.values)
    lo, hi = param.min_value, param.max_value
    value = float(value)
    if param.type is ParameterType.INTEGER and param.scale is ScaleType.UNIT_LINEAR_SCALE:
        return (value - lo + 0.5) / (hi - lo + 1)
    if lo == hi:
        return 0.5
    if param.scale is ScaleType.UNIT_LOG_SCALE:
        a, b = _log_bounds(param)
        return (math.log(max(value, lo)) - a) / (b - a)
    if param.scale is ScaleType.UNIT_REVERSE_LOG_SCALE:
        a, b = _log_bounds(param)
        return 1.0 - (math.log(max(hi + lo - value, lo)) - a) / (b - a)
    return (value - lo) / (hi - lo)


def point_key(values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Hashable identity of an assignment; floats are rounded so that store round trips compare equal."""
    return tuple(sorted((k, round(v, 10) if isinstance(v, float) else v) for k, v in values.items()))


class UnitCodec:
    """Encodes assignments of ``spec`` as vectors in [0, 1]^D and decodes vectors back.

    Args:
        spec: the study.
        one_hot: encode each CATEGORICAL parameter as a one-hot block instead of one ordered dimension.
    """

    def __init__(self, spec: StudySpec, *, one_hot: bool = False):
        self.spec = spec
        self.params = spec.all_parameters()
        self.one_hot = one_hot
        self.slices: list[slice] = []
        start = 0
        for p in self.params:
            width = len(p.values) if one_hot and p.type is ParameterType.CATEGORICAL else 1
            self.slices.append(slice(start, start + width))
            start += width
        self.dim = start
        #: Dimensions a continuous optimiser may move (not one-hot blocks).
        self.continuous_dims = np.array(
            [s.start for p, s in zip(self.params, self.slices)
             if not (one_hot and p.type is ParameterType.CATEGORICAL)], dtype=int)

    def encode(self, values: Mapping[str, Any]) -> np.ndarray:
        """Vector of an assignment; inactive parameters sit at the centre (or all-zero one-hot)."""
        x = np.full(self.dim, 0.5)
        for p, s in zip(self.params, self.slices):
            if self.one_hot and p.type is ParameterType.CATEGORICAL:
                x[s] = 0.0
                if p.name in values:
                    x[s.start + p.values.index(values[p.name])] = 1.0
            elif p.name in values:
                x[s.start] = to_unit(p, values[p.name])
        return x

    def decode(self, x: np.ndarray) -> dict[str, ParameterValue]:
        """The assignment at ``x``, restricted to the parameters active under it, in spec order."""
        every: dict[str, ParameterValue] = {}
        for p, s in zip(self.params, self.slices):
            if self.one_hot and p.type is ParameterType.CATEGORICAL:
                every[p.name] = p.values[int(np.argmax(x[s]))]
            else:
                every[p.name] = from_unit(p, x[s.start])
        return {p.name: every[p.name] for p in self.spec.active_parameters(every)}

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniformly random points (valid one-hot blocks included)."""
        x = rng.random((n, self.dim))
        if self.one_hot:
            for p, s in zip(self.params, self.slices):
                if p.type is ParameterType.CATEGORICAL:
                    x[:, s] = np.eye(s.stop - s.start)[rng.integers(0, s.stop - s.start, n)]
        return x
