"""``study.html``: a self-contained study report drawn as inline SVG (no script, no network, no matplotlib).

What it shows: the objective of every trial with the best so far, parallel coordinates of the parameters
and the objective, how much of the objective's variance each parameter explains, the learning curves of all
trials (early-stopped ones marked), the Pareto front of a study with several metrics, and the table of
trials with rounded values, each trial's overrides and a link to its run directory.

Rendering is pure string building over the study in memory (a few milliseconds for a hundred trials), so
the sweeper refreshes the page after every trial.
"""

from __future__ import annotations

import datetime
import html
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from tuners.pareto import pareto_front
from tuners.study import Study
from tuners.study_spec import Goal, MetricSpec, ParameterSpec, ParameterType, ScaleType, Trial, TrialStatus

__all__ = ["parameter_importance", "render_html", "trial_values"]

STATUS_COLOURS = {TrialStatus.COMPLETED: "#1f77b4", TrialStatus.STOPPED: "#ff7f0e",
                  TrialStatus.FAILED: "#d62728", TrialStatus.ACTIVE: "#8c8c8c"}
BEST_COLOUR = "#2ca02c"
IMPORTANCE_COLOUR = "#9467bd"
PARETO_COLOUR = "#d62728"
# viridis at five stops: worse trials dark purple, better ones yellow
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]

_W, _H = 640, 360
_MARGIN = (70, 20, 30, 52)  # left, right, top, bottom


# ----------------------------------------------------------------------------------- study vocabulary
def study_metrics(study: Study) -> list[MetricSpec]:
    """The study's metrics: one, or several in a multi-objective study."""
    return list(study.spec.metrics)


def trial_values(trial: Trial, metrics: Sequence[MetricSpec]) -> list[float | None]:
    """The trial's final value of each metric (``None`` where it has none or it is not finite), also for a
    stopped trial, whose value is its best measurement."""
    per = dict(trial.objectives)
    if len(metrics) == 1 and metrics[0].tag not in per:
        per[metrics[0].tag] = trial.objective
    raw = [per.get(m.tag) for m in metrics]
    return [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None for v in raw]


def _param_coordinate(param: ParameterSpec, value: object) -> float | None:
    """A numeric coordinate of a parameter value: log10 on log scales, the index for categories."""
    if param.type is ParameterType.CATEGORICAL:
        return float(list(param.values).index(value)) if value in param.values else None
    if not isinstance(value, (int, float)):
        return None
    if param.scale is ScaleType.UNIT_LOG_SCALE and value > 0:
        return math.log10(value)
    return float(value)


