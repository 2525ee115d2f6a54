"""Sharded file sources (``data=tfrecord``, ``data=csv_shards``) as far as they can be known without TensorFlow.

A streaming source is three file patterns (``data.train``, ``data.validation``, optionally ``data.test``),
a feature spec and a label key. This module resolves them into a :class:`StreamSpec` (merging the
``spec.json`` that ``tfscale data convert`` writes beside its shards), picks the shard policy for a
number of input pipelines, and checks all of it before TensorFlow is imported. Patterns are expanded
with :func:`glob.glob` here, so only local patterns are matched before TensorFlow is imported; of a URI
(``gs://``, ``s3://``) only the syntax is checked here (validation stays offline), and
:func:`check_remote` lists it through the storage layer in the storage preflight, before anything runs.

Shard policy (``data.shard_policy``):

- ``file`` — each input pipeline (a MultiWorkerMirrored worker, a ParameterServer worker) reads its own
  files: pipeline *i* of *n* reads files ``i, i+n, i+2n, ...`` of the sorted file list.
- ``data`` — every pipeline reads every file and keeps every *n*-th record.
- ``auto`` (default) — ``file`` when there are at least as many training files as pipelines, else ``data``.
"""
from __future__ import annotations

import glob as _glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from orchestrator.config.schema import DataConfig, DataName, ExperimentConfig, ShardPolicy, StrategyName
from orchestrator.errors import ConfigError

SPEC_FILE = "spec.json"
SPLITS = ("train", "validation", "test")
FEATURE_DTYPES = ("float32", "int64")
#: The file format each streaming ``data.name`` reads.
STREAM_FORMATS = {DataName.tfrecord: "tfrecord", DataName.csv_shards: "csv"}


def is_streaming(d: DataConfig) -> bool:
    """Whether ``data`` is read from sharded files as it trains rather than loaded into memory."""
    return d.name in STREAM_FORMATS


def is_uri(path: str) -> bool:
    return "://" in str(path)


#: Object stores shards are read from (through tfscale's storage layer, not TensorFlow's filesystems).
REMOTE_SCHEMES = ("gs", "gcs", "s3")


def is_remote(path: str) -> bool:
    """Whether ``path`` is an object-store URI (``file://`` is a local path)."""
    return is_uri(path) and str(path).split("://", 1)[0].lower() != "file"


def check_uri(key: str, uri: str) -> None:
    """The syntax of a shard pattern or spec URI (offline): a known scheme, a bucket without wildcards, a path."""
    if not is_remote(uri):
        return
    scheme, rest = str(uri).split("://", 1)
    scheme = scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise ConfigError(key, uri, f"Shards are read from local paths and {', '.join(s + '://' for s in REMOTE_SCHEMES)} URIs; "
                          "use one of those (copy the files to a bucket or a local disk).")
    name, _, path = rest.partition("/")
    if not name:
        raise ConfigError(key, uri, f"A {scheme}:// URI needs a bucket, e.g. {scheme}://my-bucket/shards/train-*.tfrecord.")
    if any(c in name for c in "*?[]"):
        raise ConfigError(key, uri, f"The bucket name cannot hold a wildcard: name the bucket and put the glob in the file "
                          f"names, e.g. {scheme}://my-bucket/shards/train-*.tfrecord.")
    if not path.strip("/"):
        raise ConfigError(key, uri, f"Name the files inside the bucket, e.g. {scheme}://{name}/shards/train-*.tfrecord.")


