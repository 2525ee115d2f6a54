"""NSGA2: the non-dominated sorting genetic algorithm (Deb et al., 2002) for studies with one or several
metrics, in numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuners.algorithms.base import Designer
from tuners.algorithms.random_search import QuasiRandomDesigner
from tuners.pareto import crowding_distance, maximised, non_dominated_sort
from tuners.search_space import UnitCodec, point_key
from tuners.study_spec import ParameterType, StudySpec

__all__ = ["NSGA2Designer"]

# Children drawn per suggestion before falling back to a random point (small discrete spaces repeat).
_MAX_CHILDREN_PER_POINT = 20
_MAX_RANDOM_DRAWS = 200


class NSGA2Designer(Designer):
    """NSGA-II in its steady-state form, so that it fits asynchronous trials.

    * The first ``population_size`` trials come from a scrambled Halton sequence.
    * The population is then the ``population_size`` best completed trials, ranked by non-dominated front
      and, within a front, by crowding distance (elitist: a finished trial enters only by out-ranking a
      member). With one metric the fronts are simply the trials in order of their objective.
    * Every suggestion is a child of two parents picked by binary tournament (lower front, then larger
      crowding distance): simulated binary crossover (``eta_crossover``) with probability
      ``crossover_prob`` on the numeric dimensions of the scaled unit cube, each CATEGORICAL value taken from
      either parent; then polynomial mutation (``eta_mutation``) of each dimension with probability
      ``mutation_prob`` (a CATEGORICAL value is drawn anew).
    * A trial that finishes joins the ranking at once, so no generation waits for its slowest trial;
      running trials are only kept from being suggested twice. FAILED trials are never parents and never
      suggested again.

    Why a genetic algorithm rather than a multi-objective surrogate model: it needs no extra package, costs
    milliseconds per suggestion, and covers the whole front rather than one scalarisation of it. With a
    small budget (a population or two) it explores about as well as quasi-random search; its advantage grows
    with the number of trials.

    Args:
        spec: the study.
        seed: seeds every random choice.
        population_size: trials kept as parents, and quasi-random trials before the first child (default
            ``max(6, 2 * dims + 2)``).
        crossover_prob: probability that a child mixes both parents (otherwise it mutates the first).
        eta_crossover: distribution index of the crossover; larger keeps children nearer their parents.
        eta_mutation: distribution index of the mutation; larger makes smaller steps.
        mutation_prob: per-dimension mutation probability (default ``1 / dims``).
    """

    multi_objective = True

    def __init__(self, spec: StudySpec, seed: int = 0, *, population_size: int | None = None,
                 crossover_prob: float = 0.9, eta_crossover: float = 15.0, eta_mutation: float = 20.0,
                 mutation_prob: float | None = None):
        super().__init__(spec, seed)
        self._codec = UnitCodec(spec)
        dims = self._codec.dim
        self.population_size = population_size if population_size is not None else max(6, 2 * dims + 2)
        self.mutation_prob = mutation_prob if mutation_prob is not None else 1.0 / dims
        for name, value in (("crossover_prob", crossover_prob), ("mutation_prob", self.mutation_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], but got {name}={value}.")
        for name, value in (("eta_crossover", eta_crossover), ("eta_mutation", eta_mutation)):
            if not value >= 0.0:
                raise ValueError(f"`{name}` must be >= 0, but got {name}={value}.")
        if self.population_size < 2:
            raise ValueError(f"`population_size` must be >= 2, but got population_size={self.population_size}.")
        self.crossover_prob = crossover_prob
        self.eta_crossover = eta_crossover
        self.eta_mutation = eta_mutation
        self._initial = QuasiRandomDesigner(spec, seed)
        self._rng = np.random.default_rng(seed)
        self._categorical = np.array([p.type is ParameterType.CATEGORICAL for p in self._codec.params], dtype=bool)

    def update(self, completed, active=()) -> None:
        """Record finished and running trials (see :class:`~tuners.algorithms.Designer`)."""
        super().update(completed, active)
        self._initial.update(completed, active)

    # -- selection ------------------------------------------------------------------------------------
    def _population(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encoded parents with their front index and crowding distance, best first."""
        trials = sorted(self._observed.values(), key=lambda t: t.id)
        points = maximised(trials, self.spec.metrics)
        rank = np.zeros(len(trials))
        crowd = np.zeros(len(trials))
        for r, front in enumerate(non_dominated_sort(points)):
            rank[front] = r
            crowd[front] = crowding_distance(points[front])
        keep = sorted(range(len(trials)), key=lambda i: (rank[i], -crowd[i], trials[i].id))[: self.population_size]
        x = np.array([self._codec.encode(trials[i].parameters) for i in keep])
        return x, rank[keep], crowd[keep]

    def _tournament(self, rank: np.ndarray, crowd: np.ndarray) -> int:
        i, j = self._rng.integers(0, len(rank), 2)
        if rank[i] != rank[j]:
            return int(i if rank[i] < rank[j] else j)
        if crowd[i] != crowd[j]:
            return int(i if crowd[i] > crowd[j] else j)
        return int(i if self._rng.random() < 0.5 else j)

    # -- variation ------------------------------------------------------------------------------------
    def _sbx_point(self, y1: float, y2: float) -> float:
        """One child of simulated binary crossover between ``y1 < y2`` within [0, 1]."""
        eta = self.eta_crossover
        u = self._rng.random()

        def spread(beta: float) -> float:
            alpha = 2.0 - beta ** -(eta + 1.0)
            if u <= 1.0 / alpha:
                return (u * alpha) ** (1.0 / (eta + 1.0))
            return (1.0 / (2.0 - u * alpha)) ** (1.0 / (eta + 1.0))

        gap = y2 - y1
        if self._rng.random() < 0.5:
            return 0.5 * ((y1 + y2) - spread(1.0 + 2.0 * y1 / gap) * gap)
        return 0.5 * ((y1 + y2) + spread(1.0 + 2.0 * (1.0 - y2) / gap) * gap)

    def _crossover(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self._rng.random() >= self.crossover_prob:
            return a.copy()
        child = np.where(self._rng.random(len(a)) < 0.5, a, b)
        for k in np.flatnonzero(~self._categorical):
            y1, y2 = sorted((float(a[k]), float(b[k])))
            if y2 - y1 > 1e-12 and self._rng.random() < 0.5:
                child[k] = self._sbx_point(y1, y2)
        return np.clip(child, 0.0, 1.0)

    def _mutate(self, x: np.ndarray) -> np.ndarray:
        eta = self.eta_mutation
        power = 1.0 / (eta + 1.0)
        for k in np.flatnonzero(self._rng.random(len(x)) < self.mutation_prob):
            if self._categorical[k]:
                x[k] = self._rng.random()
                continue
            y, u = float(x[k]), self._rng.random()
            if u < 0.5:
                step = (2.0 * u + (1.0 - 2.0 * u) * (1.0 - y) ** (eta + 1.0)) ** power - 1.0
            else:
                step = 1.0 - (2.0 * (1.0 - u) + 2.0 * (u - 0.5) * y ** (eta + 1.0)) ** power
            x[k] = y + step
        return np.clip(x, 0.0, 1.0)

    # -- suggestions ----------------------------------------------------------------------------------
    def _child(self, x: np.ndarray, rank: np.ndarray, crowd: np.ndarray, seen: set) -> dict[str, Any] | None:
        for _ in range(_MAX_CHILDREN_PER_POINT):
            first = self._tournament(rank, crowd)
            second = self._tournament(rank, crowd)
            if second == first and len(rank) > 1:
                second = (first + 1 + int(self._rng.integers(0, len(rank) - 1))) % len(rank)
            values = self._codec.decode(self._mutate(self._crossover(x[first], x[second])))
            if point_key(values) not in seen:
                return values
        for _ in range(_MAX_RANDOM_DRAWS):
            values = self._codec.decode(self._rng.random(self._codec.dim))
            if point_key(values) not in seen:
                return values
        return None

    def suggest(self, count: int = 1) -> list[dict[str, Any]]:
        """Up to ``count`` distinct assignments: quasi-random until a population exists, then children."""
        seen = self._seen_keys()
        out: list[dict[str, Any]] = []
        if len(self._observed) < 2 or len(seen) < self.population_size:
            wanted = count if len(self._observed) < 2 else min(count, self.population_size - len(seen))
            out = self._initial.suggest(wanted)
            seen.update(point_key(v) for v in out)
            if len(self._observed) < 2:
                return out
        if len(out) < count:
            x, rank, crowd = self._population()
            while len(out) < count:
                values = self._child(x, rank, crowd, seen)
                if values is None:
                    break
                out.append(values)
                seen.add(point_key(values))
        return out
