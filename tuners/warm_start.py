"""Warm starts: the COMPLETED trials of earlier studies over the same search space, for a new study's designer.

An earlier study is compatible when it searches the same parameters (names, types, conditional structure
and config keys) for the same metrics and goals; its ranges may differ. Its completed trials that fall
outside the new study's ranges are left out (the designer maps the search space to a unit cube, where
they have no place). Pass the result to :class:`tuners.Study` as ``prior_trials``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import tempfile
from pathlib import Path

from tuners.errors import StudySpecError, StudyStoreError, WarmStartError
from tuners.study_spec import StudySpec, Trial, TrialStatus
from tuners.study_store import StudyStore

__all__ = ["PriorStudy", "load_prior_trials", "search_space_differences"]


@dataclasses.dataclass(frozen=True)
class PriorStudy:
    """The trials an earlier study contributes to a warm start.

    Attributes:
        source: the earlier study as the user named it.
        path: its study store file.
        trials: its COMPLETED trials inside the new study's search space.
        outside: how many of its COMPLETED trials lie outside it (left out).
    """

    source: str
    path: str
    trials: tuple[Trial, ...]
    outside: int = 0


def _where(param) -> str:
    return f" under '{param.parent_values}'" if param.parent_values else ""


def search_space_differences(spec: StudySpec, earlier: StudySpec) -> list[str]:
    """``parameter: how it differs`` for every parameter that makes ``earlier``'s trials unusable for
    ``spec``, and the same for the metrics; empty when compatible."""
    mine = {p.name: p for p in spec.all_parameters()}
    theirs = {p.name: p for p in earlier.all_parameters()}
    out: list[str] = []
    for name in sorted(set(mine) | set(theirs)):
        a, b = mine.get(name), theirs.get(name)
        if b is None:
            out.append(f"{name}: only in this study")
        elif a is None:
            out.append(f"{name}: only in the earlier study")
        elif a.type is not b.type:
            out.append(f"{name}: {a.type.name} here, {b.type.name} there")
        elif a.config_key != b.config_key:
            out.append(f"{name}: sets {a.config_key} here, {b.config_key} there")
        else:
            parent_a = next((p.name for p in spec.all_parameters() if a in p.children), None)
            parent_b = next((p.name for p in earlier.all_parameters() if b in p.children), None)
            if parent_a != parent_b:
                out.append(f"{name}: child of {parent_a or 'nothing'} here, of {parent_b or 'nothing'} there")
    goals = [(m.tag, m.goal.name) for m in spec.metrics]
    earlier_goals = [(m.tag, m.goal.name) for m in earlier.metrics]
    if goals != earlier_goals:
        out.append(f"metrics: {_metrics(goals)} here, {_metrics(earlier_goals)} there")
    return out


def _metrics(goals: list[tuple[str, str]]) -> str:
    return ", ".join(f"{tag} {goal}" for tag, goal in goals)


def _snapshot(path: str, into: Path) -> str:
    """A consistent copy of the store at ``path`` (its driver may be writing it), read-only at the source."""
    copy = str(into / "study.db")
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return copy


def load_prior_trials(spec: StudySpec, location: str | os.PathLike, *, source: str | None = None) -> PriorStudy:
    """The COMPLETED trials of the earlier study stored at ``location`` (a study directory, ``.db`` file or
    ``sqlite:///`` URL), for a warm start of ``spec``. The earlier study is only read.

    Raises:
        WarmStartError: no study store there, or its search space or metrics differ (every difference is
            named).
    """
    label = source if source is not None else os.fspath(location)
    try:
        path = StudyStore.resolve(location)
    except StudyStoreError as err:
        raise WarmStartError(f"{label!r}: {err}") from None
    if path == ":memory:" or not Path(path).is_file():
        raise WarmStartError(f"{label!r}: no study store at {path}. Give the name of a study that ran (its "
                             f"directory holds study.db) or its directory.")
    with tempfile.TemporaryDirectory(prefix="tfscale-warm-start-") as scratch:
        try:
            with StudyStore(_snapshot(path, Path(scratch))) as store:
                earlier = store.stored_spec()
                trials = store.load_trials()
        except (sqlite3.DatabaseError, StudyStoreError, StudySpecError) as err:
            raise WarmStartError(f"{label!r}: cannot read the study store {path} ({err}).") from None
    if earlier is None:
        raise WarmStartError(f"{label!r}: the study store {path} holds no study yet. Give a study that ran.")
    differences = search_space_differences(spec, earlier)
    if differences:
        raise WarmStartError(
            f"{label!r} ({path}) searched another space: " + "; ".join(differences)
            + ". Warm-start only from studies over the same parameters and metrics, or remove it.")
    usable, outside = [], 0
    for trial in trials:
        if trial.status is not TrialStatus.COMPLETED or trial.objective is None \
                or not math.isfinite(trial.objective):
            continue
        try:
            spec.validate_parameters(trial.parameters)
        except StudySpecError:
            outside += 1
            continue
        usable.append(trial)
    return PriorStudy(source=label, path=path, trials=tuple(usable), outside=outside)
