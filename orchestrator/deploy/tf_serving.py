"""``deploy=tf_serving``: publish the version to a TF Serving deployment and smoke-test it.

Writes into the repository (``export.model_base``): ``models.config`` (this model's entry merged with the
entries of other models), ``models.container.config`` (the same with base paths under ``/models`` for the
container), the batching parameters file and the monitoring config. Writes to ``<run_dir>/tf_serving/``:
the launch plan (``tensorflow_model_server`` and ``docker run`` lines) and a Kubernetes Deployment +
Service manifest. Then starts ``tensorflow_model_server`` if it is on PATH (or the embedded server, in a
child process), waits for the version to be AVAILABLE, compares REST and gRPC answers with the SavedModel
run in process, and stops the server again unless ``keep_running``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

from orchestrator.artifacts import publish
from orchestrator.deploy.base import DeployTarget
from orchestrator.errors import ConfigError, TaskFailedError
from orchestrator.runtime import supervisor

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig
    from orchestrator.config.serving import TfServingDeployConfig

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TfServingTarget(DeployTarget):
    """Files, launch plan and manifest of a TF Serving deployment, plus a REST + gRPC smoke test."""

    name = "tf_serving"

    def check(self, cfg: ExperimentConfig) -> None:
        from orchestrator.config.serving import check_tf_serving_deploy

        d = cfg.deploy.get("tf_serving") if hasattr(cfg.deploy, "get") else getattr(cfg.deploy, "tf_serving", None)
        if d is None:
            raise ConfigError("deploy.tf_serving", None, "Use deploy=tf_serving so its settings are composed.")
        check_tf_serving_deploy(d)
        if not cfg.export.enabled:
            raise ConfigError("export.enabled", False, "deploy=tf_serving serves the exported SavedModel; use export=saved_model.")
        if "://" in str(cfg.export.model_base) and not str(cfg.export.model_base).startswith("file://"):
            raise ConfigError("export.model_base", cfg.export.model_base, "deploy=tf_serving writes models.config into a "
                              "local repository and smoke-tests it; with a bucket use deploy=none and serve it with "
                              "`tfscale serve serving.model_base=<the bucket URI>`.")
        if d.launch == "binary" and shutil.which(d.binary) is None:
            raise ConfigError("deploy.tf_serving.launch", "binary", f"{d.binary!r} is not on PATH; install TF Serving, "
                              "set deploy.tf_serving.binary to its path, or use launch=auto / embedded.")

    def deploy(self, cfg: ExperimentConfig, version_dir: Path, run_dir: Path) -> Dict[str, Any]:
        from orchestrator.serving import config_files as cf
        from orchestrator.serving.repository import ModelEntry
        from orchestrator.serving.server import policy_of

        d = cfg.deploy.tf_serving
        version_dir = Path(version_dir).resolve()
        model_dir = version_dir.parent
        model_base = model_dir.parent
        name = model_dir.name
        version = int(version_dir.name)
        out = Path(run_dir) / "tf_serving"
        out.mkdir(parents=True, exist_ok=True)

        labels = {str(k): int(v) for k, v in dict(d.version_labels).items()}
        if d.label_new_version:
            labels[str(d.label_new_version)] = version
        entry = ModelEntry(name, str(model_dir), policy_of(d.version_policy), labels)
        config_path = model_base / cf.MODELS_CONFIG
        entries = cf.update_models_config(config_path, entry)
        cf.write_models_config(model_base / cf.CONTAINER_MODELS_CONFIG, [_in_container(e, model_base) for e in entries])
        files = {"models_config": str(config_path), "container_models_config": str(model_base / cf.CONTAINER_MODELS_CONFIG)}
        if d.batching.enabled:
            publish.write_text(model_base / cf.BATCHING_FILE, cf.batching_text(d.batching))
            files["batching_parameters_file"] = str(model_base / cf.BATCHING_FILE)
        if d.monitoring.prometheus:
            publish.write_text(model_base / cf.MONITORING_FILE, cf.monitoring_text(d.monitoring))
            files["monitoring_config_file"] = str(model_base / cf.MONITORING_FILE)

        plan = cf.launch_plan(d, model_base)
        publish.write_text(out / "launch_plan.sh", "#!/bin/sh\n# TensorFlow Serving binary:\n" + plan["binary_command"]
                           + "\n\n# or the container:\n# " + plan["docker_command"] + "\n")
        print(f"[tf_serving] launch plan:\n  {plan['binary_command']}\n  {plan['docker_command']}", flush=True)
        import yaml

        manifest = out / "kubernetes.yaml"
        publish.write_text(manifest, yaml.safe_dump_all(cf.kubernetes_manifest(d, model_base, _k8s_name(name), model=name), sort_keys=False))
        files["kubernetes_manifest"] = str(manifest)

        notes = _label_notes(entry)
        for note in notes:
            print(f"[tf_serving] note: {note}", flush=True)
        result: Dict[str, Any] = {"target": self.name, "model": name, "version": version, "labels": labels, "notes": notes,
                                  "files": files, "launch_plan": {"binary": plan["binary_command"],
                                                                  "docker": plan["docker_command"]}}
        if d.launch != "none":
            result["smoke_test"] = smoke_test(d, config_path, model_base, name, version, version_dir, out)
        return result


def _label_notes(entry: Any) -> List[str]:
    """Labels that tensorflow_model_server would refuse: it labels only versions its policy loads."""
    from orchestrator.serving.repository import version_dirs

    published = version_dirs(entry.base_path)
    loaded = set(entry.policy.select(list(published)))
    notes = []
    for label, v in sorted(entry.labels.items()):
        if v not in published:
            notes.append(f"label '{label}' -> version {v}, which is not published under {entry.base_path}.")
        elif v not in loaded:
            notes.append(f"label '{label}' -> version {v} is outside the version policy ({entry.policy.policy}); "
                         "tensorflow_model_server will not load it (the embedded server does). Use "
                         "deploy.tf_serving.version_policy.policy=specific with that version, or policy=all.")
    return notes


def _in_container(entry: Any, model_base: Path) -> Any:
    from orchestrator.serving.config_files import CONTAINER_BASE

    try:
        rel = Path(entry.base_path).resolve().relative_to(model_base.resolve())
    except ValueError:
        return entry  # outside the mounted repository: the path is kept as the user wrote it
    return replace(entry, base_path=f"{CONTAINER_BASE}/{rel.as_posix()}")


def _k8s_name(model: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in model.lower()).strip("-")
    return f"tf-serving-{cleaned}"[:63]


# ------------------------------------------------------------------------------------------ smoke test
def smoke_test(d: TfServingDeployConfig, config_path: Path, model_base: Path, name: str, version: int, version_dir: Path,
               out: Path) -> Dict[str, Any]:
    """Start a server on the repository, check ``name``/``version`` answers like the SavedModel in process."""
    import numpy as np

    from orchestrator.serving.config_files import BATCHING_FILE, MONITORING_FILE, server_args

    binary = shutil.which(d.binary) if d.launch in ("auto", "binary") else None
    rest_port = d.smoke_rest_port or _free_port()
    grpc_port = d.smoke_grpc_port or _free_port()
    log_path = out / "server.log"
    # The binary and the embedded server get the same flags and read the same files: the smoke test runs
    # what the launch plan runs.
    flags = server_args(grpc_port=grpc_port, rest_port=rest_port, config_file=str(config_path),
                        batching_file=str(model_base / BATCHING_FILE) if d.batching.enabled else None,
                        monitoring_file=str(model_base / MONITORING_FILE) if d.monitoring.prometheus else None,
                        poll_seconds=d.file_system_poll_wait_seconds)
    if binary:
        cmd = [binary, *flags]
        kind = "tensorflow_model_server"
    else:
        cmd = [sys.executable, "-m", "orchestrator.serving", "serve", *flags, f"serving.model_base={model_base}",
               "serving.host=127.0.0.1"]  # a smoke test needs no other machine
        kind = "embedded"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")] if p)
    log_file = open(log_path, "ab")
    # Dies with the task process (the supervisor's promise) unless the user asked it to keep running.
    proc = supervisor.start(cmd, env=env, stdout=log_file, stderr=supervisor.STDOUT, exit_grace=20.0,
                            outlive_parent=bool(d.keep_running))
    result: Dict[str, Any] = {"server": kind, "pid": proc.pid, "rest_port": rest_port, "grpc_port": grpc_port,
                              "command": cmd, "log": str(log_path)}
    try:
        t0 = time.monotonic()
        state = _wait_available(proc, rest_port, name, version, d.smoke_timeout_s, log_path)
        result.update(state=state, seconds_to_available=round(time.monotonic() - t0, 2))
        rows = _test_rows(version_dir, d.smoke_rows)
        expected = _in_process(version_dir, rows)
        rest_out, rest_ms = _rest_predict(rest_port, name, version, rows, sorted(expected))
        grpc_out, grpc_ms, served_version = _grpc_predict(grpc_port, name, version, rows)
        exp_classes = np.asarray(expected["classes"]) if "classes" in expected else None
        for label, got in (("rest", rest_out), ("grpc", grpc_out)):
            diffs = [float(np.max(np.abs(np.asarray(got[k], dtype=np.float64) - np.asarray(v, dtype=np.float64))))
                     for k, v in expected.items() if np.asarray(v).dtype.kind in "fiu"]
            result[f"{label}_max_abs_diff"] = max(diffs) if diffs else 0.0
            if exp_classes is not None:
                result[f"{label}_agreement"] = float(np.mean(np.asarray(got["classes"]) == exp_classes))
        result.update(rows=len(rows), served_version=served_version, rest_latency_ms=rest_ms, grpc_latency_ms=grpc_ms)
        ok = (result["rest_max_abs_diff"] <= 1e-4 and result["grpc_max_abs_diff"] <= 1e-4
              and result.get("rest_agreement", 1.0) == 1.0 and result.get("grpc_agreement", 1.0) == 1.0)
        result["passed"] = bool(ok and served_version == version)
        if not result["passed"]:
            raise TaskFailedError(f"TF Serving smoke test failed for {name} version {version}: {json.dumps(result, default=str)}")
        print(f"[tf_serving] smoke test passed on {kind} server: version {version} AVAILABLE, REST and gRPC agree "
              f"with the SavedModel ({result['rest_latency_ms']:.1f} / {result['grpc_latency_ms']:.1f} ms)", flush=True)
        return result
    finally:
        if d.keep_running and result.get("passed"):
            result["running"] = True
            print(f"[tf_serving] server keeps running: pid {proc.pid}, REST {rest_port}, gRPC {grpc_port}", flush=True)
        else:
            proc.stop(20.0)
            result["running"] = False
        log_file.close()


def _wait_available(proc: supervisor.Child, port: int, name: str, version: int, timeout: float, log_path: Path) -> str:
    import requests

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise TaskFailedError(f"The model server exited with code {proc.returncode} before serving {name}:\n{tail}")
        try:
            r = requests.get(f"http://127.0.0.1:{port}/v1/models/{name}/versions/{version}", timeout=2)
            if r.status_code == 200:
                state = r.json()["model_version_status"][0]["state"]
                if state == "AVAILABLE":
                    return state
                last = state
            else:
                last = r.text[:200]
        except requests.RequestException as e:
            last = type(e).__name__
        time.sleep(0.25)
    raise TaskFailedError(f"{name} version {version} was not AVAILABLE after {timeout:.0f}s (last: {last}); see {log_path}")


def _signature(version_dir: Path) -> Any:
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    return tf.saved_model.load(str(version_dir)).signatures["serving_default"]


def _test_rows(version_dir: Path, n: int) -> Dict[str, Any]:
    import numpy as np

    fn = _signature(version_dir)
    rng = np.random.default_rng(0)
    rows = {}
    for key, spec in fn.structured_input_signature[1].items():
        shape = [n] + [1 if s is None else s for s in spec.shape.as_list()[1:]]
        rows[key] = (rng.random(shape) * 16).astype(spec.dtype.as_numpy_dtype)
    return rows


def _in_process(version_dir: Path, rows: Dict[str, Any]) -> Dict[str, Any]:
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    out = _signature(version_dir)(**{k: tf.constant(v) for k, v in rows.items()})
    return {k: v.numpy() for k, v in out.items()}


def _rest_predict(port: int, name: str, version: int, rows: Dict[str, Any], outputs: List[str]):
    """REST predictions as ``{output: array}``; with one output TF Serving omits its name, so it comes from ``outputs``."""
    import numpy as np
    import requests

    keys = sorted(rows)
    n = len(rows[keys[0]])
    instances = rows[keys[0]].tolist() if len(keys) == 1 else [{k: rows[k][i].tolist() for k in keys} for i in range(n)]
    times: List[float] = []
    with requests.Session() as session:
        for _ in range(5):
            t = time.perf_counter()
            r = session.post(f"http://127.0.0.1:{port}/v1/models/{name}/versions/{version}:predict",
                             json={"signature_name": "serving_default", "instances": instances}, timeout=30)
            times.append((time.perf_counter() - t) * 1000)
            if r.status_code != 200:
                raise TaskFailedError(f"REST predict answered {r.status_code}: {r.text[:500]}")
    preds = r.json()["predictions"]
    if len(outputs) > 1:
        got = {k: np.array([p[k] for p in preds]) for k in preds[0]}
    else:
        got = {outputs[0]: np.array(preds)}
    return got, round(float(np.median(times)), 3)


def _grpc_predict(port: int, name: str, version: int, rows: Dict[str, Any]):
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.version.value = version
    request.model_spec.signature_name = "serving_default"
    for k, v in rows.items():
        request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    times: List[float] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(5):
            t = time.perf_counter()
            try:
                response = stub.Predict(request, timeout=30.0)
            except grpc.RpcError as e:
                raise TaskFailedError(f"gRPC Predict failed: {e.code().name}: {e.details()}") from None
            times.append((time.perf_counter() - t) * 1000)
    got = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    return got, round(float(np.median(times)), 3), int(response.model_spec.version.value)
