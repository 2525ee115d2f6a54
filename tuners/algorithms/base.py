"""The interface every search algorithm implements."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

from tuners.search_space import point_key
from tuners.study_spec import StudySpec, Trial, TrialStatus

__all__ = ["Designer"]


class Designer(abc.ABC):
    """A search algorithm, in the shape of OSS Vizier's ``Designer``.

    Call protocol, as driven by :class:`tuners.Study`:

    1. ``designer = SomeDesigner(spec, seed)`` -- a new designer knows nothing about earlier trials.
       A warm-started study passes the COMPLETED trials of earlier studies in its first ``update``, with
       negative ids; a model-based designer learns from them like from its own, and every designer treats
       their points as tried.
    2. ``designer.update(completed, active)`` -- ``completed`` are trials that finished *since the previous
       update* (COMPLETED, STOPPED or FAILED; FAILED ones and those without an objective carry no value but
       must not be suggested again), ``active`` are *all* trials currently running.
    3. ``designer.suggest(count)`` -- up to ``count`` new assignments (dicts holding only the active
       parameters), distinct from each other and from every trial seen so far when the space allows.
       Fewer than ``count`` (possibly none) means the space is exhausted.

    The same seed and the same sequence of calls give the same suggestions.

    A designer that sets ``multi_objective = True`` accepts studies with several metrics (their trials
    carry every value in ``Trial.objectives``); the others optimise ``spec.metric`` and refuse such studies.
    """

    #: Whether the designer can run a study with several metrics.
    multi_objective = False

    def __init__(self, spec: StudySpec, seed: int = 0):
        if spec.is_multi_objective and not self.multi_objective:
            raise ValueError(f"{type(self).__name__} optimises one metric, but the study has "
                             f"{[m.tag for m in spec.metrics]}. Use a multi-objective designer (NSGA2).")
        self.spec = spec
        self.seed = seed
        self._observed: dict[int, Trial] = {}
        self._failed: dict[int, Trial] = {}
        self._active: list[Trial] = []
        self._finished_keys: set[tuple] = set()

    @abc.abstractmethod
    def suggest(self, count: int = 1) -> list[dict[str, Any]]:
        """Up to ``count`` new parameter assignments."""

    def update(self, completed: Sequence[Trial], active: Sequence[Trial] = ()) -> None:
        """Record newly finished trials and the full list of running ones."""
        for trial in completed:
            if trial.status is TrialStatus.ACTIVE:
                raise ValueError(f"trial {trial.id} is ACTIVE; pass it in `active`, not `completed`.")
            if trial.objective is not None and math.isfinite(trial.objective) \
                    and trial.status is not TrialStatus.FAILED:
                self._observed[trial.id] = trial
            else:
                self._failed[trial.id] = trial
            self._finished_keys.add(point_key(trial.parameters))
        self._active = list(active)

    # Helpers shared by implementations; not part of the interface.
    def _seen_keys(self) -> set[tuple]:
        return self._finished_keys | {point_key(t.parameters) for t in self._active}

    def _maximised(self, trial: Trial) -> float:
        return self.spec.metric.goal.sign * float(trial.objective)
