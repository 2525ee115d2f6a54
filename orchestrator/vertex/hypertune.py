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


def objective(metrics: Mapping[str, Any], tag: str) -> Optional[float]:
    """The value of ``tag`` in a task's metrics.

    ``val_<m>``/``test_<m>``/``train_<m>`` name a split; a bare name is looked up in validation, then test,
    then train — trials should be chosen on held-out data, and validation is what a study tunes on.
    """
    for prefix, split in (("val_", "validation"), ("test_", "test"), ("train_", "train")):
        if tag.startswith(prefix) and tag[len(prefix):] in (metrics.get(split) or {}):
            return float(metrics[split][tag[len(prefix):]])
    for split in ("validation", "test", "train"):
        if tag in (metrics.get(split) or {}):
            return float(metrics[split][tag])
    return None


def report_from_env(metrics: Mapping[str, Any]) -> Optional[Path]:
    """Inside a Vertex tuning trial (``CLOUD_ML_TRIAL_ID`` or ``CLOUD_ML_HP_METRIC_TAG`` set), report the objective.

    Outside a trial this does nothing and returns None.
    """
    if not (os.environ.get("CLOUD_ML_TRIAL_ID") or os.environ.get("CLOUD_ML_HP_METRIC_TAG")):
        return None
    tag = os.environ.get("CLOUD_ML_HP_METRIC_TAG") or "accuracy"
    value = objective(metrics, tag)
    if value is None:
        return None
    return report_metric(tag, value, metrics.get("epochs"))
