"""Serving throughput and latency: in-process signature calls vs the embedded server over REST and gRPC,
and the same API from 1 and 2 Ray Serve replicas.

8 concurrent clients send one digits row per request. Rows: in-process (the SavedModel signature called
from 8 threads), REST and gRPC against ``python -m orchestrator.serving`` in its own process, with
batching off and on, then the p99 latency of gRPC while version 0002 is published and swapped in, against
the p99 of the same load just before. Goals: gRPC >= 0.4x and REST >= 0.25x of in-process throughput,
p99 during a swap <= 3x steady state.

Then ``tfscale serve serving.engine=ray`` on a local Ray with 1 and then 2 replicas: REST and gRPC through
Ray Serve's proxies, the ratio of 2 to 1 replicas (goal >= 1.6x where the replicas, the proxy and the
clients each have cores of their own: on a 2-core machine they all share two cores, so the ratio shows the
CPU bound, not the scaling), and a version published while gRPC clients run against the 2 replicas
(0 failed requests; answers move to the new version replica by replica).

    python benchmarks/serving.py [--seconds 5] [--clients 8] [--ray on|off|only]

Takes about 1-2 minutes, plus about 3 for Ray Serve (each start loads Ray and TensorFlow in every replica);
everything runs on 127.0.0.1 with free ports.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.runtime.tf_env import import_keras, import_tensorflow  # noqa: E402

MODEL = "digits_mlp"


def build_version(path: Path, seed: int) -> None:
    """A digits MLP (64 -> 128 -> 64 -> 10) with tfscale's serving signature, published by rename."""
    tf, keras = import_tensorflow(), import_keras()
    tf.random.set_seed(seed)
    inputs = keras.Input((64,), name="features")
    x = keras.layers.Dense(128, activation="relu")(inputs)
    x = keras.layers.Dense(64, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="features")])
    def serve(features):
        return {"probabilities": model(features, training=False)}  # the model's one output, as tfscale exports it

    tmp = path.parent / f".tmp-{path.name}"
    tf.saved_model.save(model, str(tmp), signatures={"serving_default": serve.get_concrete_function()})
    os.rename(tmp, path)


