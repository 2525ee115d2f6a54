"""A local stand-in for the Vertex AI API: JobService, ModelService, EndpointService, PredictionService and
google.longrunning.Operations over plaintext gRPC on 127.0.0.1, (de)serialising with the SDK's own types.

It records every request it receives and scripts job states (PENDING -> RUNNING -> SUCCEEDED, or FAILED
with an error), so tests can assert on what tfscale sent and on how it followed the job. With ``run_jobs``
it runs a CustomJob's worker-pool commands instead, as local processes, the way Vertex runs replicas: each
with TF_CONFIG (chief, worker, ps from pools 0-2), ``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR`` and
``AIP_TENSORBOARD_LOG_DIR`` below the job's base output directory, in a working directory of its own; the
job is RUNNING while they run and SUCCEEDED when every chief and worker exited 0. ``unavailable`` makes the
next polls answer UNAVAILABLE.
"""
from __future__ import annotations

import json
import os
import random
import socket
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import grpc
from google.cloud import aiplatform_v1 as v1
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, struct_pb2

S = v1.JobState


class FakeVertex:
    """The fake API. ``outcome`` decides how the next jobs end: ``succeed`` or ``fail``."""

    def __init__(self, run_jobs: bool = False, env: Optional[Dict[str, str]] = None) -> None:
        self.run_jobs = run_jobs
        self.env = dict(env or {})  # added to the replicas' environment (e.g. STORAGE_EMULATOR_HOST)
        self.unavailable = 0  # the next N job polls answer UNAVAILABLE
        self.replicas: Dict[str, List[Dict[str, Any]]] = {}  # job name -> [{"role", "index", "child", "log", "cwd"}]
        self._polled: set = set()
        self._cancelled: set = set()
        self.requests: List[Tuple[str, Any]] = []
        self.polls: List[str] = []
        self.outcome = "succeed"
        self.failure_message = "The replica workerpool0-0 exited with a non-zero status of 1."
        self.jobs: Dict[str, Any] = {}
        self.scripts: Dict[str, List[Any]] = {}
        self.models: Dict[str, Dict[str, Any]] = {}  # model name -> {"display_name", "versions": {id: Model}}
        self.endpoints: Dict[str, Any] = {}
        self.operations: Dict[str, operations_pb2.Operation] = {}
        self._lock = threading.Lock()
        self._ids = 100
        self.server = None
        self.address = ""

    # ---------------------------------------------------------------------------------- plumbing
    def start(self) -> "FakeVertex":
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "google.cloud.aiplatform.v1.JobService": {
                "CreateCustomJob": (self.create_custom_job, v1.CreateCustomJobRequest, v1.CustomJob),
                "GetCustomJob": (self.get_job, v1.GetCustomJobRequest, v1.CustomJob),
                "CancelCustomJob": (self.cancel_job, v1.CancelCustomJobRequest, None),
                "CreateHyperparameterTuningJob": (self.create_tuning_job, v1.CreateHyperparameterTuningJobRequest, v1.HyperparameterTuningJob),
                "GetHyperparameterTuningJob": (self.get_job, v1.GetHyperparameterTuningJobRequest, v1.HyperparameterTuningJob),
                "CancelHyperparameterTuningJob": (self.cancel_job, v1.CancelHyperparameterTuningJobRequest, None),
            },
            "google.cloud.aiplatform.v1.ModelService": {
                "UploadModel": (self.upload_model, v1.UploadModelRequest, "op"),
                "GetModel": (self.get_model, v1.GetModelRequest, v1.Model),
                "ListModels": (self.list_models, v1.ListModelsRequest, v1.ListModelsResponse),
                "MergeVersionAliases": (self.merge_aliases, v1.MergeVersionAliasesRequest, v1.Model),
            },
            "google.cloud.aiplatform.v1.EndpointService": {
                "CreateEndpoint": (self.create_endpoint, v1.CreateEndpointRequest, "op"),
                "GetEndpoint": (self.get_endpoint, v1.GetEndpointRequest, v1.Endpoint),
                "ListEndpoints": (self.list_endpoints, v1.ListEndpointsRequest, v1.ListEndpointsResponse),
                "DeployModel": (self.deploy_model, v1.DeployModelRequest, "op"),
                "UpdateEndpoint": (self.update_endpoint, v1.UpdateEndpointRequest, v1.Endpoint),
            },
            "google.cloud.aiplatform.v1.PredictionService": {
                "Predict": (self.predict, v1.PredictRequest, v1.PredictResponse),
            },
            "google.longrunning.Operations": {
                "GetOperation": (self.get_operation, operations_pb2.GetOperationRequest, "op"),
            },
        }
        generic = []
        for service, methods in handlers.items():
            table = {}
            for method, (fn, req, resp) in methods.items():
                table[method] = grpc.unary_unary_rpc_method_handler(
                    self._recording(method, fn),
                    request_deserializer=req.FromString if req is operations_pb2.GetOperationRequest else req.deserialize,
                    response_serializer=_serializer(resp))
            generic.append(grpc.method_handlers_generic_handler(service, table))
        self.server.add_generic_rpc_handlers(generic)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None)
        import shutil

        for replicas in self.replicas.values():
            for r in replicas:
                r["child"].stop(5)
                shutil.rmtree(r["cwd"], ignore_errors=True)
                r["log"].unlink(missing_ok=True)

    def replica_logs(self) -> str:
        """Every replica's output so far (for a failing test's message)."""
        return "\n".join(f"--- {r['role']}:{r['index']} ---\n{r['log'].read_text(errors='replace')[-3000:]}"
                         for replicas in self.replicas.values() for r in replicas if r["log"].exists())

    def _recording(self, method: str, fn: Any) -> Any:
        def handle(request: Any, context: Any) -> Any:
            with self._lock:
                self.requests.append((method, request))
            return fn(request, context)

        return handle

    def received(self, method: str) -> List[Any]:
        return [r for m, r in self.requests if m == method]

    def _id(self) -> str:
        with self._lock:
            self._ids += 1
            return str(self._ids)

    def _done(self, response: Any) -> operations_pb2.Operation:
        packed = any_pb2.Any()
        packed.Pack(type(response).pb(response))
        op = operations_pb2.Operation(name=f"projects/p/locations/r/operations/{self._id()}", done=True, response=packed)
        self.operations[op.name] = op
        return op

    # --------------------------------------------------------------------------------------- jobs
    def _script(self) -> List[Any]:
        end = S.JOB_STATE_SUCCEEDED if self.outcome == "succeed" else S.JOB_STATE_FAILED
        return [S.JOB_STATE_PENDING, S.JOB_STATE_RUNNING, S.JOB_STATE_RUNNING, end]

    def create_custom_job(self, request: Any, context: Any) -> Any:
        job = v1.CustomJob(request.custom_job)
        job.name = f"{request.parent}/customJobs/{self._id()}"
        job.state = S.JOB_STATE_QUEUED
        self.jobs[job.name] = job
        if self.run_jobs:
            self.replicas[job.name] = self._start_replicas(job)
        else:
            self.scripts[job.name] = self._script()
        return job

    def _start_replicas(self, job: Any) -> List[Dict[str, Any]]:
        """Every replica of every pool as a local process (see the module doc)."""
        from orchestrator.runtime import supervisor

        roles = ("chief", "worker", "ps", "evaluator")
        pools = [(roles[i], pool) for i, pool in enumerate(job.job_spec.worker_pool_specs) if pool.replica_count]
        cluster = {role: [f"127.0.0.1:{_free_port()}" for _ in range(pool.replica_count)]
                   for role, pool in pools if role != "evaluator"}
        base = job.job_spec.base_output_directory.output_uri_prefix.rstrip("/")
        job_id = job.name.rsplit("/", 1)[1]
        started = []
        for role, pool in pools:
            package, container = pool.python_package_spec, pool.container_spec
            if package.python_module:
                argv = [sys.executable, "-m", package.python_module, *package.args]
                extra = {e.name: e.value for e in package.env}
            else:
                argv = [sys.executable if c == "python" else c for c in container.command] + list(container.args)
                extra = {e.name: e.value for e in container.env}
            for index in range(pool.replica_count):
                env = dict(os.environ, **self.env, **extra)
                env.update(CLOUD_ML_JOB_ID=job_id, AIP_MODEL_DIR=f"{base}/model/", AIP_CHECKPOINT_DIR=f"{base}/checkpoints/",
                           AIP_TENSORBOARD_LOG_DIR=f"{base}/logs/", TF_CPP_MIN_LOG_LEVEL="2",
                           TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": role, "index": index},
                                                 "environment": "cloud"}))
                cwd = Path(tempfile.mkdtemp(prefix=f"fake-vertex-{role}{index}-"))
                log = cwd.parent / f"{cwd.name}.log"
                # No pre-exec hook (outlive_parent): Python code run in a child forked from a gRPC server thread can
                # crash; stop() ends the replicas instead.
                child = supervisor.start(argv, env=env, cwd=cwd, stdout=open(log, "wb"), stderr=supervisor.STDOUT,
                                         outlive_parent=True)
                started.append({"role": role, "index": index, "child": child, "log": log, "cwd": cwd})
        return started

    def _replica_state(self, job: Any) -> Any:
        """The job's state from its replicas: RUNNING until every chief and worker ended, then how they ended."""
        replicas = self.replicas[job.name]
        trainers = [r for r in replicas if r["role"] in ("chief", "worker")]
        if job.name not in self._polled:
            self._polled.add(job.name)
            return S.JOB_STATE_PENDING
        if any(r["child"].poll() is None for r in trainers):
            return S.JOB_STATE_RUNNING
        for r in replicas:  # parameter servers never end by themselves: Vertex stops them with the job
            if r["child"].poll() is None:
                r["child"].stop(5)
        failed = [r for r in trainers if r["child"].returncode != 0]
        if failed:
            r = failed[0]
            tail = r["log"].read_text(errors="replace")[-1500:]
            job.error = {"code": 3, "message": f"The replica workerpool0-{r['index']} ({r['role']}) exited with a "
                                               f"non-zero status of {r['child'].returncode}. {tail}"}
            return S.JOB_STATE_FAILED
        return S.JOB_STATE_SUCCEEDED

    def create_tuning_job(self, request: Any, context: Any) -> Any:
        job = v1.HyperparameterTuningJob(request.hyperparameter_tuning_job)
        job.name = f"{request.parent}/hyperparameterTuningJobs/{self._id()}"
        job.state = S.JOB_STATE_QUEUED
        self.jobs[job.name] = job
        self.scripts[job.name] = self._script()
        return job

    def get_job(self, request: Any, context: Any) -> Any:
        job = self.jobs.get(request.name)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        if self.unavailable > 0:
            self.unavailable -= 1
            self.polls.append("UNAVAILABLE")
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake Vertex: the service is unavailable right now")
        if request.name in self.replicas and request.name not in self._cancelled:
            job.state = self._replica_state(job)
            self.polls.append(job.state.name)
            return job
        script = self.scripts[request.name]
        if script:
            job.state = script.pop(0)
            self.polls.append(job.state.name)
            if job.state == S.JOB_STATE_FAILED:
                job.error = {"code": 3, "message": self.failure_message}
            if job.state == S.JOB_STATE_SUCCEEDED and isinstance(job, v1.HyperparameterTuningJob):
                _add_trials(job)
        return job

    def cancel_job(self, request: Any, context: Any) -> Any:
        job = self.jobs[request.name]
        for r in self.replicas.get(request.name, []):
            r["child"].stop(5)
        self._cancelled.add(request.name)
        job.state = S.JOB_STATE_CANCELLED
        self.scripts[request.name] = []
        return None

    # ------------------------------------------------------------------------------------- models
    def upload_model(self, request: Any, context: Any) -> Any:
        model = v1.Model(request.model)
        if request.parent_model:
            name = request.parent_model
            entry = self.models[name]
        else:
            name = f"{request.parent}/models/{self._id()}"
            entry = self.models[name] = {"display_name": model.display_name, "versions": {}}
        version = str(len(entry["versions"]) + 1)
        model.name, model.version_id = name, version
        aliases = list(model.version_aliases)
        if not entry["versions"]:
            aliases = ["default"] + aliases  # Vertex gives the first version the "default" alias
        model.version_aliases = []
        entry["versions"][version] = model
        self._move_aliases(entry, version, aliases)
        return self._done(v1.UploadModelResponse(model=name, model_version_id=version))

    def _move_aliases(self, entry: Dict[str, Any], version: str, aliases: List[str]) -> None:
        for other in entry["versions"].values():
            other.version_aliases = [a for a in other.version_aliases if a not in aliases]
        target = entry["versions"][version]
        target.version_aliases = list(target.version_aliases) + [a for a in aliases if a not in target.version_aliases]

    def _resolve(self, name: str, context: Any) -> Tuple[Dict[str, Any], Any]:
        base, _, ref = name.partition("@")
        entry = self.models.get(base)
        if entry is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{base} not found")
        for version_id, model in entry["versions"].items():
            if ref in ("", version_id) and (ref or "default" in model.version_aliases) or ref in model.version_aliases:
                return entry, model
        context.abort(grpc.StatusCode.NOT_FOUND, f"{name} not found")

    def get_model(self, request: Any, context: Any) -> Any:
        return self._resolve(request.name, context)[1]

    def list_models(self, request: Any, context: Any) -> Any:
        out = []
        for name, entry in self.models.items():
            if f'display_name="{entry["display_name"]}"' == request.filter or not request.filter:
                out.append(next(m for m in entry["versions"].values() if "default" in m.version_aliases))
        return v1.ListModelsResponse(models=out)

    def merge_aliases(self, request: Any, context: Any) -> Any:
        entry, model = self._resolve(request.name, context)
        self._move_aliases(entry, model.version_id, list(request.version_aliases))
        return model

    # ---------------------------------------------------------------------------------- endpoints
    def create_endpoint(self, request: Any, context: Any) -> Any:
        endpoint = v1.Endpoint(request.endpoint)
        endpoint.name = f"{request.parent}/endpoints/{self._id()}"
        self.endpoints[endpoint.name] = endpoint
        return self._done(endpoint)

    def get_endpoint(self, request: Any, context: Any) -> Any:
        return self.endpoints[request.name]

    def list_endpoints(self, request: Any, context: Any) -> Any:
        found = [e for e in self.endpoints.values() if f'display_name="{e.display_name}"' == request.filter or not request.filter]
        return v1.ListEndpointsResponse(endpoints=found)

    def deploy_model(self, request: Any, context: Any) -> Any:
        endpoint = self.endpoints[request.endpoint]
        deployed = v1.DeployedModel(request.deployed_model)
        deployed.id = self._id()
        endpoint.deployed_models.append(deployed)
        split = {(deployed.id if k == "0" else k): v for k, v in request.traffic_split.items()}
        endpoint.traffic_split = split
        return self._done(v1.DeployModelResponse(deployed_model=deployed))

    def update_endpoint(self, request: Any, context: Any) -> Any:
        endpoint = self.endpoints[request.endpoint.name]
        if "traffic_split" in request.update_mask.paths:
            endpoint.traffic_split = dict(request.endpoint.traffic_split)
        return endpoint

    def predict(self, request: Any, context: Any) -> Any:
        endpoint = self.endpoints[request.endpoint]
        live = max(endpoint.traffic_split.items(), key=lambda kv: kv[1])[0]
        response = v1.PredictResponse(deployed_model_id=live)
        raw = v1.PredictResponse.pb(response)
        for _ in request.instances:
            raw.predictions.add().list_value.values.extend([struct_pb2.Value(number_value=0.1)] * 10)
        return response

    def get_operation(self, request: Any, context: Any) -> Any:
        return self.operations[request.name]


