"""The ask/tell :class:`Study`: suggestions from a designer, outcomes into the store."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Sequence, Tuple

from tuners.algorithms import Designer, make_designer
from tuners.early_stopping import NoStoppingRule, StopDecision, make_stopping_rule
from tuners.errors import StudyFailedError
from tuners.pareto import pareto_front
from tuners.study_spec import Goal, Measurement, MetricSpec, StudySpec, Trial, TrialStatus
from tuners.study_store import StudyStore

__all__ = ["Study"]

MeasurementLike = Measurement | tuple[int, float] | Mapping[str, Any]


class Study:
    """A hyperparameter study driven by ask/tell calls; no Hydra needed.

    Args:
        spec: the study (or its native/AI Platform/Vertex dict form).
        store: a :class:`StudyStore`, or a location for one (sweep directory, ``.db`` path,
            ``sqlite:///`` URL). ``None`` keeps everything in memory.
        designer: override the algorithm of ``spec`` (mostly for tests).
        prior_trials: COMPLETED trials of earlier studies over the same search space (a warm start, see
            :func:`tuners.load_prior_trials`): the designer learns from them before its first suggestion.
            They are not trials of this study: not stored, not counted against ``max_trials``.
        lock: take the store's driver lock (:meth:`StudyStore.lock`), so that no other driver writes the
            study meanwhile; released by :meth:`close` or when the process ends.

    Resuming: opening a store that already holds this study keeps its COMPLETED, FAILED and STOPPED trials.
    ACTIVE trials found there were interrupted with their driver; they are handed out again, with the same
    ids and parameters, by the next :meth:`suggest` calls before any new suggestion. New trials get ids after
    the largest stored one, so no trial is lost or duplicated.

    Raises:
        StudyLockedError: another live driver holds the store (its host and pid are in the message).
        StudyStoreError: the store holds another study.
    """

    def __init__(self, spec: StudySpec | Mapping[str, Any], store: StudyStore | str | os.PathLike | None = None,
                 *, designer: Designer | None = None, prior_trials: Iterable[Trial] = (), lock: bool = True):
        self.spec = spec if isinstance(spec, StudySpec) else StudySpec.from_dict(spec)
        self.store = store if isinstance(store, StudyStore) else StudyStore(store if store is not None
                                                                             else ":memory:")
        #: Host/pid of a driver that died holding the store's lock, taken over by this one (else ``None``).
        self.previous_driver = self.store.lock() if lock else None
        try:
            self.resumed = self.store.attach(self.spec)
        except BaseException:
            self.store.unlock()
            raise
        self._keys = {p.name: p.config_key for p in self.spec.all_parameters()}
        self._trials: dict[int, Trial] = {}
        for trial in self.store.load_trials():
            trial.config_keys = self._keys
            self._trials[trial.id] = trial
        self._designer = designer if designer is not None else make_designer(self.spec)
        self._told: set[int] = set()
        # Negative ids keep them apart from this study's trials in the designer's bookkeeping.
        self.prior_trials = [dataclasses.replace(t, id=-1 - i, config_keys=self._keys)
                             for i, t in enumerate(prior_trials)]
        self._prior_told = False
        #: Interrupted trials from a previous driver, re-run before new suggestions.
        self._requeue = [t.id for t in self._trials.values() if t.status is TrialStatus.ACTIVE]
        self._running: set[int] = set()
        self._exhausted = False
        self._rule = make_stopping_rule(self.spec.early_stopping, self.spec.metric.goal)

    @classmethod
    def open(cls, config: StudySpec | Mapping[str, Any], sweep_dir: str | os.PathLike) -> Study:
        """The study of ``config`` stored in ``<sweep_dir>/study.db``, resumed if it exists."""
        return cls(config, StudyStore(sweep_dir))

    # -- queries --------------------------------------------------------------------------------------
    @property
    def trials(self) -> list[Trial]:
        """All trials, by id."""
        return [self._trials[i] for i in sorted(self._trials)]

    def trial(self, trial_id: int) -> Trial:
        """The trial with id ``trial_id``."""
        try:
            return self._trials[trial_id]
        except KeyError:
            raise KeyError(f"no trial {trial_id} in this study; ids are {sorted(self._trials)}") from None

    def _with_status(self, status: TrialStatus) -> list[Trial]:
        return [t for t in self.trials if t.status is status]

    @property
    def best_trial(self) -> Trial | None:
        """The COMPLETED trial with the best objective (lowest id on ties), or ``None``.

        A multi-objective study has no single best trial: this is ``None`` there; see :attr:`pareto_trials`.
        """
        done = self._with_status(TrialStatus.COMPLETED)
        if not done or self.spec.is_multi_objective:
            return None
        sign = self.spec.metric.goal.sign
        return max(done, key=lambda t: (sign * t.objective, -t.id))

    @property
    def pareto_trials(self) -> list[Trial]:
        """The COMPLETED trials no other completed trial dominates on the study's metrics, best first on the
        first metric. For a single-metric study, the best trial and any ties with it."""
        return pareto_front(self.trials, self.spec.metrics)

    @property
    def running(self) -> list[Trial]:
        """ACTIVE trials handed out by this driver and not yet finished."""
        return [self._trials[i] for i in sorted(self._running)]

    @property
    def failed_count(self) -> int:
        """Number of FAILED trials."""
        return len(self._with_status(TrialStatus.FAILED))

    @property
    def is_done(self) -> bool:
        """True when no trial is running or waiting and no new one will be suggested (budget used, space
        exhausted, or too many failures)."""
        if self.failed_count > self.spec.failure_budget:
            return True
        if self._running or self._requeue:
            return False
        return self._exhausted or len(self._trials) >= self.spec.max_trials

    # -- ask ------------------------------------------------------------------------------------------
    def _sync_designer(self) -> None:
        new = [t for t in self.trials if t.status.is_finished and t.id not in self._told]
        if not self._prior_told:  # a warm start: the earlier studies' trials come with the first update
            new = [*self.prior_trials, *new]
            self._prior_told = True
        active = self._with_status(TrialStatus.ACTIVE)
        self._designer.update(new, active)
        self._told.update(t.id for t in new)

    def suggest(self, count: int | None = None) -> list[Trial]:
        """Up to ``count`` trials to run now (default: as many as free parallel slots).

        Never more than ``max_parallel_trials`` running at once nor ``max_trials`` in total; interrupted
        trials of a resumed study come first. An empty list with :attr:`is_done` False means: wait for a
        running trial to finish.

        Raises:
            StudyFailedError: more than ``max_failed_trials`` trials failed.
        """
        self._check_failures()
        free = self.spec.max_parallel_trials - len(self._running)
        n = free if count is None else min(count, free)
        out: list[Trial] = []
        while self._requeue and len(out) < n:
            trial = self._trials[self._requeue.pop(0)]
            self._running.add(trial.id)
            out.append(trial)
        wanted = min(n - len(out), self.spec.max_trials - len(self._trials))
        if wanted > 0 and not self._exhausted:
            self._sync_designer()
            suggestions = self._designer.suggest(wanted)
            if len(suggestions) < wanted:
                self._exhausted = True
            next_id = max(self._trials, default=-1) + 1
            for offset, values in enumerate(suggestions):
                self.spec.validate_parameters(values)
                trial = Trial(id=next_id + offset, parameters=dict(values), config_keys=self._keys)
                self.store.add_trial(trial)  # never replaces a trial another driver stored
                self._trials[trial.id] = trial
                self._running.add(trial.id)
                out.append(trial)
        return out

    # -- tell -----------------------------------------------------------------------------------------
    def mark_started(self, trial_id: int, at: float | None = None) -> Trial:
        """Record that an ACTIVE trial's process started now (or at ``at``, a ``time.time()`` value).

        A re-run of an interrupted trial starts afresh: its end time is cleared.
        """
        trial = self._active(trial_id)
        trial.started_at = time.time() if at is None else float(at)
        trial.ended_at = None
        self.store.save_trial(trial)
        return trial

    def _active(self, trial_id: int) -> Trial:
        trial = self.trial(trial_id)
        if trial.status is not TrialStatus.ACTIVE:
            raise ValueError(f"trial {trial_id} is already {trial.status.name}; only ACTIVE trials can be "
                             f"completed, failed or stopped.")
        return trial

    def _finish(self, trial: Trial, status: TrialStatus) -> Trial:
        trial.status = status
        if trial.ended_at is None:  # the driver may have set the moment the trial's process ended
            trial.ended_at = time.time()
        self.store.save_trial(trial)
        self._running.discard(trial.id)
        if trial.id in self._requeue:
            self._requeue.remove(trial.id)
        return trial

    def _as_measurements(self, items: Iterable[MeasurementLike]) -> list[Measurement]:
        out = []
        for item in items:
            if isinstance(item, Measurement):
                out.append(item)
            elif isinstance(item, Mapping):
                out.append(Measurement(int(item["step"]), dict(item.get("metrics") or
                                                                {self.spec.metric.tag: item["value"]})))
            else:
                step, value = item
                out.append(Measurement(int(step), {self.spec.metric.tag: float(value)}))
        return out

    def _best_measured(self, trial: Trial, metric: MetricSpec | None = None) -> float | None:
        metric = metric or self.spec.metric
        values = [v for _, v in trial.curve(metric.tag) if math.isfinite(v)]
        if not values:
            return None
        return max(values) if metric.goal is Goal.MAXIMIZE else min(values)

    def _given_values(self, objective: float | Mapping[str, float] | None) -> dict[str, float | None]:
        if isinstance(objective, Mapping):
            return dict(objective)
        if objective is None:
            return {}
        if self.spec.is_multi_objective:
            raise ValueError(f"this study has {len(self.spec.metrics)} metrics "
                             f"{[m.tag for m in self.spec.metrics]}: pass a mapping from each tag to its value, "
                             f"not the single number {objective!r}.")
        return {self.spec.metric.tag: objective}

    def complete(self, trial_id: int, objective: float | Mapping[str, float] | None,
                 measurements: Iterable[MeasurementLike] | None = None, *, log_path: str | None = None) -> Trial:
        """Record the final objective of a trial: a number, or for a multi-objective study a mapping from
        every metric tag to its value.

        A metric without a value (``objective=None``, or a tag missing from the mapping) takes its best
        measured value (Vertex's BEST_MEASUREMENT). A missing or non-finite value of any metric (NaN loss)
        marks the trial FAILED instead, so it counts against ``max_failed_trials``.
        """
        trial = self._active(trial_id)
        given = self._given_values(objective)
        trial.measurements.extend(self._as_measurements(measurements or ()))
        trial.log_path = log_path or trial.log_path
        values: dict[str, float] = {}
        for metric in self.spec.metrics:
            value = given.get(metric.tag)
            if value is None:
                value = self._best_measured(trial, metric)
            if value is None or not math.isfinite(float(value)):
                trial.error = f"objective {metric.tag!r} is {value!r}, not a finite number"
                self._finish(trial, TrialStatus.FAILED)
                self._check_failures()
                return trial
            values[metric.tag] = float(value)
        trial.objectives = values
        trial.objective = values[self.spec.metric.tag]
        return self._finish(trial, TrialStatus.COMPLETED)

    def fail(self, trial_id: int, error: str, log_path: str | None = None) -> Trial:
        """Mark a trial FAILED with its error text.

        Raises:
            StudyFailedError: this failure exceeds ``max_failed_trials``.
        """
        trial = self._active(trial_id)
        trial.error = str(error)
        trial.log_path = log_path or trial.log_path
        self._finish(trial, TrialStatus.FAILED)
        self._check_failures()
        return trial

    def stop(self, trial_id: int, objective: float | Mapping[str, float] | None = None) -> Trial:
        """Mark a trial STOPPED (early-stopped); each metric's value is the one given or its best measurement."""
        trial = self._active(trial_id)
        given = self._given_values(objective)
        for metric in self.spec.metrics:
            value = given.get(metric.tag)
            value = value if value is not None else self._best_measured(trial, metric)
            if value is not None and math.isfinite(value):
                trial.objectives[metric.tag] = float(value)
        trial.objective = trial.objectives.get(self.spec.metric.tag)
        return self._finish(trial, TrialStatus.STOPPED)

    def add_measurement(self, trial_id: int, step: int, value: float | Mapping[str, float]) -> StopDecision:
        """Record an intermediate measurement and ask the early stopping rule about the trial.

        The caller stops the trial (and calls :meth:`stop`) when the returned decision is truthy.
        """
        return self.add_measurements(trial_id, [(step, value)])

    def add_measurements(self, trial_id: int, points: Sequence[Tuple[int, Any]]) -> StopDecision:
        """:meth:`add_measurement` for several ``(step, value)`` points, in order, stored in one write.

        The rule is asked after each point, as if they had come one at a time; its first decision to stop is
        returned (the points after it are recorded all the same), else its last decision.
        """
        trial = self._active(trial_id)
        tag = self.spec.metric.tag
        decision = None
        for step, value in points:
            metrics = dict(value) if isinstance(value, Mapping) else {tag: float(value)}
            trial.measurements.append(Measurement(int(step), metrics))
            if not decision:
                decision = self.should_stop(trial_id)
        self.store.save_trial(trial)
        return self.should_stop(trial_id) if decision is None else decision

    def should_stop(self, trial_id: int) -> StopDecision:
        """The early stopping rule's decision for an ACTIVE trial."""
        tag = self.spec.metric.tag
        if isinstance(self._rule, NoStoppingRule):  # no curves to gather: this runs after every measurement
            return self._rule.should_stop(self.trial(trial_id).curve(tag), [])
        completed = [t.curve(tag) for t in self._with_status(TrialStatus.COMPLETED)]
        return self._rule.should_stop(self.trial(trial_id).curve(tag), completed)

    def _check_failures(self) -> None:
        failed = self._with_status(TrialStatus.FAILED)
        budget = self.spec.failure_budget
        if len(failed) > budget:
            last = [(t.id, t.error or "") for t in sorted(failed, key=lambda t: t.updated_at)[-3:]]
            detail = "; ".join(f"trial {i}: {e.strip().splitlines()[-1] if e.strip() else 'no error text'}"
                               + (f" (log: {self._trials[i].log_path})" if self._trials[i].log_path else "")
                               for i, e in last)
            raise StudyFailedError(
                f"{len(failed)} of {len(self._trials)} trials failed, more than max_failed_trials={budget}. "
                f"Last errors: {detail}. Fix the trial error, or raise max_failed_trials.",
                failed_count=len(failed), max_failed_trials=budget, last_errors=last)

    def close(self) -> None:
        """Close the store."""
        self.store.close()
