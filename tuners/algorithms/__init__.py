"""Search algorithms behind the :class:`Designer` interface, and :func:`make_designer`."""

from __future__ import annotations

from tuners.algorithms.base import Designer
from tuners.algorithms.gp_bandit import GaussianProcessBandit
from tuners.algorithms.grid_search import GridDesigner
from tuners.algorithms.nsga2 import NSGA2Designer
from tuners.algorithms.random_search import QuasiRandomDesigner, RandomDesigner
from tuners.algorithms.tpe import TPEDesigner
from tuners.algorithms.vizier_designer import VizierDesigner
from tuners.study_spec import Algorithm, StudySpec

__all__ = [
    "DESIGNERS",
    "Designer",
    "GaussianProcessBandit",
    "GridDesigner",
    "NSGA2Designer",
    "QuasiRandomDesigner",
    "RandomDesigner",
    "TPEDesigner",
    "VizierDesigner",
    "make_designer",
]

#: Implementation of every algorithm (ALGORITHM_UNSPECIFIED resolves to GAUSSIAN_PROCESS_BANDIT).
DESIGNERS: dict[Algorithm, type[Designer]] = {
    Algorithm.GRID_SEARCH: GridDesigner,
    Algorithm.RANDOM_SEARCH: RandomDesigner,
    Algorithm.QUASI_RANDOM_SEARCH: QuasiRandomDesigner,
    Algorithm.GAUSSIAN_PROCESS_BANDIT: GaussianProcessBandit,
    Algorithm.TPE: TPEDesigner,
    Algorithm.VIZIER: VizierDesigner,
    Algorithm.NSGA2: NSGA2Designer,
}


def make_designer(spec: StudySpec, seed: int | None = None) -> Designer:
    """The designer for ``spec.algorithm``, seeded with ``seed`` (default ``spec.seed``)."""
    return DESIGNERS[spec.algorithm.resolved()](spec, spec.seed if seed is None else seed)
