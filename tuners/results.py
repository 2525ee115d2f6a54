"""Study results: CSV, Markdown, the HTML report, best overrides, PNG plots, TensorBoard HParams data and a
progress line."""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from tuners.hparams import HParamsSession
from tuners.pareto import pareto_front, run_directory, write_pareto_csv
from tuners.study import Study
from tuners.study_report import BEST_COLOUR, STATUS_COLOURS, render_html
from tuners.study_spec import Goal, ParameterType, ScaleType, Trial, TrialStatus, format_override_value

__all__ = ["PLOTS_MISSING", "preload_plotting", "progress_line", "write_results"]

_log = logging.getLogger("tuners.results")
_PNG_NAMES = ("objective.png", "parameters.png", "learning_curves.png")


def _sorted_trials(study: Study) -> list[Trial]:
    sign = study.spec.metric.goal.sign

    def key(t: Trial) -> tuple:
        has = t.objective is not None and math.isfinite(t.objective)
        # Completed trials first by objective (best first), then the rest by id.
        return (t.status is not TrialStatus.COMPLETED, not has, -sign * t.objective if has else 0.0, t.id)

    return sorted(study.trials, key=key)


def _columns(study: Study) -> list[str]:
    return [p.name for p in study.spec.all_parameters()]


#: When each trial's process started and ended (seconds since the epoch) and how long it ran.
_TIME_COLUMNS = ("started_at", "ended_at", "duration_s")


def _times(t: Trial) -> list[str]:
    start, end = t.started_at, t.ended_at
    return ["" if start is None else f"{start:.3f}", "" if end is None else f"{end:.3f}",
            "" if start is None or end is None else f"{end - start:.3f}"]


def _objective_cells(study: Study, t: Trial, fmt=repr) -> list[str]:
    """The trial's value of each study metric (one cell for a single-objective study)."""
    if not study.spec.is_multi_objective:
        return ["" if t.objective is None else fmt(t.objective)]
    return ["" if t.objectives.get(m.tag) is None else fmt(t.objectives[m.tag]) for m in study.spec.metrics]


def _write_csv(study: Study, path: Path) -> None:
    names = _columns(study)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", *names, *(m.tag for m in study.spec.metrics), "error", "log_path",
                         *_TIME_COLUMNS])
        for t in study.trials:
            writer.writerow([t.id, t.status.name, *(t.parameters.get(n, "") for n in names),
                             *_objective_cells(study, t),
                             (t.error or "").strip().replace("\n", " | "), t.log_path or "", *_times(t)])