def drive(clients: int, seconds: float, make_call: Callable[[], Callable[[], int]]) -> List[Tuple[float, float, int]]:
    """Run ``clients`` threads for ``seconds``; each records (start, latency, version) per call."""
    records: List[Tuple[float, float, int]] = []
    errors: List[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(clients)

    def worker():
        call = make_call()
        local = []
        barrier.wait()
        while True:
            t = time.monotonic()
            if t >= stop:
                break
            try:
                v = call()
            except Exception as e:  # counted, reported below
                errors.append(repr(e)[:200])
                continue
            local.append((t, time.monotonic() - t, v))
        with lock:
            records.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        print(f"  !! {len(errors)} failed requests, e.g. {errors[0]}")
    drive.errors = len(errors)  # type: ignore[attr-defined]
    return records


def summarize(records, seconds: float) -> Dict[str, float]:
    lat = np.array([r[1] for r in records]) * 1000
    return {"rps": len(records) / seconds, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "n": len(records)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m orchestrator.serving`` on free ports (``command``: another serve entry point), stopped with SIGTERM."""

    def __init__(self, repo: Path, workdir: Path, *extra: str, command: Tuple[str, ...] = ("-m", "orchestrator.serving"),
                 start_timeout: float = 120):
        self.ready = workdir / f"ready-{time.time_ns()}.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
        self.log = open(workdir / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, *command, f"serving.model_base={repo}",
                                      f"serving.model_name={MODEL}", "serving.rest_port=0", "serving.grpc_port=0",
                                      "serving.file_system_poll_wait_seconds=0.5", f"serving.ready_file={self.ready}",
                                      "serving.log_level=WARNING", *extra],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {workdir / 'server.log'}")
            time.sleep(0.1)
        info = json.loads(self.ready.read_text())
        self.rest_port, self.grpc_port = info["rest_port"], info["grpc_port"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def rest_call(port: int, row: list, client: str = "requests") -> Callable[[], Callable[[], int]]:
    """A REST predict per call, with ``requests`` (what most TF Serving clients use) or the lighter
    stdlib ``http.client`` (less client CPU on a 2-core machine, closer to a curl / Go / Java client)."""
    import http.client

    import requests

    body = json.dumps({"signature_name": "serving_default", "instances": row}).encode()
    path = f"/v1/models/{MODEL}:predict"
    headers = {"Content-Type": "application/json"}

    def make():
        if client == "requests":
            session = requests.Session()
            url = f"http://127.0.0.1:{port}{path}"

            def call():
                r = session.post(url, data=body, headers=headers, timeout=30)
                if r.status_code != 200:
                    raise RuntimeError(r.text)
                return 0
            return call
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def call():
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(data[:200])
            return 0
        return call
    return make


def grpc_call(port: int, row: np.ndarray) -> Callable[[], Callable[[], int]]:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    tf = import_tensorflow()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(row))

    def make():
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

        def call():
            return stub.Predict(request, timeout=30.0).model_spec.version.value
        return call
    return make


def cpu_by_role(root: int) -> Dict[str, float]:
    """CPU seconds used so far by the processes below ``root``, by role: Ray Serve's proxy, the replicas, the
    rest of Ray (and the serve command itself); plus this process (the benchmark's clients)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: Dict[int, int] = {}
    stats: Dict[int, Tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
            fields = tail.split()
            parents[int(entry.name)] = int(fields[1])
            stats[int(entry.name)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / tick)
        except (OSError, IndexError, ValueError):
            continue
    tree, todo = {root}, [root]
    while todo:
        pid = todo.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                todo.append(child)
    out = {"proxy": 0.0, "replicas": 0.0, "Ray and the driver": 0.0}
    for pid in tree:
        name, seconds = stats.get(pid, ("", 0.0))
        # /proc's process names stop at 15 characters: ray::ProxyActor, ray::ServeRepli(ca:...)
        role = "proxy" if "ProxyActor" in name else "replicas" if "ServeRepl" in name else "Ray and the driver"
        out[role] += seconds
    t = os.times()
    out["clients"] = t.user + t.system
    return out


def ray_serve_rows(results: Dict[str, Dict[str, float]], repo: Path, spare: Path, work: Path, row: np.ndarray,
                   args: argparse.Namespace) -> Dict[str, float]:
    """REST and gRPC through Ray Serve with 1 and 2 replicas, then a version swap under gRPC load on 2."""
    swap: Dict[str, float] = {}
    for replicas in (1, 2):
        print(f"Ray Serve with {replicas} replica(s): starting (local Ray, TensorFlow in each replica) ...", flush=True)
        server = ServerProcess(repo, work, "serving.engine=ray", f"serving.replicas={replicas}",
                               command=("-m", "orchestrator.app.cli", "serve"), start_timeout=300)
        try:
            tag = f"{replicas} replica{'s' if replicas > 1 else ''}"
            for name, make in ((f"Ray Serve REST http.client, {tag}", rest_call(server.rest_port, row.tolist(), "http.client")),
                               (f"Ray Serve gRPC, {tag}", grpc_call(server.grpc_port, row))):
                drive(args.clients, 2.0, make)  # warm connections and both replicas
                print(f"{name}: {args.clients} clients x {args.seconds:.0f}s ...", flush=True)
                before, t0 = cpu_by_role(server.proc.pid), time.monotonic()
                results[name] = summarize(drive(args.clients, args.seconds, make), args.seconds)
                after, wall = cpu_by_role(server.proc.pid), time.monotonic() - t0
                results[name]["failed"] = drive.errors  # type: ignore[attr-defined]
                results[name]["cores"] = {k: (after[k] - before[k]) / wall for k in after}  # type: ignore[assignment]
            if replicas == 2:
                swap = ray_swap(server, repo, spare, row, args)
        finally:
            server.stop()
    return swap


def ray_swap(server: "ServerProcess", repo: Path, spare: Path, row: np.ndarray, args: argparse.Namespace) -> Dict[str, float]:
    """gRPC clients against the replicas while the next version is published: failures and how long the roll took."""
    published = [int(p.name) for p in (repo / MODEL).iterdir() if p.name.isdigit()]
    new = max(published) + 1
    make = grpc_call(server.grpc_port, row)
    window = max(args.seconds, 4.0)
    publish_at: Dict[str, float] = {}

    def publish():
        time.sleep(window)
        publish_at["t"] = time.monotonic()
        shutil.copytree(spare / "0002", repo / MODEL / f".tmp-{new:04d}")
        os.rename(repo / MODEL / f".tmp-{new:04d}", repo / MODEL / f"{new:04d}")

    print(f"Ray Serve gRPC during a version swap (2 replicas): {3 * window:.0f}s, {new:04d} published after "
          f"{window:.0f}s ...", flush=True)
    publisher = threading.Thread(target=publish)
    publisher.start()
    records = drive(args.clients, 3 * window, make)
    publisher.join()
    t_pub = publish_at["t"]
    during = [r for r in records if r[0] >= t_pub]
    on_new = [r[0] for r in during if r[2] == new]
    old_after = [r[0] for r in during if r[2] != new]
    return {"failed": drive.errors, "requests": len(records),  # type: ignore[attr-defined]
            "first_new_s": (min(on_new) - t_pub) if on_new else float("nan"),
            "last_old_s": (max(old_after) - t_pub) if old_after else 0.0,
            "p99_during": summarize(during, 1.0)["p99"] if during else float("nan"),
            "p99_before": summarize([r for r in records if r[0] < t_pub], 1.0)["p99"]}


def print_ray_summary(results: Dict[str, Dict[str, float]], swap: Dict[str, float], clients: int) -> None:
    """The 2-vs-1 replica ratios, the CPU bound, and the swap under load."""
    cores = os.cpu_count() or 1
    print()
    for proto in ("REST http.client", "gRPC"):
        one, two = results.get(f"Ray Serve {proto}, 1 replica"), results.get(f"Ray Serve {proto}, 2 replicas")
        if one and two:
            ratio = two["rps"] / one["rps"]
            print(f"Ray Serve {proto}: 2 replicas / 1 replica = {ratio:.2f}  (goal >= 1.60 with a core per replica, "
                  f"the proxy and the clients)  {'met' if ratio >= 1.6 else 'NOT met'}")
    print(f"  CPU bound: this machine has {cores} core(s) (load average {os.getloadavg()[0]:.1f}) shared by "
          f"{clients} client threads, Ray Serve's proxy, Ray's own processes and every replica; a second "
          "replica adds no core, so the ratio measures contention here, not scale-out. Cores busy per row:")
    for name, r in results.items():
        if "cores" in r:
            busy = r["cores"]  # type: ignore[index]
            per_request = 1000 * sum(busy.values()) / max(r["rps"], 1e-9)
            print(f"    {name:<38} " + ", ".join(f"{k} {v:.2f}" for k, v in busy.items())  # type: ignore[union-attr]
                  + f"  = {sum(busy.values()):.2f} cores, {per_request:.1f} CPU ms per request")  # type: ignore[union-attr]
    if swap:
        print(f"Ray Serve swap under load: {swap['requests']} requests, failed: {swap['failed']}; answers from the new "
              f"version {swap['first_new_s']:.2f}s after publishing, last answer from the old one at "
              f"{swap['last_old_s']:.2f}s; p99 {swap['p99_before']:.2f} ms before, {swap['p99_during']:.2f} ms during")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ray", choices=("on", "off", "only"), default="on",
                        help="Ray Serve rows after the embedded server (on), none (off), or only them and in-process")
    args = parser.parse_args()
    tf = import_tensorflow()
    work = Path(tempfile.mkdtemp(prefix="tfscale-serving-bench-"))
    repo = work / "models"
    (repo / MODEL).mkdir(parents=True)
    build_version(repo / MODEL / "0001", seed=1)
    spare = work / "spare"
    spare.mkdir()
    build_version(spare / "0002", seed=2)
    row = np.random.default_rng(0).random((1, 64)).astype(np.float32) * 16
    results: Dict[str, Dict[str, float]] = {}
    try:
        fn = tf.saved_model.load(str(repo / MODEL / "0001")).signatures["serving_default"]

        def in_process():
            def call():
                fn(features=tf.constant(row))["probabilities"].numpy()
                return 1
            return call

        drive(args.clients, 1.0, in_process)
        print(f"in-process: {args.clients} threads x {args.seconds:.0f}s ...", flush=True)
        results["in-process"] = summarize(drive(args.clients, args.seconds, in_process), args.seconds)

        for batching in (False, True) if args.ray != "only" else ():
            extra = ["serving=batching", "serving.batching.max_batch_size=8",
                     "serving.batching.batch_timeout_micros=500"] if batching else []
            server = ServerProcess(repo, work, *extra)
            try:
                tag = "on" if batching else "off"
                for name, make in (("REST", rest_call(server.rest_port, row.tolist())),
                                   ("REST http.client", rest_call(server.rest_port, row.tolist(), "http.client")),
                                   ("gRPC", grpc_call(server.grpc_port, row))):
                    drive(args.clients, 1.0, make)  # warm connections
                    print(f"{name} batching {tag}: {args.clients} clients x {args.seconds:.0f}s ...", flush=True)
                    results[f"{name} (batching {tag})"] = summarize(drive(args.clients, args.seconds, make), args.seconds)
            finally:
                server.stop()

        # The machine may be shared: measure the baseline again and keep the better run, so the ratios
        # below are not flattered by a baseline taken while something else was busy.
        print("in-process again ...", flush=True)
        again = summarize(drive(args.clients, args.seconds, in_process), args.seconds)
        if again["rps"] > results["in-process"]["rps"]:
            results["in-process"] = again

        if args.ray != "only":
            # p99 while a version is published and swapped in, vs the same load just before.
            server = ServerProcess(repo, work)
            try:
                make = grpc_call(server.grpc_port, row)
                drive(args.clients, 1.0, make)
                window = max(args.seconds, 4.0)
                publish_at: Dict[str, float] = {}

                def publish():
                    time.sleep(window)
                    publish_at["t"] = time.monotonic()
                    shutil.copytree(spare / "0002", repo / MODEL / ".tmp-0002")
                    os.rename(repo / MODEL / ".tmp-0002", repo / MODEL / "0002")

                print(f"gRPC during a version swap: {2 * window:.0f}s, 0002 published after {window:.0f}s ...", flush=True)
                publisher = threading.Thread(target=publish)
                publisher.start()
                records = drive(args.clients, 2 * window, make)
                publisher.join()
                failed = drive.errors  # type: ignore[attr-defined]
                t_pub = publish_at["t"]
                before = [r for r in records if r[0] < t_pub]
                during = [r for r in records if r[0] >= t_pub]
                swapped = [r[0] for r in during if r[2] == 2]
                results["gRPC steady (before swap)"] = summarize(before, t_pub - min(r[0] for r in records))
                results["gRPC during swap"] = summarize(during, max(r[0] for r in records) - t_pub)
                results["gRPC during swap"]["failed"] = failed
                swap_s = (min(swapped) - t_pub) if swapped else float("nan")
            finally:
                server.stop()
        if args.ray != "off":
            swap_result = ray_serve_rows(results, repo, spare, work, row, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = results["in-process"]["rps"]
    print()
    print(f"{'mode':<40}{'req/s':>10}{'x in-process':>14}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in results.items():
        print(f"{name:<40}{r['rps']:>10.0f}{r['rps'] / base:>14.2f}{r['p50']:>10.2f}{r['p99']:>10.2f}")
    if args.ray != "off":
        print_ray_summary(results, swap_result, args.clients)
    if args.ray == "only":
        return 0
    steady = results["gRPC steady (before swap)"]["p99"]
    during = results["gRPC during swap"]["p99"]
    best_grpc = max(results["gRPC (batching off)"]["rps"], results["gRPC (batching on)"]["rps"]) / base
    best_rest = max(r["rps"] for k, r in results.items() if k.startswith("REST")) / base
    print()
    print(f"gRPC / in-process  = {best_grpc:.2f}  (goal >= 0.40)  {'met' if best_grpc >= 0.4 else 'NOT met'}")
    print(f"REST / in-process  = {best_rest:.2f}  (goal >= 0.25)  {'met' if best_rest >= 0.25 else 'NOT met'}")
    print(f"p99 swap / steady  = {during / steady:.2f}  (goal <= 3.00)  {'met' if during <= 3 * steady else 'NOT met'}"
          f"  [answers on v2 {swap_s:.2f}s after publishing; failed requests: {results['gRPC during swap']['failed']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
