"""Streaming input from sharded TFRecord / CSV files: ``tf.data`` from the file list to the prefetched batch.

One input pipeline (one per MultiWorkerMirrored or ParameterServer worker, one for every other strategy)::

    its files (shard policy) -> seeded per-epoch file shuffle -> repeat -> parallel interleave of readers
      -> [policy data: every n-th record] -> shuffle buffer of serialized records -> batch
      -> vectorised parse (parse_example / decode_csv), map with AUTOTUNE -> prefetch

No record passes through Python or numpy, so memory is bounded by the shuffle buffer, the read buffers
and the prefetched batches, whatever the dataset's size. The training stream repeats; an epoch is
``ceil(train_records / global_batch)`` steps, with ``train_records`` declared (``data.train_records`` or
the converter's ``spec.json``) or counted once and cached beside the run records.

Sharding is done here, through the ``tf.distribute.InputContext`` every strategy hands the dataset
function (``DatasetCreator`` under every strategy), and tf.data's own auto-sharding is switched off, so
the file list recorded for each pipeline is exactly what it reads.

Local files are read by tf.data's own readers (``TFRecordDataset``, ``TextLineDataset``). Files in a bucket
(``gs://``, ``s3://``) are listed and read through tfscale's storage layer, which reaches GCS emulators and
S3 where TensorFlow's filesystems do not: each file is one ``Dataset.from_generator`` streaming its records
a chunk at a time (:mod:`orchestrator.training.records`, checksums verified), inside the same interleave;
shuffling, batching, parsing and prefetch are the same tf.data steps as for local files.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from orchestrator.artifacts import storage
from orchestrator.config.schema import DataConfig, ExperimentConfig, ShardPolicy
from orchestrator.config.streams import Feature, StreamSpec, choose_policy, resolve, shard_files
from orchestrator.errors import ConfigError, TaskFailedError

log = logging.getLogger(__name__)

READ_BUFFER_BYTES = 1 << 20  # per open file: large sequential reads, bounded memory
COUNTS_FILE = "record_counts.json"


# ------------------------------------------------------------------------------------------ files
def list_files(tf: Any, pattern: str, key: str) -> List[str]:
    """The files ``pattern`` matches (local glob, or a bucket's listed by the storage layer), sorted; a
    ConfigError naming ``key`` if none."""
    try:
        files = storage.glob(pattern) if storage.is_remote(pattern) else sorted(tf.io.gfile.glob(pattern))
    except Exception as exc:  # a URI scheme without a filesystem, a bucket we cannot list, ...
        raise ConfigError(key, pattern, f"Cannot list the files it names ({exc}).") from exc
    if not files:
        raise ConfigError(key, pattern, "The pattern matches no file. Check the path and the glob.")
    return files


def csv_columns(tf: Any, path: str) -> List[str]:
    """Column names from the header line of a CSV shard."""
    if storage.is_remote(path):
        from orchestrator.training.records import line_chunks

        with storage.open_stream(path) as f:
            header = next(iter(line_chunks(f, chunk_bytes=1 << 16)), [b""])[0].decode("utf-8")
    else:
        with tf.io.gfile.GFile(path, "r") as f:
            header = f.readline()
    return [c.strip() for c in header.strip().split(",")]


def reader(tf: Any, fmt: str, *, remote: bool = False, on_open: Optional[Callable[[str], None]] = None) -> Callable[[Any], Any]:
    """A function from a file name to the dataset of its raw records (serialized Examples or CSV lines, header skipped).

    ``remote``: the files are in a bucket and are streamed through the storage layer, ``on_open(uri)`` called
    as each is opened.
    """
    if not remote:
        if fmt == "csv":
            return lambda path: tf.data.TextLineDataset(path, buffer_size=READ_BUFFER_BYTES).skip(1)
        return lambda path: tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES)
    from orchestrator.training.records import line_chunks, tfrecord_chunks

    def chunks(path: bytes) -> Iterator[List[bytes]]:
        uri = path.decode("utf-8")
        if on_open is not None:
            on_open(uri)
        with storage.open_stream(uri) as f:
            yield from (line_chunks(f, skip=1) if fmt == "csv" else tfrecord_chunks(f, uri))

    # One generator per file, yielding the records of each chunk read: unbatch (in C++) makes them single
    # records again, in file order, so the interleave sees what TFRecordDataset would give.
    signature = tf.TensorSpec([None], tf.string)
    return lambda path: tf.data.Dataset.from_generator(chunks, args=(path,), output_signature=signature).unbatch()


def count_streamed(files: Sequence[str], fmt: str) -> List[int]:
    """Records in each file of a bucket, read through the storage layer (a few files at once)."""
    from concurrent.futures import ThreadPoolExecutor

    from orchestrator.training.records import count_lines, count_tfrecords

    def count(uri: str) -> int:
        with storage.open_stream(uri) as f:
            return count_lines(f, skip=1) if fmt == "csv" else count_tfrecords(f, uri)

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(files)))) as pool:
        return list(pool.map(count, files))


def csv_features(spec: StreamSpec, columns: Sequence[str]) -> Tuple[Feature, ...]:
    """The features of a CSV source: the declared columns, or every column but the label."""
    if spec.features:
        return spec.features
    return tuple(Feature(c) for c in columns if c != spec.label_key)


def parser(tf: Any, spec: StreamSpec, columns: Optional[Sequence[str]] = None) -> Callable[[Any], Tuple[Any, Any]]:
    """A vectorised parse of one batch of raw records into ``(features float32, labels int64)``."""
    if spec.format == "csv":
        columns = list(columns or [])
        features = csv_features(spec, columns)
        feature_idx = [columns.index(f.name) for f in features]
        label_idx = columns.index(spec.label_key)
        defaults = [tf.constant([], tf.float32)] * len(columns)

        def parse_csv(lines):
            cols = tf.io.decode_csv(lines, record_defaults=defaults)
            return tf.stack([cols[i] for i in feature_idx], axis=1), tf.cast(cols[label_idx], tf.int64)

        return parse_csv
    dtypes = {"float32": tf.float32, "int64": tf.int64}
    described = {f.name: tf.io.FixedLenFeature(list(f.shape), dtypes[f.dtype]) for f in spec.features}
    described[spec.label_key] = tf.io.FixedLenFeature([], tf.int64)
    features = spec.features
    keep_shape = len(features) == 1 and bool(features[0].shape)

    def parse_examples(serialized):
        ex = tf.io.parse_example(serialized, described)
        if keep_shape:
            x = tf.cast(ex[features[0].name], tf.float32)
        else:
            x = tf.concat([tf.reshape(tf.cast(ex[f.name], tf.float32), [-1, f.size]) for f in features], axis=1)
        return x, ex[spec.label_key]

    return parse_examples


# ------------------------------------------------------------------------------------------ datasets
def _options(tf: Any, policy: Any) -> Any:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return options


def train_dataset(tf: Any, files: Sequence[str], read: Callable, parse: Callable, *, batch_size: int, seed: int,
                  shuffle_buffer: int = 10000, pipelines: int = 1, index: Any = 0, policy: ShardPolicy = ShardPolicy.file,
                  read_parallelism: int = -1, prefetch: int = -1) -> Any:
    """The repeated training stream of input pipeline ``index`` of ``pipelines``, in batches of ``batch_size``.

    ``index`` is a Python int, or a scalar tensor known only when the dataset is built on a worker (the
    worker index of ParameterServerStrategy). Deterministic for a given seed: the same files, seed and
    pipeline give the same batches.
    """
    known = isinstance(index, int)
    auto = tf.data.AUTOTUNE
    sharded_files = policy == ShardPolicy.file and pipelines > 1
    if sharded_files and known:
        mine: Sequence[str] = shard_files(files, pipelines, index, policy)
        ds, count = tf.data.Dataset.from_tensor_slices(list(mine)), len(mine)
    elif sharded_files:
        ds, count = tf.data.Dataset.from_tensor_slices(list(files)).shard(pipelines, index), -(-len(files) // pipelines)
    else:
        ds, count = tf.data.Dataset.from_tensor_slices(list(files)), len(files)
    if shuffle_buffer > 1:
        # The same seed on every pipeline: under the data policy each one must read the same record
        # sequence for ds.shard below to split it.
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    # Without shuffling (data.shuffle_buffer=0) files are read round-robin in order, so with shards of
    # equal size the records of a global batch do not depend on how many pipelines read them.
    ds = ds.repeat()
    cycle = count if read_parallelism < 0 else max(1, min(count, read_parallelism))
    ds = ds.interleave(read, cycle_length=min(cycle, 16), block_length=1, num_parallel_calls=auto, deterministic=True)
    if policy == ShardPolicy.data and pipelines > 1:
        ds = ds.shard(pipelines, index)
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed + index if known else seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(parse, num_parallel_calls=auto, deterministic=True)
    ds = ds.prefetch(auto if prefetch < 0 else prefetch)
    return ds.with_options(_options(tf, tf.data.experimental.AutoShardPolicy.OFF))


def eval_dataset(tf: Any, files: Sequence[str], read: Callable, parse: Callable, *, batch_size: int,
                 read_parallelism: int = -1) -> Any:
    """One pass over ``files`` in a fixed order, in batches (the last one may be short).

    Under a multi-worker strategy each worker keeps its share of the batches (tf.data's DATA policy), so a
    validation split with fewer files than workers is fine.
    """
    auto = tf.data.AUTOTUNE
    cycle = len(files) if read_parallelism < 0 else max(1, min(len(files), read_parallelism))
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    ds = ds.interleave(read, cycle_length=min(cycle, 16), num_parallel_calls=auto, deterministic=True)
    ds = ds.batch(batch_size).map(parse, num_parallel_calls=auto, deterministic=True).prefetch(auto)
    return ds.with_options(_options(tf, tf.data.experimental.AutoShardPolicy.DATA))


# ------------------------------------------------------------------------------------------ counting
def count_records(tf: Any, files: Sequence[str], read: Callable) -> List[int]:
    """Records in each file: a parallel pass that reads but parses nothing."""
    counts = tf.data.Dataset.from_tensor_slices(list(files)).map(
        lambda path: read(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return [int(c) for c in counts.as_numpy_iterator()]


def _file_key(tf: Any, path: str) -> str:
    if storage.is_remote(path):
        size, mtime = storage.stat(path)
        return f"{path}|{size}|{mtime}"
    st = tf.io.gfile.stat(path)
    return f"{path}|{st.length}|{st.mtime_nsec}"


def cached_count(tf: Any, files: Sequence[str], read: Callable, cache: Optional[Path], *,
                 count: Optional[Callable[[Sequence[str]], List[int]]] = None) -> Tuple[int, bool]:
    """Total records in ``files`` and whether it came from ``cache`` (a JSON of counts keyed by path, size, mtime).

    Files whose size or modification time changed are counted again (by ``count``, else by reading them
    with ``read`` in tf.data); the cache is rewritten atomically.
    """
    keys = [_file_key(tf, f) for f in files]
    known: Dict[str, int] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except ValueError:
            known = {}
    todo = [(f, k) for f, k in zip(files, keys) if k not in known]
    if todo:
        paths = [f for f, _ in todo]
        for (_, k), n in zip(todo, count(paths) if count is not None else count_records(tf, paths, read)):
            known[k] = n
        if cache is not None:
            from orchestrator.artifacts.publish import write_json

            write_json(cache, known)
    return sum(known[k] for k in keys), not todo


# ------------------------------------------------------------------------------------------ timing
def seconds_per_batch(ds: Any, batches: int, warmup: int = 2) -> Optional[float]:
    """Mean seconds to draw a batch from ``ds`` alone (after ``warmup`` batches), None if it ran dry."""
    import time

    it = iter(ds)
    try:
        for _ in range(warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
    except StopIteration:
        return None
    return (time.perf_counter() - start) / batches


def step_timer(keras: Any) -> Any:
    """A callback keeping each epoch's wall seconds in ``.epoch_seconds`` (for the step time)."""
    import time

    class _StepTimer(keras.callbacks.Callback):
        epoch_seconds: List[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self._start)

    timer = _StepTimer()
    timer.epoch_seconds = []
    return timer


def input_share(input_seconds_per_step: Optional[float], epoch_seconds: Sequence[float], steps: int) -> Dict[str, Any]:
    """How much of a training step the input pipeline alone would take: the run record's ``input_pipeline``.

    The step time is the fastest epoch's (the first includes tracing). A share near 1 or above means the
    input pipeline, not the model, bounds the step: training is input bound.
    """
    if input_seconds_per_step is None or not epoch_seconds or steps <= 0:
        return {"input_seconds_per_step": input_seconds_per_step, "step_seconds": None, "input_share": None, "input_bound": None}
    step = min(epoch_seconds) / steps
    share = input_seconds_per_step / step if step > 0 else None
    return {"input_seconds_per_step": round(input_seconds_per_step, 6), "step_seconds": round(step, 6),
            "input_share": round(share, 4) if share is not None else None, "input_bound": bool(share is not None and share >= 0.8)}


# ------------------------------------------------------------------------------------------ the source
class StreamingSource:
    """The data of a run read from sharded files as it trains.

    It answers what downstream code asks of in-memory ``Splits`` — ``input_shape``, ``num_classes``,
    ``scale``, calibration rows, evaluation batches — without holding the dataset: ``scale`` (the model's
    rescaling) is adapted on the first ``data.adapt_batches`` batches of the training stream.
    """

    streaming = True
    target_stats = None  # streamed labels are class ids (model.head=linear is refused for streamed data)

    def __init__(self, tf: Any, d: DataConfig, *, batch_size: int, seed: int, count_cache: Optional[Path] = None):
        self.tf = tf
        self.data = d
        self.batch_size = int(batch_size)
        self.seed = int(seed)

        def read_text(path: str) -> str:
            if storage.is_remote(path):
                return storage.read_text(path)
            with tf.io.gfile.GFile(path, "r") as f:
                return f.read()

        self.spec = resolve(d, read_text=read_text)
        for split in ("train", "validation"):
            if not self.spec.patterns.get(split):
                raise ConfigError(f"data.{split}", None, f"Set data.{split} to a file pattern (or data.spec to a converted dataset's spec.json).")
        self.files: Dict[str, List[str]] = {s: list_files(tf, p, f"data.{s}") for s, p in self.spec.patterns.items() if p}
        self.remote = {s: storage.is_remote(f[0]) for s, f in self.files.items()}  # a bucket's files: the storage layer reads them
        self.readers = {s: reader(tf, self.spec.format, remote=r) for s, r in self.remote.items()}
        self.read = self.readers["train"]
        columns = csv_columns(tf, self.files["train"][0]) if self.spec.format == "csv" else None
        if columns is not None:
            missing = [c for c in [self.spec.label_key, *(f.name for f in self.spec.features)] if c not in columns]
            if missing:
                raise ConfigError("data.label_key" if self.spec.label_key in missing else "data.features", missing[0],
                                  f"The CSV shards have columns {columns}; name one of them.")
            self.features = csv_features(self.spec, columns)
        else:
            if not self.spec.features:
                raise ConfigError("data.feature_shape", None, "Declare the TFRecord features: data.features_key and data.feature_shape, data.features, or data.spec.")
            self.features = self.spec.features
        self.parse = parser(tf, self.spec, columns)
        if self.spec.num_classes is None:
            raise ConfigError("data.num_classes", None, "Declare the number of classes, e.g. data.num_classes=10.")
        self.num_classes = int(self.spec.num_classes)
        declared = self.spec.records.get("train")
        self.records_counted = declared is None
        self.count_cached = False
        if declared is None:
            count = (lambda files: count_streamed(files, self.spec.format)) if self.remote["train"] else None
            declared, self.count_cached = cached_count(tf, self.files["train"], self.read, count_cache, count=count)
            log.info("counted %d training records in %d files%s", declared, len(self.files["train"]),
                     " (cached)" if self.count_cached else "")
        if declared < 1:
            raise TaskFailedError(f"data.train={self.spec.patterns['train']!r} holds no records.")
        self.train_records = int(declared)
        self.scale, self.sample_x = self._adapt(int(d.adapt_batches))
        self.evaluation_split = "test" if "test" in self.files else "validation"
        self.pipelines_built: List[Dict[str, Any]] = []

    # ---------------------------------------------------------------------------------- shapes
    @property
    def input_shape(self) -> Tuple[int, ...]:
        if len(self.features) == 1 and self.features[0].shape:
            return tuple(self.features[0].shape)
        return (sum(f.size for f in self.features),)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Steps of one pass over the training records at this global batch."""
        return max(1, math.ceil(self.train_records / int(batch_size)))

    # ---------------------------------------------------------------------------------- datasets
    def train(self, batch_size: int, *, pipelines: int = 1, index: Any = 0, policy: Optional[ShardPolicy] = None,
              seed: Optional[int] = None, read: Optional[Callable[[Any], Any]] = None) -> Any:
        """The repeated training stream of one input pipeline (``read``: its own reader, else the source's)."""
        d = self.data
        policy = policy or self.policy(pipelines)[0]
        return train_dataset(self.tf, self.files["train"], read or self.read, self.parse, batch_size=batch_size,
                             seed=self.seed if seed is None else seed, shuffle_buffer=int(d.shuffle_buffer),
                             pipelines=pipelines, index=index, policy=policy, read_parallelism=int(d.read_parallelism),
                             prefetch=int(d.prefetch))

    def evaluation(self, split: str, batch_size: Optional[int] = None) -> Any:
        """One pass over a split's files (``validation`` or ``test``), None if the split has no files."""
        if split not in self.files:
            return None
        return eval_dataset(self.tf, self.files[split], self.readers[split], self.parse, batch_size=int(batch_size or self.batch_size),
                            read_parallelism=int(self.data.read_parallelism))

    def policy(self, pipelines: int) -> Tuple[ShardPolicy, str]:
        return choose_policy(ShardPolicy(self.data.shard_policy), len(self.files["train"]), pipelines)

    def dataset_fn(self, global_batch: int, *, workers_at_run_time: int = 0) -> Callable[[Any], Any]:
        """The dataset function of ``DatasetCreator``: this input pipeline's stream at the per-replica batch.

        ``workers_at_run_time``: under ParameterServerStrategy the function is traced once on the
        coordinator with a context of one pipeline, and runs on every worker; the worker's index is then a
        value known at run time (``tf.distribute.coordinator.experimental_get_current_worker_index``).
        """

        def build(input_context: Any) -> Any:
            n, i = int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)
            batch = int(input_context.get_per_replica_batch_size(global_batch))
            if n == 1 and workers_at_run_time > 1:
                n = workers_at_run_time
                policy, why = self.policy(n)
                for w in range(n):
                    mine = shard_files(self.files["train"], n, w, policy)
                    log.info("input pipeline of worker %d of %d: shard policy %s (%s); reads %d of %d training files: %s",
                             w, n, policy.value, why, len(mine), len(self.files["train"]), ", ".join(Path(f).name for f in mine))
                self.pipelines_built.append({"pipeline": "worker index at run time", "pipelines": n, "policy": policy.value})
                index = self.tf.distribute.coordinator.experimental_get_current_worker_index()
                return self.train(batch, pipelines=n, index=index, policy=policy)
            policy, why = self.policy(n)
            mine = shard_files(self.files["train"], n, i, policy)
            log.info("input pipeline %d of %d: shard policy %s (%s); reads %d of %d training files: %s",
                     i, n, policy.value, why, len(mine), len(self.files["train"]), ", ".join(Path(f).name for f in mine))
            built: Dict[str, Any] = {"pipeline": i, "pipelines": n, "policy": policy.value, "files": mine}
            self.pipelines_built.append(built)
            return self.train(batch, pipelines=n, index=i, policy=policy, read=self._recording_reader(built, f"input pipeline {i} of {n}"))

        return build

    def _recording_reader(self, built: Dict[str, Any], who: str) -> Optional[Callable[[Any], Any]]:
        """For training files in a bucket: a reader that records (in ``built["streamed"]``) and logs, once
        each, the files this pipeline opens — what it really read, next to what it was given."""
        if not self.remote["train"]:
            return None
        import threading

        streamed: List[str] = []
        built["streamed"] = streamed
        lock = threading.Lock()

        def opened(uri: str) -> None:
            with lock:
                if uri in streamed:
                    return
                streamed.append(uri)
            log.info("%s: streaming %s through the storage layer", who, uri)

        return reader(self.tf, self.spec.format, remote=True, on_open=opened)

    def train_input(self, keras: Any, global_batch: int, *, workers_at_run_time: int = 0) -> Tuple[Any, int]:
        """What ``fit`` takes: a ``DatasetCreator`` (every strategy) and the steps of one epoch."""
        fn = self.dataset_fn(global_batch, workers_at_run_time=workers_at_run_time)
        return keras.utils.experimental.DatasetCreator(fn), self.steps_per_epoch(global_batch)

    def shard_table(self, pipelines: int) -> Dict[str, Any]:
        """Which files each input pipeline reads, for the run record."""
        policy, why = self.policy(pipelines)
        return {"pipelines": pipelines, "policy": policy.value, "reason": why,
                "files": {str(i): shard_files(self.files["train"], pipelines, i, policy) for i in range(pipelines)}}

    # ---------------------------------------------------------------------------------- samples
    def _adapt(self, batches: int) -> Tuple[float, Any]:
        """The rescaling (``data.scale``, the spec's, else the largest |value| of the first batches) and a first batch."""
        import numpy as np

        peak, first = 0.0, None
        for x, _ in self.train(self.batch_size).take(batches).as_numpy_iterator():
            first = x if first is None else first
            peak = max(peak, float(np.abs(x).max()) if x.size else 0.0)
        if first is None:
            raise TaskFailedError(f"data.train={self.spec.patterns['train']!r} yielded no batch of {self.batch_size} records.")
        scale = self.spec.scale if self.spec.scale is not None else max(1.0, peak)
        log.info("rescaling by %g (%s)", scale, "declared" if self.spec.scale is not None else f"adapted on {batches} batches")
        return float(scale), first

    def calibration_rows(self, batches: int, batch_size: int, seed: int = 0) -> List[Any]:
        """The first ``batches`` batches of ``batch_size`` rows of the (seeded) training stream."""
        ds = self.train(int(batch_size), seed=int(seed)).take(int(batches))
        return [x.astype("float32") for x, _ in ds.as_numpy_iterator()]

    def evaluation_batches(self, batch_size: Optional[int] = None, split: Optional[str] = None) -> Iterator[Tuple[Any, Any]]:
        """Numpy ``(x, y)`` batches of ``split``, by default the evaluation split (test, else validation), one at a time."""
        ds = self.evaluation(split or self.evaluation_split, batch_size)
        if ds is None:
            raise ConfigError("quantization.evaluation_split", split,
                              f"the streamed data has no {split} files. Set data.{split} to their file pattern, or "
                              "quantization.evaluation_split=test.")
        return ds.as_numpy_iterator()

    def describe(self) -> Dict[str, Any]:
        """What the run record says about the source."""
        return {"source": self.spec.format, "streaming": True,
                "patterns": {s: p for s, p in self.spec.patterns.items() if p},
                "files": {s: len(f) for s, f in self.files.items()},
                "train_records": self.train_records,
                "train_records_from": ("count (cached)" if self.count_cached else "count") if self.records_counted else "declared",
                "scale": self.scale, "adapt_batches": int(self.data.adapt_batches),
                "features": [{"name": f.name, "shape": list(f.shape), "dtype": f.dtype} for f in self.features],
                "label_key": self.spec.label_key, "evaluated_on": self.evaluation_split,
                "read_through": {s: "storage layer" if r else "tf.data" for s, r in self.remote.items()}}


# ------------------------------------------------------------------------------------------ the task's view
def load_source(tf: Any, cfg: ExperimentConfig, *, run_dir: Optional[Path] = None, splits: Any = None) -> Any:
    """The run's data: a :class:`StreamingSource` for ``data=tfrecord`` / ``csv_shards``, else in-memory splits.

    Record counts are cached in ``record_counts.json`` beside the run directory, shared by the runs of an
    experiment and the trials of a study.
    """
    from orchestrator.config.streams import is_streaming

    if is_streaming(cfg.data):
        cache = Path(run_dir).resolve().parent / COUNTS_FILE if run_dir is not None else None
        return StreamingSource(tf, cfg.data, batch_size=int(cfg.trainer.batch_size), seed=int(cfg.trainer.seed), count_cache=cache)
    if splits is not None:
        return splits
    from orchestrator.training.data import load_splits, targets_are_values

    return load_splits(cfg.data, values=targets_are_values(cfg))


def profile_input(tf: Any, source: Any, train_ds: Any, *, batch_size: int, replicas: int, pipelines: int,
                  batches: int) -> Optional[float]:
    """Seconds the input pipeline alone takes to produce one training step's batches (None: profiling off).

    A streamed source is timed as the first input pipeline of this run builds it (its files, its
    per-replica batch, as many batches as its local replicas take per step); in-memory data through
    ``train_ds``, one global batch per step.
    """
    if batches <= 0:
        return None
    if not getattr(source, "streaming", False):
        return seconds_per_batch(train_ds, batches)
    per_replica = tf.distribute.InputContext(pipelines, 0, replicas).get_per_replica_batch_size(batch_size)
    per_step = max(1, replicas // max(1, pipelines))
    spb = seconds_per_batch(source.train(per_replica, pipelines=pipelines, index=0), batches * per_step)
    return None if spb is None else spb * per_step