def _pareto_markdown(study: Study) -> list[str]:
    """The Pareto set of a multi-objective study: each point's values, overrides and run directory."""
    front = pareto_front(study.trials, study.spec.metrics)
    goals = ", ".join(f"{m.goal.name.lower()} {m.tag}" for m in study.spec.metrics)
    lines = [f"## Pareto set: {len(front)} trials ({goals})", "",
             "No completed trial is better on every metric than these ([pareto.csv](pareto.csv)).", ""]
    header = ["trial", *(m.tag for m in study.spec.metrics), "overrides", "run directory"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in front:
        cells = [str(t.id), *_objective_cells(study, t, lambda v: f"{v:.6g}"), f"`{' '.join(t.overrides())}`",
                 run_directory(t)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _write_markdown(study: Study, path: Path, pngs: list[tuple[str, Path]], plots_note: str | None) -> None:
    names = _columns(study)
    spec = study.spec
    best = study.best_trial
    lines = [f"# Study: {', '.join(f'{m.goal.name.lower()} {m.tag}' for m in spec.metrics)}", "",
             progress_line(study), ""]
    if best is not None:
        lines += [f"Best trial {best.id}: `{' '.join(best.overrides())}`", ""]
    if spec.is_multi_objective:
        lines += _pareto_markdown(study)
    lines += ["Report with plots: [study.html](study.html)" + "".join(
        f" · [{name}]({name})" for name, _ in pngs), ""]
    if plots_note:
        lines += [plots_note, ""]
    lines += [f"![{name}]({name})" for name, _ in pngs] + ([""] if pngs else [])
    header = ["trial", "status", *names, *(m.tag for m in spec.metrics), "error"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in _sorted_trials(study):
        cells = [str(t.id), t.status.name, *(format_override_value(t.parameters[n]) if n in t.parameters else ""
                                             for n in names),
                 *_objective_cells(study, t, lambda v: f"{v:.6g}"),
                 ((t.error or "").strip().splitlines() or [""])[-1][:80].replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


PLOTS_MISSING = ("PNG plots not drawn: matplotlib is not installed (pip install 'tfscale[tuners]'); study.html "
                 "has the same plots.")
_DPI = 100


def _log_x_axis(ax, lo: float, hi: float) -> None:
    """A log x axis over [lo, hi] with few enough labels that they never overlap."""
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_xscale("log")
    axis = ax.xaxis
    decades = math.log10(hi) - math.log10(lo) if lo > 0 and hi > lo else 0.0
    # Under two decades matplotlib labels minor ticks too (2, 3, 4, ... x 10^k), which crowd and overlap.
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2 else (1.0,), numticks=8))
    axis.set_minor_formatter(NullFormatter())


def _parameter_figure(study: Study):
    """One panel per parameter: the metric of each trial against the parameter, on the parameter's scale."""
    import matplotlib.pyplot as plt

    spec = study.spec
    metric = spec.metric
    valued = [t for t in study.trials if t.objective is not None]
    params = spec.all_parameters()
    cols = min(3, len(params))
    rows = -(-len(params) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(params):]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, params):
        points = [(t.parameters[p.name], t.objective, t.status) for t in valued if p.name in t.parameters]
        if p.type is ParameterType.CATEGORICAL:
            labels = [str(v) for v in p.values]
            xs = [labels.index(str(v)) for v, _, _ in points]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            xs = [v for v, _, _ in points]
            lo, hi = ((min(p.values), max(p.values)) if p.type is ParameterType.DISCRETE
                      else (p.min_value, p.max_value))
            if p.scale is ScaleType.UNIT_LOG_SCALE and lo > 0:
                _log_x_axis(ax, lo, hi)
                ax.set_xlim(lo / 1.15, hi * 1.15)
            elif hi > lo:
                pad = 0.04 * (hi - lo)
                ax.set_xlim(lo - pad, hi + pad)
        colours = [STATUS_COLOURS[s] for _, _, s in points]
        ax.scatter(xs, [o for _, o, _ in points], s=28, c=colours)
        ax.set_xlabel(p.name + (" (log)" if p.scale is ScaleType.UNIT_LOG_SCALE else ""))
        ax.set_ylabel(metric.tag)
        ax.grid(alpha=0.3)
    rotated = [max(map(len, map(str, p.values))) for p in params
               if p.type is ParameterType.CATEGORICAL and max(map(len, map(str, p.values))) > 6]
    _fit(fig, rows=rows, cols=cols, rotated_chars=max(rotated, default=0))
    return fig


def _fit(fig: Any, *, rows: int = 1, cols: int = 1, rotated_chars: int = 0) -> None:
    """Fixed margins, in inches, around a figure's grid of axes.

    The axes' labels are short (tick numbers, a parameter or metric name), so fixed margins fit them; it
    draws each figure once, where ``tight_layout`` measures every label by drawing it twice more (half of
    the plots' time). ``rotated_chars``: the longest x tick label rotated 30 degrees, which needs room below.
    """
    width, height = fig.get_size_inches()
    drop = 0.05 * rotated_chars
    left, right, top, bottom = 0.95, 0.3, 0.5, 0.75 + drop
    gap_w, gap_h = 1.0, 0.8 + drop
    axis_w = (width - left - right - gap_w * (cols - 1)) / cols
    axis_h = (height - top - bottom - gap_h * (rows - 1)) / rows
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=gap_w / axis_w, hspace=gap_h / axis_h)


