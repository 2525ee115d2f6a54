"""``backend=vertex``: the experiment as a Vertex AI CustomJob (or a HyperparameterTuningJob for a study).

The project is packaged as an sdist, staged to Cloud Storage and run with a ``python_package_spec`` (or the
container in ``vertex.image``); every replica runs ``tfscale <overrides> backend=local`` and reads its role
from the TF_CONFIG Vertex sets, through the same code path as every other backend. Inside the job the chief
publishes the model to ``export.model_base`` and ``AIP_MODEL_DIR``, backs up to ``AIP_CHECKPOINT_DIR``, logs
TensorBoard scalars to ``AIP_TENSORBOARD_LOG_DIR`` (see :mod:`orchestrator.training.mirrors`) and keeps the
run record in ``<base output directory>/run``; when the job succeeded, its ``metrics.json`` and
``provenance.json`` are copied into the local run record and the model URI and console link printed. ``vertex.dry_run=true``
prints the request and the gcloud command and contacts nothing. What is printed and written to the run
directory is redacted (:mod:`orchestrator.artifacts.redact`); the job is submitted as configured.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from orchestrator.launch.base import Backend
from orchestrator.artifacts.redact import redact
from orchestrator.artifacts.run_record import RunRecord, git_state

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig


class VertexBackend(Backend):
    """Submits the run to Vertex AI and follows the job until it ends."""

    name = "vertex"
    launches_clusters = True

    def check(self, cfg: ExperimentConfig) -> None:
        from orchestrator.vertex.checks import check_job

        check_job(cfg)

    def run(self, cfg: ExperimentConfig, run_dir: Path, *, run_uri: Optional[str] = None) -> Dict[str, Any]:
        from orchestrator.vertex import job_spec, packaging

        run_dir = Path(run_dir)
        v = cfg.vertex
        display_name = v.display_name or job_spec.default_display_name(cfg)
        sha = git_state().get("sha")
        overrides = _overrides()
        package_uris: List[str] = [] if v.image else [packaging.package_uri(cfg, display_name)]
        if v.tuning:
            return self._run_tuning(cfg, run_dir, display_name, sha, overrides, package_uris)
        from orchestrator.artifacts import storage

        if cfg.export.enabled and not storage.is_remote(cfg.export.model_base):
            print(f"tfscale: note: export.model_base={cfg.export.model_base} is a directory on the job's machine: the model "
                  f"comes back through AIP_MODEL_DIR ({job_spec.output_dir(cfg, display_name)}/model) only; give a bucket "
                  f"(export.model_base=gs://{v.bucket}/models) to publish numbered versions.", flush=True)
        body = job_spec.custom_job(cfg, overrides=overrides, package_uris=package_uris, display_name=display_name, git_sha=sha)
        return self._submit(cfg, run_dir, body, kind="custom-jobs", what="CustomJob", extra={})

    def _run_tuning(self, cfg: ExperimentConfig, run_dir: Path, display_name: str, sha: Any, overrides: List[str],
                    package_uris: List[str]) -> Dict[str, Any]:
        from orchestrator.vertex import tuning

        spec = tuning.load_study(cfg)
        body = tuning.tuning_job(cfg, spec, overrides=overrides, package_uris=package_uris, display_name=display_name, git_sha=sha)
        extra = {"max-trial-count": body["maxTrialCount"], "parallel-trial-count": body["parallelTrialCount"]}
        return self._submit(cfg, run_dir, body, kind="hp-tuning-jobs", what="HyperparameterTuningJob", extra=extra, spec=spec)

    def _submit(self, cfg: ExperimentConfig, run_dir: Path, body: Dict[str, Any], *, kind: str, what: str, extra: Dict[str, Any],
                spec: Any = None) -> Dict[str, Any]:
        from google.cloud import aiplatform_v1

        from orchestrator.vertex import jobs, packaging
        from orchestrator.vertex.job_spec import console_url, parent, to_json, to_proto

        v = cfg.vertex
        message = to_proto(getattr(aiplatform_v1, what), body)
        request_json = to_json(to_proto(getattr(aiplatform_v1, what), redact(body)))  # the copy shown and kept
        record = RunRecord(run_dir)
        record.write_text("vertex_request.json", request_json + "\n")
        # gcloud reads a CustomJobSpec for custom-jobs, and the job's remaining fields for hp-tuning-jobs.
        parsed = json.loads(request_json)
        gcloud_body = parsed["jobSpec"] if what == "CustomJob" else {
            k: val for k, val in parsed.items() if k not in ("displayName", "labels", "maxTrialCount", "parallelTrialCount")}
        config_path = jobs.write_gcloud_config(run_dir / "vertex_job.yaml", gcloud_body)
        command = jobs.gcloud_command(kind, cfg, body["displayName"], config_path, parsed.get("labels") or {}, extra)
        facts: Dict[str, Any] = {"kind": what, "display_name": body["displayName"], "parent": parent(cfg),
                                 "request": str(run_dir / "vertex_request.json"), "gcloud": command}
        if v.dry_run:
            jobs.print_dry_run(what, parent(cfg), request_json, command)
            facts["dry_run"] = True
            return _record(run_dir, facts)

        if not v.image:
            packaging.build_and_stage(cfg, body["displayName"], run_dir / "vertex_package")
        client = _client(v)
        if what == "CustomJob":
            job = client.create_custom_job(parent=parent(cfg), custom_job=message)
            get = lambda: client.get_custom_job(name=job.name)  # noqa: E731
            cancel = lambda: client.cancel_custom_job(name=job.name)  # noqa: E731
        else:
            job = client.create_hyperparameter_tuning_job(parent=parent(cfg), hyperparameter_tuning_job=message)
            get = lambda: client.get_hyperparameter_tuning_job(name=job.name)  # noqa: E731
            cancel = lambda: client.cancel_hyperparameter_tuning_job(name=job.name)  # noqa: E731
        facts["job"] = job.name
        facts["console"] = console_url(job.name)
        print(f"tfscale: submitted vertex {what} {job.name}\ntfscale: console {facts['console']}", flush=True)
        record.write_json("vertex.json", facts)
        if not v.wait:
            return _record(run_dir, facts)
        try:
            final = jobs.follow(get, cancel, v, what=what)
        except Exception:
            _save_job(run_dir, get)
            raise
        record.write_json("vertex_job.json", json.loads(to_json(final)))
        facts["state"] = jobs.state_name(final)
        if what == "CustomJob":
            return _record(run_dir, facts, _bring_home(cfg, run_dir, body["displayName"], facts))
        if spec is not None:
            from orchestrator.vertex import tuning

            trials = tuning.store_trials(final, spec, run_dir)
            facts["trials"] = len(trials)
            facts["study_store"] = str(run_dir / "study.db")
            if spec.is_multi_objective:
                from tuners.pareto import pareto_front

                front = pareto_front(trials, spec.metrics)
                facts["pareto_trials"] = [{"id": t.id, "parameters": t.parameters, "objectives": t.objectives}
                                          for t in front]
                for t in front:
                    values = " ".join(f"{m.tag}={t.objectives[m.tag]}" for m in spec.metrics)
                    print(f"tfscale: Pareto trial {t.id}: {values} {t.parameters}", flush=True)
            else:
                best = tuning.best_trial(trials, spec)
                if best is not None:
                    facts["best_trial"] = {"id": best.id, "parameters": best.parameters, "objective": best.objective}
                    print(f"tfscale: best trial {best.id}: {spec.metric.tag}={best.objective} {best.parameters}",
                          flush=True)
        return _record(run_dir, facts)


def _client(v: Any) -> Any:
    from orchestrator.vertex.clients import client

    return client(v, "job")


def _save_job(run_dir: Path, get: Any) -> None:
    """Keep the job as it ended in the run record, so a failure can be read without the console."""
    from orchestrator.vertex.job_spec import to_json

    try:
        RunRecord(run_dir).write_json("vertex_job.json", json.loads(to_json(get())))
    except Exception:  # the record is a courtesy; the job's own error is what gets raised
        pass


def _bring_home(cfg: ExperimentConfig, run_dir: Path, display_name: str, facts: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Copy the finished job's ``metrics.json`` and ``provenance.json`` into the local run record; its metrics.

    Prints where the model is. A job whose chief wrote no record (a custom container running other code)
    leaves the local record with the job's facts only.
    """
    from orchestrator.artifacts import storage
    from orchestrator.vertex.job_spec import job_run_dir

    remote = RunRecord(job_run_dir(cfg, display_name))
    facts["run_record"] = str(remote.run_dir)
    try:
        metrics = remote.metrics()
        provenance = remote.provenance()
    except Exception as exc:  # unreachable bucket, bad credentials: the job itself succeeded
        print(f"tfscale: could not read the job's run record {remote.run_dir}: {exc}", file=sys.stderr)
        return None
    if metrics is None:
        print(f"tfscale: the job wrote no metrics to {storage.join(remote.run_dir, 'metrics.json')}", file=sys.stderr)
        return None
    record = RunRecord(run_dir)
    record.write_metrics(metrics)
    if provenance is not None:
        record.write_provenance(provenance)
    facts["model"] = metrics.get("model_version")
    facts["model_dir"] = metrics.get("model_dir")
    if facts["model_dir"]:
        print(f"tfscale: model for Vertex (AIP_MODEL_DIR) {facts['model_dir']}", flush=True)
    print(f"tfscale: job run record {remote.run_dir}", flush=True)
    return metrics


def _record(run_dir: Path, facts: Dict[str, Any], job_metrics: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    record = RunRecord(run_dir)
    record.write_json("vertex.json", facts)
    if job_metrics is not None:  # the chief's own results came home: keep them, add the job's facts
        return record.add_facts({"vertex": facts})
    return record.add_facts({"vertex": facts, "epochs": None, "replicas": None, "strategy": None,
                             "examples_per_second": None})


def _overrides() -> List[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not running under Hydra (tests calling run directly)
        return []
