"""Reading a trial's objective: TensorBoard event files and the JSON-lines metric report.

**TensorBoard.** :func:`read_tb_scalar` reads every ``events.out.tfevents.*`` file under a trial's log
directory (recursively) without TensorFlow: TFRecord framing is parsed here, records are checked with their
masked CRC-32C, and reading stops cleanly at a truncated or corrupt record (the trial may still be writing,
or was killed mid-write). Both TF1 ``simple_value`` scalars and TF2 summary tensors are understood.

How tfscale trials name their metrics: tf_keras' ``TensorBoard`` callback writes ``epoch_<metric>`` (e.g.
``epoch_accuracy``, ``epoch_loss``) into ``<logdir>/train`` and ``<logdir>/validation``. A tag may therefore
be given as

* the exact tag, ``epoch_accuracy`` -- accepted when only one subdirectory has it;
* qualified by its subdirectory, ``validation/epoch_accuracy``;
* the Keras history name, ``val_accuracy`` (= ``validation/epoch_accuracy``) or ``accuracy`` (exact tag
  ``accuracy`` if present, else ``validation/epoch_accuracy``, else ``epoch_accuracy``).

**Return values.** :func:`metric_value` finds a tag in a run's ``metrics.json``-shaped dict (see
:func:`metric_paths` for the names it accepts).

**Report file.** A trial process can call :func:`report_metric` to append ``{"tag", "value", "step",
"time"}`` JSON lines to the file named by ``$TFSCALE_TRIAL_METRICS``; :func:`read_reported_metrics` reads
them back, ignoring a half-written last line.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS_ENV_VAR",
    "EventWriter",
    "crc32c",
    "iter_tfrecords",
    "list_tb_tags",
    "metric_paths",
    "metric_value",
    "read_reported_metrics",
    "read_tb_scalar",
    "report_metric",
    "write_tfrecord",
]

METRICS_ENV_VAR = "TFSCALE_TRIAL_METRICS"


# -------------------------------------------------------------------------------------- return values
def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of a nested metrics dict by its dotted path (``validation.accuracy``)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_metrics(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def metric_paths(tag: str) -> list[str]:
    """The dotted ``metrics.json`` paths a tag may name, most specific first.

    ``validation.accuracy``-style paths and top-level keys as is; ``accuracy``/``epoch_accuracy`` →
    itself, then ``validation.accuracy``, then ``test.accuracy`` (a run without a validation split);
    ``val_accuracy``/``validation/epoch_accuracy`` → ``validation.accuracy``; ``test_accuracy`` →
    ``test.accuracy``; ``train_loss``/``train/epoch_loss`` → ``train.loss``. Validation comes before test
    because a search must not see the test split.
    """
    if "/" in tag:
        split, _, name = tag.rpartition("/")
        split = {"val": "validation", "eval": "validation"}.get(split, split)
        name = name[len("epoch_"):] if name.startswith("epoch_") else name
        return [f"{split}.{name}"]
    if "." in tag:
        return [tag]
    for prefix, split in (("val_", "validation"), ("test_", "test"), ("train_", "train")):
        if tag.startswith(prefix):
            return [f"{split}.{tag[len(prefix):]}", *([tag] if split != "validation" else [])]
    name = tag[len("epoch_"):] if tag.startswith("epoch_") else tag
    return [tag, f"validation.{name}", f"test.{name}"]


def metric_value(metrics: Any, tag: str) -> tuple[str | None, float | None]:
    """``(path, value)`` of ``tag`` in a run's metrics dict (see :func:`metric_paths`); ``(None, None)`` if absent."""
    if not isinstance(metrics, Mapping):
        return None, None
    flat = flat_metrics(metrics)
    for key in metric_paths(tag):
        if key in flat:
            return key, flat[key]
    return None, None


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as used by TFRecord."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iter_tfrecords(path: str | os.PathLike, *, check_data_crc: bool = True) -> Iterator[bytes]:
    """Payloads of the TFRecord file at ``path``, stopping at the first truncated or corrupt record.

    Record framing: ``uint64 length | uint32 masked_crc(length) | data | uint32 masked_crc(data)``, little
    endian.
    """
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            length_bytes = header[:8]
            if struct.unpack("<I", header[8:])[0] != _masked_crc(length_bytes):
                return
            (length,) = struct.unpack("<Q", length_bytes)
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                return
            if check_data_crc and struct.unpack("<I", footer)[0] != _masked_crc(data):
                return
            yield data


def write_tfrecord(f: Any, data: bytes) -> None:
    """Append one TFRecord-framed ``data`` to the binary file object ``f``."""
    length = struct.pack("<Q", len(data))
    f.write(length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data)))