@dataclass(frozen=True)
class Feature:
    """One declared input feature: its name in the record (or CSV column), shape and dtype."""

    name: str
    shape: Tuple[int, ...] = ()
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return int(math.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class StreamSpec:
    """A resolved streaming source: file patterns per split, features, label and what is known of the data.

    ``features`` empty for a CSV source means every column but the label (read from the header).
    """

    format: str  # "tfrecord" | "csv"
    patterns: Mapping[str, Optional[str]]
    features: Tuple[Feature, ...]
    label_key: str
    num_classes: Optional[int] = None
    records: Mapping[str, int] = field(default_factory=dict)  # declared record counts per split
    scale: Optional[float] = None

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """Shape of one example's model input: a single feature keeps its shape, several are concatenated."""
        if len(self.features) == 1 and self.features[0].shape:
            return tuple(self.features[0].shape)
        return (sum(f.size for f in self.features),)


# ------------------------------------------------------------------------------------------ reading
def _local_read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_spec_file(path: str, read_text: Callable[[str], str] = _local_read) -> Dict[str, Any]:
    """The ``spec.json`` written by ``tfscale data convert`` (``path`` is the file or its directory)."""
    if not str(path).endswith(".json"):
        path = f"{str(path).rstrip('/')}/{SPEC_FILE}"
    try:
        spec = json.loads(read_text(path))
    except (OSError, ValueError) as exc:
        raise ConfigError("data.spec", path, f"Cannot read it as the spec.json of a shard directory ({exc}). "
                          "Point data.spec at the spec.json `tfscale data convert` wrote, or set it to null and "
                          "declare data.train / data.validation / data.features_key / data.feature_shape yourself.") from exc
    if not isinstance(spec, dict) or "splits" not in spec:
        raise ConfigError("data.spec", path, "It is not a shard spec (no 'splits'); use the spec.json `tfscale data convert` wrote.")
    return spec


def _declared_features(d: DataConfig, fmt: str) -> Optional[Tuple[Feature, ...]]:
    """Features declared in the config, None when the config declares none."""
    if d.features:
        out = []
        for name, node in d.features.items():
            node = node or {}
            shape = tuple(int(s) for s in (node.get("shape") or ()))
            dtype = str(node.get("dtype") or "float32")
            if dtype not in FEATURE_DTYPES:
                raise ConfigError(f"data.features.{name}.dtype", dtype, f"Use one of {', '.join(FEATURE_DTYPES)}; "
                                  "features are cast to float32 for the model.")
            if any(s <= 0 for s in shape):
                raise ConfigError(f"data.features.{name}.shape", list(shape), "Give positive dimensions, e.g. [64], or [] for a scalar.")
            if fmt == "csv" and shape not in ((), (1,)):
                raise ConfigError(f"data.features.{name}.shape", list(shape), "A CSV column holds one value: use [] (or leave shape out).")
            out.append(Feature(str(name), shape, dtype))
        return tuple(out)
    if d.feature_shape:
        return (Feature(d.features_key, tuple(int(s) for s in d.feature_shape), "float32"),)
    return None


def resolve(d: DataConfig, read_text: Callable[[str], str] = _local_read) -> StreamSpec:
    """The source ``data`` describes, with ``data.spec``'s file filling what the config leaves unset.

    Config values win over the spec file: ``data.train``/``validation``/``test``, ``data.num_classes``,
    ``data.scale``, ``data.train_records``; features declared in the config (``data.features`` or
    ``data.features_key`` + ``data.feature_shape``) replace the spec's features, with ``data.label_key``.
    Patterns in a spec file are relative to its directory.
    """
    fmt = STREAM_FORMATS[d.name]
    spec: Dict[str, Any] = read_spec_file(d.spec, read_text) if d.spec else {}
    base = str(d.spec) if d.spec else ""
    if base and base.endswith(".json"):
        base = base.rsplit("/", 1)[0] if "/" in base else "."
    if spec and spec.get("format", fmt) != fmt:
        raise ConfigError("data.spec", d.spec, f"It describes {spec.get('format')} shards, but data={d.name} reads {fmt}; "
                          f"use data={'tfrecord' if spec.get('format') == 'tfrecord' else 'csv_shards'}.")
    splits = spec.get("splits", {})
    patterns: Dict[str, Optional[str]] = {}
    records: Dict[str, int] = {}
    for split in SPLITS:
        given, entry = getattr(d, split), splits.get(split) or {}
        patterns[split] = str(given) if given else None
        if not given and entry.get("pattern"):
            pattern = str(entry["pattern"])
            patterns[split] = pattern if (is_uri(pattern) or os.path.isabs(pattern)) else f"{base.rstrip('/')}/{pattern}"
            if entry.get("records") is not None:  # counted by the converter, for exactly these files
                records[split] = int(entry["records"])
    if d.train_records is not None:
        records["train"] = int(d.train_records)
    declared = _declared_features(d, fmt)
    if declared is not None:
        features, label = declared, d.label_key
    elif spec:
        features = tuple(Feature(str(n), tuple(int(s) for s in (f.get("shape") or ())), str(f.get("dtype", "float32")))
                         for n, f in spec.get("features", {}).items())
        label = str(spec.get("label_key", d.label_key))
    else:
        features, label = (), d.label_key
    num_classes = d.num_classes if d.num_classes is not None else spec.get("num_classes")
    scale = d.scale if d.scale is not None else spec.get("scale")
    return StreamSpec(fmt, patterns, features, label, int(num_classes) if num_classes is not None else None,
                      records, float(scale) if scale is not None else None)


def expand(pattern: str, glob_fn: Callable[[str], List[str]] = _glob.glob) -> List[str]:
    """The files a pattern matches, sorted (every task must see the same order)."""
    return sorted(glob_fn(pattern))


# ------------------------------------------------------------------------------------------ sharding
def input_pipelines(cfg: ExperimentConfig) -> int:
    """How many input pipelines read the training files: one per training worker of a multi-worker strategy."""
    from strategies.tf_config import role_counts

    if cfg.strategy.name == StrategyName.multi_worker_mirrored:
        counts = role_counts(cfg.cluster)
        return max(1, counts.get("chief", 0) + counts.get("worker", 0))
    if cfg.strategy.name == StrategyName.parameter_server:
        return max(1, role_counts(cfg.cluster).get("worker", 0))
    return 1


def choose_policy(declared: ShardPolicy, files: int, pipelines: int) -> Tuple[ShardPolicy, str]:
    """The shard policy to apply and why (for the log and the run record)."""
    if pipelines <= 1:
        return ShardPolicy.file, "one input pipeline reads every file"
    if declared == ShardPolicy.data:
        return ShardPolicy.data, "data.shard_policy=data"
    if declared == ShardPolicy.file:
        return ShardPolicy.file, "data.shard_policy=file"
    if files >= pipelines:
        return ShardPolicy.file, f"{files} files >= {pipelines} input pipelines"
    return ShardPolicy.data, f"{files} files < {pipelines} input pipelines: every pipeline reads every file and keeps its share of records"


def shard_files(files: Sequence[str], pipelines: int, index: int, policy: ShardPolicy) -> List[str]:
    """The files input pipeline ``index`` of ``pipelines`` reads under ``policy``."""
    if policy == ShardPolicy.file and pipelines > 1:
        return list(files[index::pipelines])
    return list(files)


# ------------------------------------------------------------------------------------------ checks
def csv_header(path: str) -> List[str]:
    """The column names in the first line of a local CSV file."""
    with open(path) as f:
        return [c.strip() for c in f.readline().strip().split(",")]


def check(d: DataConfig) -> Optional[StreamSpec]:
    """Check a streaming ``data`` config offline (local files matched, URIs' syntax); the resolved spec, None if
    not streaming or if the spec lives behind a URI (:func:`check_remote` reads it in the storage preflight)."""
    if not is_streaming(d):
        return None
    if d.format != "auto" and str(d.format) != STREAM_FORMATS[d.name]:
        raise ConfigError("data.format", d.format, f"data={d.name} reads {STREAM_FORMATS[d.name]} shards: leave data.format=auto.")
    if d.spec:
        check_uri("data.spec", str(d.spec))
    for split in SPLITS:
        if getattr(d, split):
            check_uri(f"data.{split}", str(getattr(d, split)))
    if d.train_records is not None and d.train_records < 1:
        raise ConfigError("data.train_records", d.train_records, "Give the number of training records, or null to count them once.")
    if d.adapt_batches < 1:
        raise ConfigError("data.adapt_batches", d.adapt_batches, "The model's rescaling adapts on the first batches of the stream: use at least 1.")
    if d.spec and not is_uri(d.spec):
        where = d.spec if str(d.spec).endswith(".json") else os.path.join(d.spec, SPEC_FILE)
        if not os.path.exists(where):
            raise ConfigError("data.spec", d.spec, f"No such file (looked for {os.path.abspath(where)}). Give the spec.json "
                              "`tfscale data convert` wrote (or its directory), or set data.spec=null.")
    if d.spec and is_uri(d.spec):
        return None  # the spec lives behind a URI: the storage preflight reads and checks it
    spec = resolve(d)
    _check_splits(d, spec)
    for split in SPLITS:
        pattern = spec.patterns.get(split)
        if pattern and not is_uri(pattern) and not expand(pattern):
            raise ConfigError(f"data.{split}", pattern, f"The pattern matches no file (looked in {os.path.abspath(os.path.dirname(pattern) or '.')}). "
                              "Check the path and the glob; relative paths are relative to the directory you run tfscale from.")
    if spec.format == "csv" and not is_uri(spec.patterns["train"]):
        header = csv_header(expand(spec.patterns["train"])[0])
        missing = [c for c in [spec.label_key, *(f.name for f in spec.features)] if c not in header]
        if missing:
            key = "data.label_key" if spec.label_key in missing else "data.features"
            raise ConfigError(key, missing[0], f"The CSV shards have columns {header}; name one of them.")
    check_resolved(d, spec)
    return spec


def check_resolved(d: DataConfig, spec: StreamSpec) -> None:
    """What a resolved source must declare, wherever its spec came from: training and validation files, the
    TFRecord features, the class count; and the syntax of the URIs a spec file names."""
    _check_splits(d, spec)
    if spec.format == "tfrecord" and not spec.features:
        raise ConfigError("data.feature_shape", d.feature_shape, "TFRecord examples need their features declared: set "
                          "data.features_key and data.feature_shape (e.g. [64]), data.features, or data.spec.")
    if spec.num_classes is None:
        raise ConfigError("data.num_classes", None, "A streamed dataset is not scanned for its labels: declare the number of "
                          "classes, e.g. data.num_classes=10 (or use data.spec, which records it).")


def _check_splits(d: DataConfig, spec: StreamSpec) -> None:
    for split in ("train", "validation"):
        if not spec.patterns.get(split):
            raise ConfigError(f"data.{split}", None, f"data={d.name} reads the {split} split from files: set data.{split} to a "
                              f"file pattern, e.g. data.{split}='shards/{split}-*.{'tfrecord' if spec.format == 'tfrecord' else 'csv'}', "
                              "or data.spec to the spec.json of a converted dataset.")
    for split in SPLITS:
        if spec.patterns.get(split):
            check_uri(f"data.{split}", str(spec.patterns[split]))


def reads_remote(d: DataConfig) -> bool:
    """Whether a streaming source reads shards from an object store (a spec behind a URI counts), known offline."""
    if not is_streaming(d):
        return False
    if d.spec and is_remote(d.spec):
        return True
    return any(p and is_remote(p) for p in resolve(d).patterns.values())


def check_workers(cfg: ExperimentConfig) -> None:
    """Check the source against the strategy: ParameterServer reads no object store; the file shard policy has a
    file per input pipeline (local training files; :func:`check_remote` counts remote ones)."""
    d = cfg.data
    if not is_streaming(d):
        return
    if cfg.strategy.name == StrategyName.parameter_server and reads_remote(d):
        key, value = ("data.spec", d.spec) if d.spec and is_remote(d.spec) else ("data.train", resolve(d).patterns.get("train"))
        raise ConfigError(key, value, "strategy=parameter_server builds its workers' input pipelines from one function traced "
                          "on the coordinator, where the reader of shards in a bucket (Python, through tfscale's storage "
                          "layer) cannot run: use strategy=multi_worker_mirrored, or shards on a path every worker can read.")
    if d.shard_policy != ShardPolicy.file or (d.spec and is_uri(d.spec)):
        return
    pattern = resolve(d).patterns.get("train")
    if not pattern or is_uri(pattern):
        return
    _check_files_per_pipeline(cfg, pattern, len(expand(pattern)))


def _check_files_per_pipeline(cfg: ExperimentConfig, pattern: str, files: int) -> None:
    pipelines = input_pipelines(cfg)
    if cfg.data.shard_policy == ShardPolicy.file and pipelines > 1 and files < pipelines:
        raise ConfigError("data.shard_policy", "file", f"data.train={pattern!r} matches {files} file(s) but {pipelines} input "
                          f"pipelines ({cfg.strategy.name}) each need their own; write at least {pipelines} shards "
                          f"(tfscale data convert --shards {pipelines}) or use data.shard_policy=auto (or data).")


def check_remote(cfg: ExperimentConfig, *, glob: Callable[[str], List[str]], read_text: Callable[[str], str],
                 check_access: Callable[..., None]) -> None:
    """The storage preflight of a source in a bucket (network; the storage layer passes its functions in).

    Reads a ``data.spec`` behind a URI and checks what :func:`check` could not; lists every remote pattern
    (``glob``): one that matches nothing is a ConfigError naming it, and so is ``data.shard_policy=file``
    with fewer training files than input pipelines.
    """
    d = cfg.data
    if not reads_remote(d):
        return
    if d.spec and is_remote(d.spec):
        check_access(str(d.spec), "data.spec", reading=True)
        spec = resolve(d, read_text=read_text)
        check_resolved(d, spec)
    else:
        spec = resolve(d)
    reached = set()
    for split in SPLITS:
        pattern, key = spec.patterns.get(split), f"data.{split}"
        if not pattern or not is_remote(pattern):
            continue
        store = tuple(pattern.split("/", 3)[:3])  # (scheme:, '', bucket)
        if store not in reached:
            check_access(pattern, key, reading=True)
            reached.add(store)
        try:
            files = glob(pattern)
        except Exception as exc:  # gcsfs / s3fs / botocore errors: permissions, a prefix we may not list, ...
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ConfigError(key, pattern, f"Cannot list it ({first}). Check the URI and that the credentials may list the bucket.") from None
        if not files:
            raise ConfigError(key, pattern, "The pattern matches no object in the bucket. Check the prefix and the glob, e.g. "
                              "gs://my-bucket/shards/train-*.tfrecord (tfscale data convert --output gs://... writes them).")
        if split == "train":
            _check_files_per_pipeline(cfg, pattern, len(files))
