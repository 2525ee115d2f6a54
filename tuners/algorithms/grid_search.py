"""GRID_SEARCH."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from tuners.algorithms.base import Designer
from tuners.search_space import from_unit, point_key
from tuners.study_spec import ParameterSpec, ParameterType, StudySpec

__all__ = ["GridDesigner"]


class GridDesigner(Designer):
    """Walks the grid in a fixed order; exhausted when every grid point was suggested.

    CATEGORICAL and DISCRETE parameters contribute all their values. DOUBLE and INTEGER ranges contribute
    ``resolution`` points evenly spaced on their scale (all integers when there are fewer); by default the
    resolution is chosen so that the grid of the numeric parameters roughly fills ``max_trials``.
    Conditional children are expanded only under the parent values that activate them.
    """

    multi_objective = True  # the walk ignores objectives

    def __init__(self, spec: StudySpec, seed: int = 0, *, resolution: int | None = None):
        super().__init__(spec, seed)
        numeric = [p for p in spec.all_parameters()
                   if p.type in (ParameterType.DOUBLE, ParameterType.INTEGER)]
        if resolution is None:
            resolution = max(2, math.floor(spec.max_trials ** (1.0 / max(1, len(numeric))) + 1e-9))
        self.resolution = resolution

    def _values(self, param: ParameterSpec) -> list[Any]:
        if param.type in (ParameterType.CATEGORICAL, ParameterType.DISCRETE):
            return list(param.values)
        if param.min_value == param.max_value:
            return [param.min_value]
        if param.type is ParameterType.INTEGER and param.max_value - param.min_value + 1 <= self.resolution:
            return list(range(int(param.min_value), int(param.max_value) + 1))
        n = self.resolution
        if param.type is ParameterType.INTEGER:
            # Integer cells are half a step wider at the ends; sample cell centres so the ends are included.
            points = [from_unit(param, (i + 0.5) / n) if 0 < i < n - 1 else None for i in range(n)]
            points[0], points[-1] = int(param.min_value), int(param.max_value)
            return list(dict.fromkeys(points))
        return list(dict.fromkeys(from_unit(param, i / (n - 1)) for i in range(n)))

    def _points(self, params: tuple[ParameterSpec, ...]) -> Iterator[dict[str, Any]]:
        if not params:
            yield {}
            return
        head, rest = params[0], params[1:]
        for value in self._values(head):
            for sub in self._points(head.active_children(value)):
                for tail in self._points(rest):
                    yield {head.name: value, **sub, **tail}

    def suggest(self, count: int = 1) -> list[dict[str, Any]]:
        """The next ``count`` grid points not tried yet."""
        seen = self._seen_keys()
        fresh = (p for p in self._points(self.spec.parameters) if point_key(p) not in seen)
        # Restore spec order (children right after their parent) for readable overrides.
        order = [p.name for p in self.spec.all_parameters()]
        return [{k: p[k] for k in order if k in p} for p in itertools.islice(fresh, count)]