class EventWriter:
    """Minimal TensorBoard event file writer.

    TensorBoard's own ``EventFileWriter`` resolves its file system through TensorFlow when TensorFlow is
    installed, which costs seconds of import; this one only needs the event protos.
    """

    def __init__(self, logdir: str | os.PathLike, suffix: str = ""):
        from tensorboard.compat.proto import event_pb2

        self._pb = event_pb2
        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}{suffix}"
        self.path = Path(logdir) / name
        self._file = open(self.path, "ab")
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: Any) -> None:
        """Append an ``Event`` proto."""
        write_tfrecord(self._file, event.SerializeToString())

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Append a TF1-style ``simple_value`` scalar."""
        from tensorboard.compat.proto import summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
        self.add_event(self._pb.Event(wall_time=wall_time or time.time(), step=step, summary=summary))

    def flush(self) -> None:
        """Make what was added visible to readers (TensorBoard, study metric readers)."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _event_files(logdir: Path) -> list[Path]:
    if logdir.is_file():
        return [logdir]
    return sorted(p for p in logdir.rglob("*") if p.is_file() and "tfevents" in p.name)


def _scalar(value: Any) -> float | None:
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor":
        from tensorboard.util import tensor_util

        array = tensor_util.make_ndarray(value.tensor)
        if array.size == 1 and array.dtype.kind in "fiub":
            return float(array.reshape(()))
    return None


def _read_all(logdir: Path) -> dict[str, dict[int, tuple[float, float]]]:
    """``{qualified_tag: {step: (wall_time, value)}}`` where the tag is prefixed by its subdirectory."""
    from tensorboard.compat.proto import event_pb2

    out: dict[str, dict[int, tuple[float, float]]] = {}
    root = logdir if logdir.is_dir() else logdir.parent
    for path in _event_files(logdir):
        subdir = path.parent.relative_to(root).as_posix()
        for record in iter_tfrecords(path):
            try:
                event = event_pb2.Event.FromString(record)
            except Exception:  # noqa: BLE001 -- a record with a valid CRC but foreign payload
                continue
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                number = _scalar(value)
                if number is None:
                    continue
                tag = value.tag if subdir == "." else f"{subdir}/{value.tag}"
                steps = out.setdefault(tag, {})
                # A restarted trial rewrites steps; the newest write wins.
                if event.step not in steps or steps[event.step][0] <= event.wall_time:
                    steps[event.step] = (event.wall_time, number)
    return out


def list_tb_tags(logdir: str | os.PathLike) -> list[str]:
    """Every scalar tag under ``logdir``, qualified by subdirectory (``validation/epoch_accuracy``)."""
    return sorted(_read_all(Path(logdir)))


def _resolve(tag: str, available: dict[str, Any]) -> str | None:
    def unique_suffix(name: str) -> str | None:
        if name in available:
            return name
        hits = [t for t in available if t.endswith("/" + name)]
        if len(hits) > 1:
            raise ValueError(f"tag {name!r} is in several directories: {sorted(hits)}. Qualify it, e.g. "
                             f"{sorted(hits)[-1]!r}.")
        return hits[0] if hits else None

    candidates = [tag]
    base = tag.split("/")[-1]
    if "/" not in tag:
        if base.startswith("val_"):
            candidates = [tag, f"validation/epoch_{base[4:]}"]
        elif not base.startswith("epoch_"):
            candidates = [tag, f"validation/epoch_{base}", f"epoch_{base}"]
    for candidate in candidates:
        if candidate in available:
            return candidate
    for candidate in candidates:  # e.g. <run_dir>/tensorboard/validation/epoch_accuracy from the run dir
        found = unique_suffix(candidate)
        if found:
            return found
    return None


def read_tb_scalar(logdir: str | os.PathLike, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of scalar ``tag`` from the event files under ``logdir``, by step.

    See the module docstring for how ``tag`` is matched. Returns ``[]`` when nothing matches (the trial has
    not written it yet).

    Raises:
        ValueError: a bare tag matches in several subdirectories; the message lists the qualified names.
    """
    data = _read_all(Path(logdir))
    name = _resolve(tag, data)
    if name is None:
        return []
    return [(step, value) for step, (_, value) in sorted(data[name].items())]


def report_metric(value: float, step: int | None = None, tag: str = "objective",
                  path: str | os.PathLike | None = None) -> None:
    """Append one measurement to the trial's metric file (``path`` or ``$TFSCALE_TRIAL_METRICS``).

    Call it from the trial process, e.g. once per epoch and once at the end with the final objective.
    """
    target = path or os.environ.get(METRICS_ENV_VAR)
    if not target:
        raise RuntimeError(f"report_metric: no metrics file. Pass path=..., or run the trial under a tfscale "
                           f"sweep, which sets ${METRICS_ENV_VAR}.")
    line = json.dumps({"tag": tag, "value": float(value), "step": step, "time": time.time()})
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def read_reported_metrics(path: str | os.PathLike, tag: str | None = None) -> list[dict[str, Any]]:
    """Records written by :func:`report_metric` (only those of ``tag`` if given), in write order.

    A missing file gives ``[]``; unparsable lines (a write cut short) are skipped.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (tag is None or record.get("tag") == tag):
            out.append(record)
    return out
