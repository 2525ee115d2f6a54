"""TensorBoard HParams plugin data, written as event protos without TensorFlow.

``tensorboard --logdir runs`` shows, in its HParams dashboard, every directory holding a *session start*
event as one session: its hyperparameters, its scalars (those of the directory and the ones below it) and,
once a *session end* event follows, its status. These are the protos ``tensorboard.plugins.hparams.summary``
builds; they are built here from the proto modules alone, because the plugin's own helpers import
TensorBoard's TensorFlow stub (a fifth of a second) and the summary API imports TensorFlow itself.

No *experiment* summary is written: TensorBoard shows the first one it finds instead of the hyperparameters
of all sessions, so one study's summary would hide the settings of every other run under ``--logdir runs``.
Without it, TensorBoard gathers the hyperparameters and metrics from the sessions themselves.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from tuners.metrics import EventWriter
from tuners.study_spec import TrialStatus

__all__ = ["HParamsSession", "overrides_as_hparams"]

_PLUGIN = "hparams"
SESSION_START_TAG = "_hparams_/session_start_info"
SESSION_END_TAG = "_hparams_/session_end_info"


def _summary(tag: str, **data: Any) -> Any:
    """A Summary holding HParamsPluginData(``data``) as plugin metadata, with the plugin's null tensor."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(version=0, **data).SerializeToString()
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=_PLUGIN, content=content))
    # The smallest valid tensor (a length-0 float vector): the value only carries the metadata.
    null = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=0)]))
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=null)])


def _event(wall_time: float | None = None, step: int = 0, summary: Any = None) -> Any:
    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time, step=step, summary=summary)


class HParamsSession:
    """One HParams session (a run or a trial) in ``logdir``: start, scalars, end, in one event file.

    Each call flushes, so a TensorBoard already watching sees the session while it runs.
    """

    def __init__(self, logdir: str | os.PathLike):
        self._writer = EventWriter(logdir, suffix=".hparams")

    def start(self, hparams: Mapping[str, Any], *, group_name: str = "", start_time: float | None = None) -> None:
        """The session's hyperparameters (strings, numbers or booleans) and start time."""
        from tensorboard.plugins.hparams import plugin_data_pb2

        start_time = time.time() if start_time is None else start_time
        info = plugin_data_pb2.SessionStartInfo(group_name=group_name, start_time_secs=start_time)
        for name, value in hparams.items():
            if isinstance(value, bool):
                info.hparams[name].bool_value = value
            elif isinstance(value, (int, float)):
                info.hparams[name].number_value = float(value)
            else:
                info.hparams[name].string_value = str(value)
        self._writer.add_event(_event(start_time, summary=_summary(SESSION_START_TAG, session_start_info=info)))
        self._writer.flush()

    def scalars(self, values: Mapping[str, float], *, step: int = 0, wall_time: float | None = None) -> None:
        """Scalars of the session itself (tags as given), e.g. its final metrics."""
        from tensorboard.compat.proto import summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                             for k, v in values.items()])
        self._writer.add_event(_event(wall_time, step, summary))
        self._writer.flush()

    def end(self, status: TrialStatus, *, end_time: float | None = None) -> None:
        """The session's end: COMPLETED shows as success, FAILED as failure, STOPPED as unknown."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        code = {TrialStatus.COMPLETED: api_pb2.STATUS_SUCCESS, TrialStatus.FAILED: api_pb2.STATUS_FAILURE,
                TrialStatus.STOPPED: api_pb2.STATUS_UNKNOWN, TrialStatus.ACTIVE: api_pb2.STATUS_RUNNING}[status]
        end_time = time.time() if end_time is None else end_time
        info = plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=end_time)
        self._writer.add_event(_event(end_time, summary=_summary(SESSION_END_TAG, session_end_info=info)))
        self._writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self._writer.close()

    def __enter__(self) -> HParamsSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _override_value(text: str) -> Any:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return text  # lists, dicts, null: shown as written


def overrides_as_hparams(overrides: Iterable[str]) -> dict[str, Any]:
    """Command-line overrides as hyperparameters: ``trainer.epochs=3`` → ``{"trainer.epochs": 3}``.

    Config group choices (``model=cnn``) and ``+key=``/``++key=`` additions count; deletions (``~key``) and
    ``hydra.*`` settings (where and how Hydra runs, not what is trained) do not.
    """
    out: dict[str, Any] = {}
    for override in overrides:
        key, sep, value = str(override).partition("=")
        key = key.lstrip("+")
        if not sep or not key or key.startswith("~") or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        out[key] = _override_value(value)
    return out
