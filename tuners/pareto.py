"""Pareto dominance over a study's metrics: the non-dominated trials of a multi-objective study, the
non-dominated sorting and crowding distance NSGA-II ranks by, a two-objective hypervolume, and the Pareto table.

Every function works on *maximised* values: each metric's value times its goal's sign, so that larger is
better on every axis. A point dominates another when it is at least as good on every metric and better on
one; trials with equal values do not dominate each other, so both stay in the front.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

import numpy as np

from tuners.study_spec import MetricSpec, StudySpec, Trial, TrialStatus, format_override_value

__all__ = [
    "crowding_distance",
    "dominates",
    "hypervolume",
    "maximised",
    "metric_values",
    "non_dominated_sort",
    "pareto_front",
    "pareto_lines",
    "run_directory",
    "write_pareto_csv",
]


def metric_values(trial: Trial, metrics: Sequence[MetricSpec]) -> dict[str, float] | None:
    """The trial's final value of every metric by tag, or None when one is missing or not finite.

    A trial recorded before the study had per-metric values (or by a driver that reports only ``objective``)
    still answers for a single-metric study.
    """
    values = dict(trial.objectives)
    if len(metrics) == 1 and metrics[0].tag not in values and trial.objective is not None:
        values[metrics[0].tag] = trial.objective
    out = {}
    for metric in metrics:
        value = values.get(metric.tag)
        if value is None or not math.isfinite(float(value)):
            return None
        out[metric.tag] = float(value)
    return out


def maximised(trials: Sequence[Trial], metrics: Sequence[MetricSpec]) -> np.ndarray:
    """An ``(n_trials, n_metrics)`` array of sign-adjusted values; every trial must have all of them."""
    rows = []
    for trial in trials:
        values = metric_values(trial, metrics)
        if values is None:
            raise ValueError(f"trial {trial.id} has no finite value of every metric "
                             f"{[m.tag for m in metrics]}: {trial.objectives or trial.objective!r}")
        rows.append([m.goal.sign * values[m.tag] for m in metrics])
    return np.array(rows, dtype=float).reshape(len(rows), len(metrics))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether maximised point ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(a >= b) and np.any(a > b))


def non_dominated_sort(points: np.ndarray) -> list[list[int]]:
    """Row indices of ``points`` (maximised) grouped in fronts: the first front dominated by no point, the
    second by none outside the first, and so on (NSGA-II's fast non-dominated sort)."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    if n == 0:
        return []
    at_least = np.all(points[:, None, :] >= points[None, :, :], axis=-1)
    better = np.any(points[:, None, :] > points[None, :, :], axis=-1)
    dominated_by = (at_least & better).T  # [i, j]: j dominates i
    remaining = np.ones(n, dtype=bool)
    fronts: list[list[int]] = []
    while remaining.any():
        front = np.flatnonzero(remaining & ~np.any(dominated_by[:, remaining], axis=1))
        fronts.append([int(i) for i in front])
        remaining[front] = False
    return fronts


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within its front: the extremes of every metric get
    infinity, the others the sum over metrics of the gap between their neighbours (as a fraction of the
    metric's range). Larger means less crowded."""
    points = np.asarray(points, dtype=float)
    n, m = points.shape if points.ndim == 2 else (len(points), 0)
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(points[:, k], kind="stable")
        column = points[order, k]
        span = column[-1] - column[0]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def pareto_front(trials: Sequence[Trial], metrics: Sequence[MetricSpec]) -> list[Trial]:
    """The COMPLETED trials no other completed trial dominates, best first on the first metric (then id)."""
    done = [t for t in trials if t.status is TrialStatus.COMPLETED and metric_values(t, metrics) is not None]
    if not done:
        return []
    points = maximised(done, metrics)
    front = [done[i] for i in non_dominated_sort(points)[0]]
    first = metrics[0]
    return sorted(front, key=lambda t: (-first.goal.sign * metric_values(t, metrics)[first.tag], t.id))


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """Area dominated by two-objective maximised ``points`` and bounded below by ``reference`` (larger is
    a better front); points not above the reference on both axes add nothing."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (2,):
        raise ValueError(f"hypervolume is computed for two objectives, but got reference={list(ref)}.")
    points = points[np.all(points > ref, axis=1)]
    area, height = 0.0, ref[1]
    for x, y in sorted(points.tolist(), key=lambda p: -p[0]):  # sweep from the largest first objective down
        if y > height:
            area += (x - ref[0]) * (y - height)
            height = y
    return float(area)


def _cell(value: float) -> str:
    return f"{value:.6g}"


def run_directory(trial: Trial) -> str:
    """The trial's run directory: its ``log_path`` is that directory or a ``.log`` file inside it."""
    if not trial.log_path:
        return ""
    return os.path.dirname(trial.log_path) if trial.log_path.endswith(".log") else trial.log_path


def pareto_lines(spec: StudySpec, trials: Sequence[Trial]) -> list[str]:
    """Printable lines: the Pareto set's size, then one line per point with its values and overrides."""
    front = pareto_front(trials, spec.metrics)
    goals = ", ".join(f"{m.goal.name.lower()} {m.tag}" for m in spec.metrics)
    lines = [f"[study] Pareto set ({goals}): {len(front)} trial{'s' if len(front) != 1 else ''}"]
    for t in front:
        values = metric_values(t, spec.metrics)
        shown = "  ".join(f"{tag}={_cell(v)}" for tag, v in values.items())
        lines.append(f"[study]   trial {t.id}: {shown}  {' '.join(t.overrides())}"
                     + (f"  ({run_directory(t)})" if t.log_path else ""))
    return lines


def write_pareto_csv(spec: StudySpec, trials: Sequence[Trial], path: str | os.PathLike) -> list[Trial]:
    """Write the Pareto set to ``path``: one row per point with its metric values, parameters, Hydra
    overrides and run directory. Returns the points written."""
    front = pareto_front(trials, spec.metrics)
    names = [p.name for p in spec.all_parameters()]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", *(m.tag for m in spec.metrics), *names, "overrides", "run_dir"])
        for t in front:
            values = metric_values(t, spec.metrics)
            writer.writerow([t.id, *(repr(values[m.tag]) for m in spec.metrics),
                             *(format_override_value(t.parameters[n]) if n in t.parameters else "" for n in names),
                             " ".join(t.overrides()), run_directory(t)])
    return front