def preload_plotting() -> None:
    """Import matplotlib (Agg) and what the plots use, so that ``write_results(plots=True)`` only draws.

    Importing matplotlib takes most of a second; a driver calls this on a background thread while its trials
    run, and the end of the study no longer waits for it. Does nothing when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot  # noqa: F401
        import matplotlib.ticker  # noqa: F401
    except Exception:  # missing or broken: write_results says so when it draws (PLOTS_MISSING or the error)
        return


#: ``render``: runs drawing functions and returns the indices of those that did not draw (see :func:`write_results`).
Renderer = Callable[[Sequence[Callable[[], None]]], Sequence[int]]


def _render_here(draws: Sequence[Callable[[], None]]) -> Sequence[int]:
    _draw_all(draws)
    return []


def _plot(study: Study, out_dir: Path, render: Renderer | None = None) -> dict[str, Path]:
    """PNG plots (at least 1000 pixels wide) by name; empty, with a warning, when matplotlib is missing.

    ``render`` draws the figures (each function draws and saves one); by default one after the other, here.
    A figure that ``render`` reports as not drawn is drawn here."""
    try:
        import matplotlib
    except ImportError:
        _log.warning("[study] %s", PLOTS_MISSING)
        return {}
    matplotlib.use("Agg", force=True)

    metric = study.spec.metric
    curves = [(t, t.curve(metric.tag)) for t in study.trials]
    curves = [(t, c) for t, c in curves if c]
    figures = [("objective_plot", out_dir / "objective.png", lambda path: _objective_figure(study, path)),
               ("parameters_plot", out_dir / "parameters.png", lambda path: _save(_parameter_figure(study), path)),
               ("curves_plot", out_dir / "learning_curves.png", lambda path: _curves_figure(study, curves, path))]
    if not curves:
        figures.pop()
    draws = [functools.partial(draw, path) for _, path, draw in figures]
    # Two about equal halves for two cores: the parameter panels take as long as the other two figures.
    halves = [draws[1:2], draws[:1] + draws[2:]]
    for index in (render or _render_here)([functools.partial(_draw_all, half) for half in halves]):
        _draw_all(halves[index])
    return {name: path for name, path, _ in figures}


def _draw_all(draws: Sequence[Callable[[], None]]) -> None:
    for draw in draws:
        draw()


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=max(_DPI, math.ceil(1000 / fig.get_figwidth())))
    plt.close(fig)


def _objective_figure(study: Study, path: Path) -> None:
    """The objective of each trial with the best so far."""
    import matplotlib.pyplot as plt

    metric = study.spec.metric
    valued = [t for t in study.trials if t.objective is not None]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    if valued:
        pick = max if metric.goal is Goal.MAXIMIZE else min
        best, steps = None, []
        for t in valued:
            if t.status is TrialStatus.COMPLETED:
                best = t.objective if best is None else pick(best, t.objective)
                steps.append((t.id, best))
        for status in (TrialStatus.COMPLETED, TrialStatus.STOPPED):
            chosen = [t for t in valued if t.status is status]
            if chosen:
                ax.scatter([t.id for t in chosen], [t.objective for t in chosen], s=36, label=status.name.lower(),
                           color=STATUS_COLOURS[status])
        if steps:
            ax.step([i for i, _ in steps], [b for _, b in steps], where="post", label="best so far",
                    color=BEST_COLOUR, linewidth=2)
        ax.legend()
    ax.set_xlabel("trial")
    ax.set_ylabel(metric.tag)
    ax.set_title(f"{metric.goal.name.lower()} {metric.tag}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    _fit(fig)
    _save(fig, path)


def _curves_figure(study: Study, curves: list, path: Path) -> None:
    """The learning curves of all trials; stopped ones dashed and marked x."""
    import matplotlib.pyplot as plt

    metric = study.spec.metric
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for t, c in curves:
        ax.plot([s for s, _ in c], [v for _, v in c], color=STATUS_COLOURS[t.status], alpha=0.8,
                linestyle="--" if t.status is TrialStatus.STOPPED else "-")
        if t.status is TrialStatus.STOPPED:
            ax.plot([c[-1][0]], [c[-1][1]], marker="x", markersize=9, color=STATUS_COLOURS[t.status])
    ax.set_xlabel("step")
    ax.set_ylabel(metric.tag)
    ax.set_title(f"learning curves of {len(curves)} trials (dashed, x: stopped early)")
    ax.grid(alpha=0.3)
    _fit(fig)
    _save(fig, path)


def _write_hparams(study: Study, logdir: Path) -> Path:
    """HParams data for TensorBoard: a session per trial (``trial_<id>/``), written once it has finished.

    Incremental, so that it is cheap after every trial: a trial whose directory already holds its session
    (a ``*.hparams`` event file) is not written again; finished trials never change.
    """
    spec = study.spec
    logdir.mkdir(parents=True, exist_ok=True)
    for old in logdir.glob("*tfevents*"):
        old.unlink()  # an experiment summary of an older tfscale: it would hide other runs' hyperparameters
    for t in study.trials:
        if not t.status.is_finished:
            continue
        trial_dir = logdir / f"trial_{t.id}"
        if trial_dir.is_dir():
            if any(trial_dir.glob("*tfevents*.hparams")):
                continue
            for old in trial_dir.glob("*tfevents*"):
                old.unlink()
        with HParamsSession(trial_dir) as session:
            session.start(t.parameters, start_time=t.started_at or t.created_at)
            for m in t.measurements:
                session.scalars(m.metrics, step=m.step, wall_time=t.updated_at)
            values = dict(t.objectives)
            if t.objective is not None:
                values.setdefault(spec.metric.tag, t.objective)
            if values:
                last = max([m.step for m in t.measurements], default=0)
                session.scalars(values, step=last + 1, wall_time=t.updated_at)
            session.end(t.status, end_time=t.ended_at or t.updated_at)
    return logdir


def _write_html(study: Study, out: Path, links: list[tuple[str, str]]) -> Path:
    path = out / "study.html"
    text = render_html(study, out, _sorted_trials(study), progress=progress_line(study), links=links)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a browser reloading the page never reads half of it
    return path


def write_results(study: Study, out_dir: str | os.PathLike, *, plots: bool = True,
                  tensorboard: bool = True, render: Renderer | None = None) -> dict[str, Path]:
    """Write the study's results into ``out_dir`` and return their paths by name.

    Files: ``study.csv`` (one row per trial), ``study.md`` (table, best first, links to the rest),
    ``study.html`` (the report with its plots, self-contained), ``best_overrides.txt`` (the best trial's
    Hydra overrides on one line; only once a trial completed; a multi-objective study has ``pareto.csv``
    instead: its Pareto set, each point's values, overrides and run directory), with ``plots`` the PNG plots
    ``objective.png``, ``parameters.png`` and ``learning_curves.png`` (skipped with a warning when matplotlib
    is not installed), and with ``tensorboard`` HParams data in ``tensorboard/`` (``tensorboard --logdir
    <out_dir>``).

    Without ``plots`` it takes about a millisecond per trial (130 ms for 200 trials of 20 epochs): drivers
    call ``write_results(study, out_dir, plots=False)`` after every trial and with plots once at the end.
    ``render``: how the PNG plots are drawn, given one function per figure; returns the indices of those it
    did not draw, which are then drawn here (a driver draws them in parallel processes; by default they are
    drawn here, one after the other).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "study.csv", "markdown": out / "study.md", "html": out / "study.html"}
    _write_csv(study, paths["csv"])
    if study.spec.is_multi_objective:
        paths["pareto"] = out / "pareto.csv"
        write_pareto_csv(study.spec, study.trials, paths["pareto"])
    best = study.best_trial
    if best is not None:
        paths["best_overrides"] = out / "best_overrides.txt"
        paths["best_overrides"].write_text(" ".join(best.overrides()) + "\n", encoding="utf-8")
    plots_note = None
    if plots:
        try:
            drawn = _plot(study, out, render)
            plots_note = None if drawn else PLOTS_MISSING
        except Exception as exc:  # the trials ran and every other result stands: say so, do not fail the study
            drawn, plots_note = {}, f"PNG plots not drawn: {type(exc).__name__}: {exc}"
            _log.warning("[study] %s", plots_note)
        paths.update(drawn)
    pngs = [(name, out / name) for name in _PNG_NAMES if (out / name).exists()]
    _write_markdown(study, paths["markdown"], pngs, plots_note)
    _write_html(study, out, [(path.name, path.name) for name, path in paths.items()
                             if name in ("markdown", "csv", "pareto")] + [(name, name) for name, _ in pngs])
    if tensorboard:
        paths["tensorboard"] = _write_hparams(study, out / "tensorboard")
    return paths


def progress_line(study: Study) -> str:
    """One-line status, e.g. ``[study] 5/8 done · 2 running · 1 failed · best accuracy=0.973 (trial 4)``."""
    trials = study.trials
    finished = sum(t.status.is_finished for t in trials)
    running = sum(t.status is TrialStatus.ACTIVE for t in trials)
    failed = sum(t.status is TrialStatus.FAILED for t in trials)
    stopped = sum(t.status is TrialStatus.STOPPED for t in trials)
    parts = [f"[study] {finished}/{study.spec.max_trials} done", f"{running} running", f"{failed} failed"]
    if stopped:
        parts.append(f"{stopped} stopped")
    best = study.best_trial
    if best is not None:
        parts.append(f"best {study.spec.metric.tag}={best.objective:.4g} (trial {best.id})")
    if study.spec.is_multi_objective:
        front = study.pareto_trials
        if front:
            parts.append(f"Pareto set of {len(front)} (trials {', '.join(str(t.id) for t in front)})")
    return " · ".join(parts)