def _add_trials(job: Any) -> None:
    """Trials as Vertex's Vizier would report them: parameters inside the study's ranges and a final metric."""
    rng = random.Random(0)
    spec = job.study_spec
    metric = spec.metrics[0].metric_id
    trials = []
    for i in range(job.max_trial_count):
        params = []
        for p in spec.parameters:
            if p.integer_value_spec.max_value:
                value = float(rng.randint(p.integer_value_spec.min_value, p.integer_value_spec.max_value))
            elif p.double_value_spec.max_value:
                value = rng.uniform(p.double_value_spec.min_value, p.double_value_spec.max_value)
            else:
                value = p.categorical_value_spec.values[0]
            params.append(v1.Trial.Parameter(parameter_id=p.parameter_id, value=value))
        failed = i == job.max_trial_count - 1
        trial = v1.Trial(id=str(i + 1), parameters=params,
                         state=v1.Trial.State.INFEASIBLE if failed else v1.Trial.State.SUCCEEDED,
                         infeasible_reason="trial reported no metric" if failed else "")
        if not failed:
            trial.final_measurement = v1.Measurement(step_count=5, metrics=[
                v1.Measurement.Metric(metric_id=metric, value=0.5 + i / 100)])
        trials.append(trial)
    job.trials = trials


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serializer(resp: Any) -> Any:
    if resp == "op":
        return lambda op: op.SerializeToString()
    if resp is None:
        return lambda _: b""
    return resp.serialize
