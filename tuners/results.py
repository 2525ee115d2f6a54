"""Study results: CSV, Markdown, best overrides, plots, TensorBoard HParams data and a progress line."""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

from tuners.study import Study
from tuners.study_spec import Goal, ParameterType, Trial, TrialStatus, format_override_value

__all__ = ["progress_line", "write_results"]


def _sorted_trials(study: Study) -> list[Trial]:
    sign = study.spec.metric.goal.sign

    def key(t: Trial) -> tuple:
        has = t.objective is not None and math.isfinite(t.objective)
        # Completed trials first by objective (best first), then the rest by id.
        return (t.status is not TrialStatus.COMPLETED, not has, -sign * t.objective if has else 0.0, t.id)

    return sorted(study.trials, key=key)


def _columns(study: Study) -> list[str]:
    return [p.name for p in study.spec.all_parameters()]


def _write_csv(study: Study, path: Path) -> None:
    names = _columns(study)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", *names, study.spec.metric.tag, "error", "log_path"])
        for t in study.trials:
            writer.writerow([t.id, t.status.name, *(t.parameters.get(n, "") for n in names),
                             "" if t.objective is None else repr(t.objective),
                             (t.error or "").strip().replace("\n", " | "), t.log_path or ""])


def _write_markdown(study: Study, path: Path) -> None:
    names = _columns(study)
    spec = study.spec
    best = study.best_trial
    lines = [f"# Study: {spec.metric.goal.name.lower()} {spec.metric.tag}", "",
             progress_line(study), ""]
    if best is not None:
        lines += [f"Best trial {best.id}: `{' '.join(best.overrides())}`", ""]
    header = ["trial", "status", *names, spec.metric.tag, "error"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in _sorted_trials(study):
        cells = [str(t.id), t.status.name, *(format_override_value(t.parameters[n]) if n in t.parameters else ""
                                             for n in names),
                 "" if t.objective is None else f"{t.objective:.6g}",
                 ((t.error or "").strip().splitlines() or [""])[-1][:80].replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _plot(study: Study, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    spec = study.spec
    done = [t for t in study.trials if t.objective is not None]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    if done:
        ids = [t.id for t in done]
        values = [t.objective for t in done]
        pick = max if spec.metric.goal is Goal.MAXIMIZE else min
        best_so_far = [pick(values[: i + 1]) for i in range(len(values))]
        ax.scatter(ids, values, label="trial", color="tab:blue")
        ax.step(ids, best_so_far, where="post", label="best so far", color="tab:orange")
        ax.legend()
    ax.set_xlabel("trial")
    ax.set_ylabel(spec.metric.tag)
    ax.set_title(f"{spec.metric.goal.name.lower()} {spec.metric.tag}")
    fig.tight_layout()
    paths.append(out_dir / "objective.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    params = study.spec.all_parameters()
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3), squeeze=False)
    for ax, p in zip(axes[0], params):
        points = [(t.parameters[p.name], t.objective) for t in done if p.name in t.parameters]
        if p.type is ParameterType.CATEGORICAL:
            labels = list(p.values)
            xs = [labels.index(v) for v, _ in points]
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        else:
            xs = [v for v, _ in points]
            if p.scale.name == "UNIT_LOG_SCALE":
                ax.set_xscale("log")
        ax.scatter(xs, [o for _, o in points], s=14)
        ax.set_xlabel(p.name)
        ax.set_ylabel(spec.metric.tag)
    fig.tight_layout()
    paths.append(out_dir / "parameters.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


def _write_hparams(study: Study, logdir: Path) -> Path:
    """HParams plugin data (the protos ``hparams.summary`` would build, without importing TensorFlow)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    from tuners.metrics import EventWriter

    def summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
        value = summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data),
                                          tensor=metadata.NULL_TENSOR)
        return summary_pb2.Summary(value=[value])

    spec = study.spec
    infos = []
    for p in spec.all_parameters():
        info = api_pb2.HParamInfo(name=p.name)
        if p.type is ParameterType.CATEGORICAL:
            info.type = api_pb2.DATA_TYPE_STRING
            info.domain_discrete.extend(p.values)
        elif p.type is ParameterType.DISCRETE:
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_discrete.extend([float(v) for v in p.values])
        else:
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_interval.min_value = float(p.min_value)
            info.domain_interval.max_value = float(p.max_value)
        infos.append(info)
    experiment = api_pb2.Experiment(
        name=f"{spec.metric.goal.name.lower()} {spec.metric.tag}", hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=spec.metric.tag))])
    logdir.mkdir(parents=True, exist_ok=True)
    for old in logdir.rglob("*tfevents*"):
        old.unlink()  # rewriting the whole study each time keeps TensorBoard from showing stale copies
    writer = EventWriter(str(logdir))
    writer.add_event(event_pb2.Event(wall_time=time.time(), summary=summary(
        metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(version=0, experiment=experiment))))
    writer.close()
    statuses = {TrialStatus.COMPLETED: api_pb2.STATUS_SUCCESS, TrialStatus.FAILED: api_pb2.STATUS_FAILURE,
                TrialStatus.STOPPED: api_pb2.STATUS_UNKNOWN, TrialStatus.ACTIVE: api_pb2.STATUS_RUNNING}
    for t in study.trials:
        start = plugin_data_pb2.SessionStartInfo(group_name=f"trial_{t.id}", start_time_secs=t.created_at)
        for name, value in t.parameters.items():
            if isinstance(value, str):
                start.hparams[name].string_value = value
            else:
                start.hparams[name].number_value = float(value)
        writer = EventWriter(str(logdir / f"trial_{t.id}"))
        writer.add_event(event_pb2.Event(wall_time=t.created_at, summary=summary(
            metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(version=0, session_start_info=start))))
        for m in t.measurements:
            writer.add_event(event_pb2.Event(wall_time=t.updated_at, step=m.step, summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in m.metrics.items()])))
        if t.objective is not None:
            last = max([m.step for m in t.measurements], default=0)
            writer.add_event(event_pb2.Event(wall_time=t.updated_at, step=last + 1, summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=spec.metric.tag, simple_value=t.objective)])))
        if t.status.is_finished:
            end = plugin_data_pb2.SessionEndInfo(status=statuses[t.status], end_time_secs=t.updated_at)
            writer.add_event(event_pb2.Event(wall_time=t.updated_at, summary=summary(
                metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(version=0, session_end_info=end))))
        writer.close()
    return logdir


def write_results(study: Study, out_dir: str | os.PathLike, *, plots: bool = True,
                  tensorboard: bool = True) -> dict[str, Path]:
    """Write the study's results into ``out_dir`` and return their paths by name.

    Files: ``study.csv`` (one row per trial), ``study.md`` (table, best first), ``best_overrides.txt`` (the
    best trial's Hydra overrides on one line; only once a trial completed), ``objective.png`` and
    ``parameters.png``, and ``tensorboard/`` with HParams data (``tensorboard --logdir <out_dir>``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "study.csv", "markdown": out / "study.md"}
    _write_csv(study, paths["csv"])
    _write_markdown(study, paths["markdown"])
    best = study.best_trial
    if best is not None:
        paths["best_overrides"] = out / "best_overrides.txt"
        paths["best_overrides"].write_text(" ".join(best.overrides()) + "\n", encoding="utf-8")
    if plots:
        paths["objective_plot"], paths["parameters_plot"] = _plot(study, out)
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
    return " · ".join(parts)
