"""Reading a finished trial's objectives: the value of each study metric, by its tag.

A tag is looked up in this order:

1. the trial's return value (``metrics.json``): ``validation.accuracy``-style paths and top-level keys
   as is; ``accuracy``/``epoch_accuracy``/``val_accuracy``/``validation/epoch_accuracy`` →
   ``validation.accuracy`` (``test.accuracy`` when the run has no validation split); ``test_accuracy`` →
   ``test.accuracy``; ``train/epoch_loss`` → ``train.loss``. The validation split is the default because
   the test split must stay unseen by the search. The quantization stage's report is there too:
   ``quantization.quantized.accuracy``, ``quantization.quantized.tflite_bytes``,
   ``quantization.quantized.latency_ms``, ``quantization.size_ratio`` ...; a study may read the converted
   model's accuracy only when it was measured on the validation split (``quantization.evaluation_split``);
2. the TensorBoard event files under the trial's directory (:func:`tuners.read_tb_scalar`, last value);
3. the trial's ``report_metric`` lines (last value of the tag).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from tuners.metrics import flat_metrics, metric_paths, metric_value

from orchestrator.errors import ConfigError
from orchestrator.launch.trial_channel import TrialChannel

# Values of the quantization report computed from the evaluation split's labels.
_LABELLED = ("accuracy", "agreement", "accuracy_drop")


def objective_from_metrics(metrics: Any, tag: str) -> Optional[float]:
    """The value of ``tag`` in a trial's return value, or None."""
    return metric_value(metrics, tag)[1]


def epoch_key(tag: str) -> Optional[str]:
    """The ``epochs.jsonl`` key carrying ``tag`` per epoch (Keras history names), or None."""
    for key in metric_paths(tag):
        split, _, name = key.rpartition(".")
        if split == "validation":
            return f"val_{name}"
        if split == "train":
            return name
    return None


def objective_from_files(channel: TrialChannel, tag: str) -> Optional[float]:
    """The last value of ``tag`` in the trial's TensorBoard event files, else in its reported metrics."""
    from tuners import read_tb_scalar

    try:
        values = read_tb_scalar(_tb_dir(channel.dir), tag)
    except ValueError as exc:  # the bare tag is in several event directories
        raise ConfigError("study.metric.tag", tag, str(exc)) from None
    if values:
        return float(values[-1][1])
    reported = channel.reported_metrics(tag)
    return float(reported[-1]["value"]) if reported else None


def _tb_dir(job_dir: Path) -> Path:
    # tfscale runs log to <run dir>/tensorboard/{train,validation}; tags are relative to it.
    return job_dir / "tensorboard" if (job_dir / "tensorboard").is_dir() else job_dir


def tags_found(metrics: Any, channel: TrialChannel) -> List[str]:
    """Every metric name a trial reported: return value paths, TensorBoard tags, report_metric tags."""
    from tuners import list_tb_tags

    found = sorted(flat_metrics(metrics)) if isinstance(metrics, Mapping) else []
    found = [k for k in found if not k.startswith("history.")]
    found += list_tb_tags(_tb_dir(channel.dir)) if channel.dir.exists() else []
    found += sorted({r.get("tag") for r in channel.reported_metrics()} - {None})
    return found


def _check_unseen_test_split(metrics: Mapping[str, Any], tag: str, key: str) -> None:
    """Refuse an objective computed from the test split's labels by the quantization stage."""
    if not key.startswith("quantization.") or key.rpartition(".")[2] not in _LABELLED:
        return
    report = metrics.get("quantization") or {}
    if report.get("evaluated_on", "test") == "test":
        raise ConfigError(
            "quantization.evaluation_split", "test",
            f"The study objective {tag!r} is measured on the test split, which must stay unseen by the search. "
            "Set quantization.evaluation_split=validation in the study (as conf/study/digits_pareto.yaml does).")


def trial_objectives(metrics: Any, channel: TrialChannel, tags: Sequence[str]) -> Dict[str, Optional[float]]:
    """The value of every tag for a finished trial (None where the trial reported it nowhere).

    Raises:
        ConfigError: a tag names a value of the quantization report measured on the test split.
    """
    values: Dict[str, Optional[float]] = {}
    for tag in tags:
        key, value = metric_value(metrics, tag)
        if key is not None:
            _check_unseen_test_split(metrics, tag, key)
        values[tag] = value if value is not None else objective_from_files(channel, tag)
    return values
