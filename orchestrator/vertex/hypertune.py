"""Reporting a trial's objective the way Vertex's tuning service reads it.

The convention of ``cloudml-hypertune``: one JSON line per report appended to ``/tmp/hypertune/output.metrics``
(or the file named by ``CLOUD_ML_HP_METRIC_FILE``), holding the timestamp, the trial id, the metric under
its tag and the global step. Values are written as strings, as the library does.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

DEFAULT_METRIC_FILE = "/tmp/hypertune/output.metrics"


def metric_file() -> Path:
    """Where reports go: ``CLOUD_ML_HP_METRIC_FILE`` or the library's default path."""
    return Path(os.environ.get("CLOUD_ML_HP_METRIC_FILE") or DEFAULT_METRIC_FILE)


def report_metric(tag: str, value: float, global_step: Optional[int] = None, *, path: Optional[Path] = None,
                  trial_id: Optional[str] = None) -> Path:
    """Append one report line; return the file written."""
    path = path or metric_file()
    body: Dict[str, Any] = {
        "timestamp": time.time(),
        "trial": str(trial_id if trial_id is not None else os.environ.get("CLOUD_ML_TRIAL_ID", "0")),
        tag: str(float(value)),
        "global_step": str(int(global_step) if global_step else 0),
        "checkpoint_path": "",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(body) + "\n")
    return path


#: The tags of every metric of a multi-objective study, comma-separated: set by tfscale on each trial of a Vertex
#: tuning job next to ``CLOUD_ML_HP_METRIC_TAG`` (which names one metric, the first).
METRIC_TAGS_ENV = "TFSCALE_HP_METRIC_TAGS"


def objective(metrics: Mapping[str, Any], tag: str) -> Optional[float]:
    """The value of ``tag`` in a task's metrics (the names :func:`tuners.metrics.metric_paths` accepts:
    ``val_<m>``, ``test_<m>``, ``train_<m>``, dotted paths such as ``quantization.quantized.tflite_bytes``;
    a bare name is the validation value, the test value on a run without a validation split)."""
    from tuners.metrics import metric_value

    return metric_value(metrics, tag)[1]


def report_from_env(metrics: Mapping[str, Any]) -> Optional[Path]:
    """Inside a Vertex tuning trial (``CLOUD_ML_TRIAL_ID`` or ``CLOUD_ML_HP_METRIC_TAG`` set), report the objective:
    one line per metric of the study (:data:`METRIC_TAGS_ENV`, else ``CLOUD_ML_HP_METRIC_TAG``), as one
    ``report_hyperparameter_tuning_metric`` call per metric would.

    Outside a trial this does nothing and returns None; so it does when the metrics hold none of the tags.
    """
    if not (os.environ.get("CLOUD_ML_TRIAL_ID") or os.environ.get("CLOUD_ML_HP_METRIC_TAG")):
        return None
    tags = [t for t in (os.environ.get(METRIC_TAGS_ENV) or "").split(",") if t] or \
        [os.environ.get("CLOUD_ML_HP_METRIC_TAG") or "accuracy"]
    written = None
    for tag in tags:
        value = objective(metrics, tag)
        if value is not None:
            written = report_metric(tag, value, metrics.get("epochs"))
    return written