def parameter_importance(study: Study, metric: MetricSpec | None = None) -> dict[str, float]:
    """Share of the objective's variance each parameter explains on its own, from 0 to 1.

    The finished trials are grouped by the parameter (by value for categories and for up to 6 distinct
    values, else into up to 5 equal-count bins along its scale) and the between-group share of the variance
    is taken as epsilon squared, which corrects the plain ratio for the groups a few trials form by chance.
    Parameters with fewer than 3 valued trials are left out. A rough, model-free estimate: it sees main
    effects, not interactions.
    """
    metrics = study_metrics(study)
    metric = metric or metrics[0]
    index = [m.tag for m in metrics].index(metric.tag)
    out: dict[str, float] = {}
    for param in study.spec.all_parameters():
        pairs = []
        for t in study.trials:
            y = trial_values(t, metrics)[index]
            x = _param_coordinate(param, t.parameters.get(param.name)) if param.name in t.parameters else None
            if y is not None and x is not None:
                pairs.append((x, y))
        if len(pairs) < 3:
            continue
        pairs.sort()
        distinct = sorted({x for x, _ in pairs})
        if param.type is ParameterType.CATEGORICAL or (len(distinct) <= 6 and len(pairs) >= 2 * len(distinct)):
            groups = [[y for x, y in pairs if x == d] for d in distinct]
        else:
            k = max(2, min(5, len(pairs) // 3))
            groups = [[y for _, y in pairs[round(i * len(pairs) / k):round((i + 1) * len(pairs) / k)]]
                      for i in range(k)]
        groups = [g for g in groups if g]
        ys = [y for _, y in pairs]
        mean = sum(ys) / len(ys)
        total = sum((y - mean) ** 2 for y in ys)
        dof_within = len(ys) - len(groups)
        if total <= 0 or len(groups) < 2 or dof_within < 1:
            out[param.name] = 0.0
            continue
        between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups)
        within_ms = (total - between) / dof_within
        out[param.name] = max(0.0, min(1.0, (between - (len(groups) - 1) * within_ms) / (total + within_ms)))
    return out


# ---------------------------------------------------------------------------------------------- axes
def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    s = f"{v:.3g}"
    return s.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def _nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    ticks, i = [], 0
    while first + i * step <= hi + 1e-9 * span:
        ticks.append(round(first + i * step, 12))
        i += 1
    return ticks


class _Axis:
    """A value → fraction-of-axis map: linear, log10 or categorical, with readable ticks."""

    def __init__(self, lo: float, hi: float, *, log: bool = False, categories: Sequence[str] | None = None,
                 pad: float = 0.0, integer: bool = False):
        self.categories = [str(c) for c in categories] if categories is not None else None
        self.integer = integer
        if self.categories is not None:
            lo, hi, log = -0.5, len(self.categories) - 0.5, False
        self.log = bool(log) and lo > 0 and hi > 0
        a, b = self._t(lo), self._t(hi)
        if b <= a:  # a single value: centre it
            half = abs(a) * 0.1 if a else 0.5
            a, b = a - half, b + half
        a, b = a - pad * (b - a), b + pad * (b - a)
        self.a, self.b = a, b

    def _t(self, v: float) -> float:
        return math.log10(v) if self.log else float(v)

    def frac(self, v: float) -> float:
        """Where ``v`` (a category's index for categories) lies, 0 at the start of the axis, 1 at its end."""
        if self.log and v <= 0:
            return 0.0
        return (self._t(v) - self.a) / (self.b - self.a)

    def ticks(self) -> list[tuple[float, str]]:
        """``(value, label)`` pairs: few enough that labels never collide."""
        if self.categories is not None:
            stride = max(1, math.ceil(len(self.categories) / 8))
            return [(float(i), c if len(c) <= 12 else c[:11] + "…")
                    for i, c in enumerate(self.categories) if i % stride == 0]
        if not self.log:
            return [(v, _fmt(v)) for v in _nice_ticks(self.a, self.b, integer=self.integer)]
        lo, hi = 10 ** self.a, 10 ** self.b
        decades = list(range(math.ceil(self.a - 1e-9), math.floor(self.b + 1e-9) + 1))
        if len(decades) >= 2:
            stride = max(1, math.ceil(len(decades) / 7))
            return [(10.0 ** k, _fmt(10.0 ** k)) for k in decades if k % stride == 0]
        values = [m * 10.0 ** k for k in range(math.floor(self.a) - 1, math.ceil(self.b) + 1) for m in (1, 2, 5)]
        values = [v for v in values if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
        if len(values) < 2:
            values = [v for v in _nice_ticks(lo, hi, 4) if v > 0]
        return [(v, _fmt(v)) for v in values]


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _rgb(frac: float) -> str:
    """The colour of a trial ``frac`` of the way from the worst (0) to the best (1) value."""
    frac = min(1.0, max(0.0, frac))
    pos = frac * (len(_RAMP) - 1)
    i = min(int(pos), len(_RAMP) - 2)
    t = pos - i
    r, g, b = (round(a + (c - a) * t) for a, c in zip(_RAMP[i], _RAMP[i + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


class _Plot:
    """One SVG chart: a plot box with an x and a y axis; marks are added as SVG strings."""

    def __init__(self, x: _Axis, y: _Axis, xlabel: str, ylabel: str, width: int = _W, height: int = _H):
        self.x, self.y, self.width, self.height = x, y, width, height
        left, right, top, bottom = _MARGIN
        self.box = (left, top, width - right, height - bottom)
        self.marks: list[str] = []
        self.xlabel, self.ylabel = xlabel, ylabel

    def px(self, v: float) -> float:
        x0, _, x1, _ = self.box
        return round(x0 + self.x.frac(v) * (x1 - x0), 2)

    def py(self, v: float) -> float:
        _, y0, _, y1 = self.box
        return round(y1 - self.y.frac(v) * (y1 - y0), 2)

    def svg(self, legend: Sequence[tuple[str, str]] = ()) -> str:
        x0, y0, x1, y1 = self.box
        parts = [f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="#fff" stroke="#bbb"/>']
        for v, label in self.x.ticks():
            x = self.px(v)
            if x0 - 0.5 <= x <= x1 + 0.5:
                parts.append(f'<line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" class="grid"/>'
                             f'<text x="{x}" y="{y1 + 16}" text-anchor="middle">{_esc(label)}</text>')
        for v, label in self.y.ticks():
            y = self.py(v)
            if y0 - 0.5 <= y <= y1 + 0.5:
                parts.append(f'<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" class="grid"/>'
                             f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end">{_esc(label)}</text>')
        parts.append(f'<text x="{(x0 + x1) / 2}" y="{self.height - 12}" text-anchor="middle" class="label">'
                     f'{_esc(self.xlabel)}</text>')
        parts.append(f'<text transform="translate(16 {(y0 + y1) / 2}) rotate(-90)" text-anchor="middle" '
                     f'class="label">{_esc(self.ylabel)}</text>')
        parts.extend(self.marks)
        lx = x0
        for colour, text in legend:  # above the plot box, clear of the marks
            parts.append(f'<rect x="{lx}" y="{y0 - 20}" width="10" height="10" fill="{colour}"/>'
                         f'<text x="{lx + 14}" y="{y0 - 11}">{_esc(text)}</text>')
            lx += 24 + 7 * len(text)
        return _svg(self.width, self.height, "".join(parts))


def _svg(width: int, height: int, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}">{body}</svg>')


def _message(text: str) -> str:
    return f'<p class="empty">{_esc(text)}</p>'


def _circle(x: float, y: float, colour: str, title: str, r: float = 4.5, hollow: bool = False) -> str:
    fill = "#fff" if hollow else colour
    return (f'<circle cx="{x}" cy="{y}" r="{r}" fill="{fill}" stroke="{colour}" stroke-width="1.5">'
            f'<title>{_esc(title)}</title></circle>')


def _cross(x: float, y: float, colour: str, title: str, r: float = 5.0) -> str:
    return (f'<path d="M{x - r} {y - r}L{x + r} {y + r}M{x - r} {y + r}L{x + r} {y - r}" stroke="{colour}" '
            f'stroke-width="2.5"><title>{_esc(title)}</title></path>')


def _span(values: Sequence[float]) -> tuple[float, float]:
    return min(values), max(values)


def _is_log(param: ParameterSpec) -> bool:
    return param.type in (ParameterType.DOUBLE, ParameterType.INTEGER) and param.scale is ScaleType.UNIT_LOG_SCALE


def _last_line(text: str | None) -> str:
    return ((text or "").strip().splitlines() or [""])[-1]


def _describe(trial: Trial, metrics: Sequence[MetricSpec]) -> str:
    values = trial_values(trial, metrics)
    shown = ", ".join(f"{m.tag}={_fmt(v)}" for m, v in zip(metrics, values) if v is not None)
    params = " ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in trial.parameters.items())
    return f"trial {trial.id} {trial.status.name.lower()}: {shown} {params}".strip()


# -------------------------------------------------------------------------------------------- charts
def _objective_chart(study: Study, metrics: Sequence[MetricSpec], index: int) -> str:
    metric = metrics[index]
    valued = [(t, trial_values(t, metrics)[index]) for t in study.trials]
    valued = [(t, v) for t, v in valued if v is not None]
    if not valued:
        return _message(f"No trial has reported {metric.tag} yet.")
    ids = [t.id for t in study.trials]
    lo, hi = _span([v for _, v in valued])
    plot = _Plot(_Axis(min(ids) - 0.5, max(ids) + 0.5, integer=True), _Axis(lo, hi, pad=0.08), "trial",
                 f"{metric.tag} ({metric.goal.name.lower()})")
    best, steps = None, []
    pick = max if metric.goal is Goal.MAXIMIZE else min
    for t, v in sorted(valued, key=lambda tv: tv[0].id):
        if t.status is TrialStatus.COMPLETED:
            best = v if best is None else pick(best, v)
            steps.append((t.id, best))
    if steps:
        points = [f"{plot.px(steps[0][0])},{plot.py(steps[0][1])}"]
        for (_, prev), (tid, value) in zip(steps, steps[1:]):
            points += [f"{plot.px(tid)},{plot.py(prev)}", f"{plot.px(tid)},{plot.py(value)}"]
        points.append(f"{plot.px(max(ids) + 0.5)},{plot.py(steps[-1][1])}")
        plot.marks.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{BEST_COLOUR}" '
                          f'stroke-width="2.5"/>')
    for t, v in valued:
        plot.marks.append(_circle(plot.px(t.id), plot.py(v), STATUS_COLOURS[t.status], _describe(t, metrics),
                                  hollow=t.status is TrialStatus.STOPPED))
    _, _, _, y1 = plot.box
    for t in study.trials:
        if t.status is TrialStatus.FAILED:
            plot.marks.append(_cross(plot.px(t.id), y1 - 7, STATUS_COLOURS[TrialStatus.FAILED],
                                     f"trial {t.id} failed: {_last_line(t.error)}"))
    legend = [(STATUS_COLOURS[TrialStatus.COMPLETED], "completed"), (BEST_COLOUR, "best so far")]
    if any(t.status is TrialStatus.STOPPED for t, _ in valued):
        legend.append((STATUS_COLOURS[TrialStatus.STOPPED], "stopped early"))
    if any(t.status is TrialStatus.FAILED for t in study.trials):
        legend.append((STATUS_COLOURS[TrialStatus.FAILED], "failed"))
    return plot.svg(legend)


def _parallel_chart(study: Study, metrics: Sequence[MetricSpec]) -> str:
    params = study.spec.all_parameters()
    rows = [(t, trial_values(t, metrics)) for t in study.trials]
    rows = [(t, vs) for t, vs in rows if vs[0] is not None]
    if not rows:
        return _message("No trial has a value yet.")
    axes: list[tuple[str, _Axis, Callable[[Trial, list], float | None]]] = []
    for p in params:
        if p.type is ParameterType.CATEGORICAL:
            axis = _Axis(0, 0, categories=[str(v) for v in p.values])
            get = (lambda q: lambda t, _: float(list(q.values).index(t.parameters[q.name]))
                   if t.parameters.get(q.name) in q.values else None)(p)
        else:
            lo, hi = ((min(p.values), max(p.values)) if p.type is ParameterType.DISCRETE
                      else (p.min_value, p.max_value))
            axis = _Axis(lo, hi, log=_is_log(p), integer=p.type is ParameterType.INTEGER)
            get = (lambda q: lambda t, _: float(t.parameters[q.name])
                   if isinstance(t.parameters.get(q.name), (int, float)) else None)(p)
        axes.append((p.name, axis, get))
    for i, m in enumerate(metrics):
        values = [vs[i] for _, vs in rows if vs[i] is not None]
        if values:
            axes.append((m.tag, _Axis(*_span(values), pad=0.04), (lambda j: lambda _, vs: vs[j])(i)))
    width = max(1300, 130 * len(axes) + 80)
    height, top, bottom = 380, 44, 330
    xs = [60 + i * (width - 120) / max(1, len(axes) - 1) for i in range(len(axes))]
    primary = [vs[0] for _, vs in rows]
    lo, hi = _span(primary)
    sign = metrics[0].goal.sign
    parts = []
    best = max(rows, key=lambda r: sign * r[1][0])[0]
    for t, vs in sorted(rows, key=lambda r: sign * r[1][0]):  # best drawn last, on top
        frac = 0.5 if hi == lo else (vs[0] - lo) / (hi - lo)
        frac = frac if sign > 0 else 1 - frac
        # An inactive conditional parameter has no value: the line passes its axis by.
        points = [f"{round(x, 1)},{round(bottom - axis.frac(v) * (bottom - top), 1)}"
                  for x, (_, axis, get) in zip(xs, axes) if (v := get(t, vs)) is not None]
        dash = ' stroke-dasharray="5 3"' if t.status is TrialStatus.STOPPED else ""
        width_px = 3.5 if t is best else 1.8
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{_rgb(frac)}" '
                     f'stroke-width="{width_px}" stroke-opacity="0.85"{dash}><title>'
                     f'{_esc(_describe(t, metrics))}</title></polyline>')
    for n, (x, (name, axis, _)) in enumerate(zip(xs, axes)):
        side, anchor = (6, "start") if n == len(axes) - 1 else (-6, "end")  # the last axis labels outwards
        parts.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#333"/>')
        parts.append(f'<text x="{x}" y="{top - 22}" text-anchor="middle" class="label">{_esc(name)}</text>')
        if axis.log:
            parts.append(f'<text x="{x}" y="{top - 9}" text-anchor="middle" class="note">log scale</text>')
        for v, label in axis.ticks():
            frac = axis.frac(v)
            if -0.001 <= frac <= 1.001:
                y = round(bottom - frac * (bottom - top), 1)
                parts.append(f'<line x1="{x - 3}" y1="{y}" x2="{x + 3}" y2="{y}" stroke="#333"/>'
                             f'<text x="{x + side}" y="{y + 4}" text-anchor="{anchor}" class="tick halo">'
                             f'{_esc(label)}</text>')
    worse, better = ("lower", "higher") if sign > 0 else ("higher", "lower")
    parts.append(f'<text x="60" y="{height - 14}" class="note">colour: {_esc(metrics[0].tag)} from '
                 f'{worse} (purple) to {better} (yellow); dashed: stopped early; thick: best trial; a line '
                 f'passes the axis of a parameter its trial did not use</text>')
    return _svg(width, height, "".join(parts))


def _importance_chart(study: Study, metrics: Sequence[MetricSpec]) -> str:
    scores = parameter_importance(study, metrics[0])
    if not scores:
        return _message("Parameter importance needs at least 3 trials with a value.")
    names = sorted(scores, key=lambda n: -scores[n])
    height = 64 + 30 * len(names)
    left, right = 170, _W - 60
    parts = []
    for i, name in enumerate(names):
        y = 20 + 30 * i
        w = max(1.0, scores[name] * (right - left))
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{_esc(name)}</text>'
                     f'<rect x="{left}" y="{y}" width="{round(w, 1)}" height="20" fill="{IMPORTANCE_COLOUR}">'
                     f'<title>{_esc(name)}: {scores[name]:.2f}</title></rect>'
                     f'<text x="{left + w + 6}" y="{y + 15}">{scores[name]:.2f}</text>')
    bottom = 20 + 30 * len(names)
    parts.append(f'<line x1="{left}" y1="14" x2="{left}" y2="{bottom}" stroke="#333"/>')
    parts.append(f'<text x="{left}" y="{bottom + 20}" class="note">share of the variance of '
                 f'{_esc(metrics[0].tag)} each parameter explains alone</text>'
                 f'<text x="{left}" y="{bottom + 34}" class="note">(0 to 1, binned; main effects only)</text>')
    return _svg(_W, height, "".join(parts))


def _curves_chart(study: Study, metric: MetricSpec) -> str:
    curves = [(t, t.curve(metric.tag)) for t in study.trials]
    curves = [(t, [(s, v) for s, v in c if math.isfinite(v)]) for t, c in curves]
    curves = [(t, c) for t, c in curves if c]
    if not curves:
        return _message(f"No trial has reported {metric.tag} per step yet.")
    steps = [s for _, c in curves for s, _ in c]
    values = [v for _, c in curves for _, v in c]
    plot = _Plot(_Axis(*_span(steps), integer=True, pad=0.02), _Axis(*_span(values), pad=0.06), "step",
                 metric.tag)
    best = study.best_trial
    order = sorted(curves, key=lambda tc: (tc[0] is best, tc[0].status is TrialStatus.STOPPED))
    for t, c in order:
        colour = STATUS_COLOURS[t.status]
        points = " ".join(f"{plot.px(s)},{plot.py(v)}" for s, v in c)
        dash = ' stroke-dasharray="6 3"' if t.status is TrialStatus.STOPPED else ""
        stroke = 3.0 if t is best else 1.6
        plot.marks.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{stroke}" '
                          f'stroke-opacity="0.85"{dash}><title>{_esc(_describe(t, study_metrics(study)))}'
                          f'</title></polyline>')
        if len(c) == 1:
            plot.marks.append(_circle(plot.px(c[0][0]), plot.py(c[0][1]), colour, f"trial {t.id}", r=3))
        if t.status is TrialStatus.STOPPED:
            plot.marks.append(_cross(plot.px(c[-1][0]), plot.py(c[-1][1]), colour,
                                     f"trial {t.id} stopped early at step {c[-1][0]}"))
    present = {t.status for t, _ in curves}
    legend = [(STATUS_COLOURS[s], label) for s, label in (
        (TrialStatus.COMPLETED, "completed"), (TrialStatus.STOPPED, "stopped early (×)"),
        (TrialStatus.FAILED, "failed"), (TrialStatus.ACTIVE, "running")) if s in present]
    return plot.svg(legend)


def _pareto_charts(study: Study, metrics: Sequence[MetricSpec]) -> str:
    rows = [(t, trial_values(t, metrics)) for t in study.trials if t.status is TrialStatus.COMPLETED]
    rows = [(t, vs) for t, vs in rows if all(v is not None for v in vs)]
    if len(rows) < 2:
        return _message("The Pareto front needs at least 2 completed trials.")
    on_front = {t.id for t in pareto_front(study.trials, metrics)}
    front = {k for k, (t, _) in enumerate(rows) if t.id in on_front}
    out = []
    pairs = [(0, j) for j in range(1, len(metrics))] + [(1, 2)] * (len(metrics) == 3)
    for i, j in pairs[:3]:
        mi, mj = metrics[i], metrics[j]
        plot = _Plot(_Axis(*_span([vs[i] for _, vs in rows]), pad=0.08),
                     _Axis(*_span([vs[j] for _, vs in rows]), pad=0.08),
                     f"{mi.tag} ({mi.goal.name.lower()})", f"{mj.tag} ({mj.goal.name.lower()})")
        on = sorted((vs[i], vs[j]) for k, (_, vs) in enumerate(rows) if k in front)
        if len(metrics) == 2 and len(on) > 1:  # the front as a staircase between its points
            points = [f"{plot.px(on[0][0])},{plot.py(on[0][1])}"]
            for (px, py), (x, y) in zip(on, on[1:]):
                # the edge of the region the front dominates: it turns where the x metric stops helping
                corner = (px, y) if mi.goal is Goal.MAXIMIZE else (x, py)
                points += [f"{plot.px(corner[0])},{plot.py(corner[1])}", f"{plot.px(x)},{plot.py(y)}"]
            plot.marks.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{PARETO_COLOUR}" '
                              f'stroke-width="1.5" stroke-dasharray="4 3"/>')
        for k, (t, vs) in enumerate(rows):
            colour = PARETO_COLOUR if k in front else STATUS_COLOURS[TrialStatus.COMPLETED]
            plot.marks.append(_circle(plot.px(vs[i]), plot.py(vs[j]), colour, _describe(t, metrics),
                                      r=5.5 if k in front else 4))
        out.append(plot.svg([(PARETO_COLOUR, "Pareto-optimal"),
                             (STATUS_COLOURS[TrialStatus.COMPLETED], "dominated")]))
    return "".join(out)


# --------------------------------------------------------------------------------------------- table
def _cell(value: object) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    return str(value)


def _run_link(trial: Trial, out_dir: Path) -> str:
    if not trial.log_path:
        return ""
    if "://" in trial.log_path:  # a bucket: nothing a browser opens from this page
        return _esc(trial.log_path)
    path = Path(trial.log_path) if Path(trial.log_path).is_absolute() else out_dir / trial.log_path
    run_dir = path if path.is_dir() or not path.suffix else path.parent
    rel = os.path.relpath(run_dir, out_dir)
    link = f'<a href="{_esc(quote(rel))}/">{_esc(rel)}</a>'
    if path != run_dir:
        link += f' (<a href="{_esc(quote(os.path.relpath(path, out_dir)))}">{_esc(path.name)}</a>)'
    return link


def _table(study: Study, trials: Sequence[Trial], metrics: Sequence[MetricSpec], out_dir: Path,
           front: set[int]) -> str:
    names = [p.name for p in study.spec.all_parameters()]
    head = ["trial", "status", *names, *(m.tag for m in metrics)]
    if len(metrics) > 1:
        head.append("Pareto")
    head += ["steps", "seconds", "overrides", "run directory", "error"]
    rows = ["<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    best = study.best_trial
    for t in trials:
        values = trial_values(t, metrics)
        cells = [str(t.id), f'<span class="s-{t.status.name.lower()}">{t.status.name.lower()}</span>',
                 *(_esc(_cell(t.parameters[n])) if n in t.parameters else "" for n in names),
                 *("" if v is None else _esc(_cell(v)) for v in values)]
        if len(metrics) > 1:
            cells.append("★" if t.id in front else "")
        seconds = None
        if t.status.is_finished:
            start, end = t.started_at, t.ended_at
            seconds = end - start if start is not None and end is not None else t.updated_at - t.created_at
        cells += [str(len(t.measurements)), "" if seconds is None else f"{seconds:.1f}",
                  f"<code>{_esc(' '.join(t.overrides()))}</code>", _run_link(t, out_dir),
                  _esc(_last_line(t.error)[:160])]
        cls = ' class="best"' if best is not None and t.id == best.id else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table>{"".join(rows)}</table>'


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:24px;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:0 0 8px}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.chart{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:0}
.chart.wide{flex-basis:100%}.chart.wide svg.plot{width:100%}
svg.plot{max-width:100%;height:auto;display:block;font-size:12px}
svg .grid{stroke:#eee}svg .label{font-size:13px;fill:#222}svg .note{font-size:11px;fill:#666}
svg .tick{font-size:11px}svg .halo{paint-order:stroke;stroke:#fff;stroke-width:3px}svg text{fill:#333}
.empty{color:#777;font-style:italic;margin:24px 8px}
table{border-collapse:collapse;background:#fff;margin-top:16px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr.best td{background:#eef8ee}code{font-size:12px}
.s-completed{color:#1f77b4}.s-stopped{color:#c85a00}.s-failed{color:#d62728}.s-active{color:#666}
.meta{color:#555}
"""


def render_html(study: Study, out_dir: str | os.PathLike, trials: Sequence[Trial], *, progress: str,
                links: Sequence[tuple[str, str]] = ()) -> str:
    """The page for ``study``: ``trials`` in table order, ``progress`` as its status line and ``links``
    (``(text, relative href)``) to the other result files."""
    out = Path(out_dir)
    metrics = study_metrics(study)
    spec = study.spec
    title = " · ".join(f"{m.goal.name.lower()} {m.tag}" for m in metrics)
    best = study.best_trial
    front = {t.id for t in pareto_front(study.trials, metrics)} if len(metrics) > 1 else set()
    charts = []
    for i, m in enumerate(metrics):
        charts.append(("objective" if i == 0 else f"objective-{i}", f"{m.tag} per trial",
                       _objective_chart(study, metrics, i), False))
    if len(metrics) > 1:
        charts.append(("pareto", "Pareto front", _pareto_charts(study, metrics), False))
    charts.append(("importance", "Parameter importance", _importance_chart(study, metrics), False))
    for i, m in enumerate(metrics):  # a metric only known at the end (a model's size) has no curves
        if i == 0 or any(t.curve(m.tag) for t in study.trials):
            charts.append(("curves" if i == 0 else f"curves-{i}", f"Learning curves: {m.tag}",
                           _curves_chart(study, m), False))
    charts.append(("parallel", "Parallel coordinates", _parallel_chart(study, metrics), True))
    live = any(t.status is TrialStatus.ACTIVE for t in study.trials)
    head = [f"<h1>Study: {_esc(title)}</h1>", f'<p class="meta">{_esc(progress)}</p>']
    if best is not None:
        head.append(f"<p>Best trial {best.id}: <code>{_esc(' '.join(best.overrides()))}</code></p>")
    if front:
        head.append(f"<p>Pareto set: trials {', '.join(str(i) for i in sorted(front))}</p>")
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    meta = [f"{spec.max_trials} trials", f"{spec.max_parallel_trials} in parallel",
            spec.algorithm.resolved().name,
            f"updated {stamp}"]
    if live:
        meta.append("this page reloads every 15 s while trials run")
    head.append(f'<p class="meta">{_esc(" · ".join(meta))}'
                + "".join(f' · <a href="{_esc(quote(href))}">{_esc(text)}</a>' for text, href in links) + "</p>")
    body = "".join(f'<figure class="chart{" wide" if wide else ""}" id="{cid}"><h2>{_esc(name)}</h2>{svg}</figure>'
                   for cid, name, svg, wide in charts)
    refresh = '<meta http-equiv="refresh" content="15">' if live else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f"<title>Study: {_esc(title)}</title><style>{_CSS}</style></head><body>"
            f'<header>{"".join(head)}</header><div class="charts">{body}</div>'
            f"{_table(study, trials, metrics, out, front)}</body></html>\n")
