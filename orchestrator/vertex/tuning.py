"""Studies on Vertex: a :class:`tuners.StudySpec` as a HyperparameterTuningJob, and its trials back as tuners trials.

Vertex's Vizier service proposes the trials; each trial is a CustomJob running
``orchestrator.app.vertex_trial`` (which turns Vertex's ``--<parameter>=<value>`` flags into overrides) and
reports its objective through :mod:`orchestrator.vertex.hypertune`. When the job ends, its trials are written
into a :class:`tuners.study_store.StudyStore` in the run directory — the same store and tables local studies use.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from orchestrator.config.study_keys import split_node
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

TRIAL_MODULE = "orchestrator.app.vertex_trial"

# Vertex trial states -> tuners statuses. A trial Vertex stopped early is SUCCEEDED with a final measurement
# flagged by the early stopping service; INFEASIBLE means the trial reported no usable objective.
_STATUS = {"SUCCEEDED": "COMPLETED", "INFEASIBLE": "FAILED", "STOPPING": "STOPPED", "ACTIVE": "ACTIVE",
           "REQUESTED": "ACTIVE", "STATE_UNSPECIFIED": "FAILED"}


#: Trial argument that maps a tuning parameter to its config key: ``--tfscale-param-key=<name>=<key>``.
KEY_FLAG = "--tfscale-param-key="

def load_study(cfg: ExperimentConfig) -> Any:
    """The study of a tuning job: ``vertex.study_file`` (native, AI Platform or Vertex YAML), else the study group."""
    import yaml
    from omegaconf import OmegaConf

    from tuners.errors import StudySpecError
    from tuners.study_spec import StudySpec

    v = cfg.vertex
    key = "vertex.study_file" if v.study_file else "study"
    try:
        if v.study_file:
            try:
                with open(v.study_file) as f:
                    raw = yaml.safe_load(f)
            except OSError as exc:
                raise ConfigError("vertex.study_file", v.study_file, f"Cannot read it ({exc.strerror}); give the path of a study YAML.") from None
        elif cfg.get("study") is not None:
            raw = OmegaConf.to_container(cfg.study, resolve=True)
            raw = raw.get("spec", raw) if isinstance(raw, dict) else raw
        else:
            raise ConfigError("vertex.study_file", None, "vertex.tuning=true needs a study: choose study=<option> or set vertex.study_file=<study YAML>.")
        param_map = dict(v.study_param_map or {}) or None
        if isinstance(raw, dict):
            raw, extras = split_node(raw)  # its name is the study's directory for `tfscale -m`, not the spec's
            if extras.get("warm_start_from"):
                raise ConfigError("study.warm_start_from", extras["warm_start_from"], "A Vertex AI tuning job starts "
                                  "its study cold; run the study with `tfscale -m` to warm-start it, or remove "
                                  "warm_start_from.")
            param_map = param_map or extras.get("param_map")
            if StudySpec.dialect(raw) == "ai_platform":
                _refuse_resume(raw, key)
        return StudySpec.from_dict(raw, param_map)
    except StudySpecError as exc:
        raise ConfigError(key, v.study_file or "study", str(exc)) from None


def _refuse_resume(raw: Dict[str, Any], key: str) -> None:
    """A Vertex tuning job starts from no earlier trials: an AI Platform ``resumePreviousJobId`` is an error
    here, not silently dropped (``tfscale -m`` studies honour it as a warm start)."""
    node, where = raw, key
    for part in ("trainingInput", "hyperparameters"):
        if isinstance(node.get(part), dict):
            node, where = node[part], f"{where}.{part}" if key == "study" else where
    previous = node.get("resumePreviousJobId")
    if previous is not None:
        where = f"{where}.resumePreviousJobId" if key == "study" else where
        raise ConfigError(where, previous, "resumePreviousJobId: a Vertex tuning job cannot start from an earlier "
                                           "study's trials. Remove it, or run the study with tfscale -m (local or "
                                           "Ray trials), where it warm-starts from that study.")


def study_spec_dict(spec: Any) -> Dict[str, Any]:
    """The Vertex ``StudySpec`` part of :meth:`StudySpec.to_vertex_dict` (budget fields belong to the job)."""
    body = dict(spec.to_vertex_dict())
    for key in ("maxTrialCount", "parallelTrialCount", "maxFailedTrialCount"):
        body.pop(key, None)
    return body


def trial_args(spec: Any, overrides: Sequence[str]) -> List[str]:
    """Arguments of each trial: the run's overrides, minus the searched keys, plus the parameter-key map."""
    from orchestrator.vertex.job_spec import trainer_args

    searched = {p.config_key.lstrip("+~") for p in spec.all_parameters()}
    args = [a for a in trainer_args(overrides) if a.lstrip("+~").partition("=")[0] not in searched]

    return args + [f"{KEY_FLAG}{p.name}={p.config_key}" for p in spec.all_parameters()]


def tuning_job(cfg: ExperimentConfig, spec: Any, *, overrides: Sequence[str], package_uris: Sequence[str], display_name: str,
               git_sha: Optional[str]) -> Dict[str, Any]:
    """The ``HyperparameterTuningJob`` of a study."""
    from orchestrator.vertex.job_spec import custom_job_spec, job_labels, program_spec

    from orchestrator.vertex.hypertune import METRIC_TAGS_ENV

    program = program_spec(cfg, trial_args(spec, overrides), package_uris, python_module=TRIAL_MODULE,
                           env={"CLOUD_ML_HP_METRIC_TAG": spec.metric.tag,
                                METRIC_TAGS_ENV: ",".join(m.tag for m in spec.metrics)})
    max_failed = cfg.vertex.max_failed_trial_count
    if max_failed is None:
        max_failed = spec.failure_budget
    return {
        "displayName": display_name,
        "studySpec": study_spec_dict(spec),
        "maxTrialCount": spec.max_trials,
        "parallelTrialCount": spec.max_parallel_trials,
        "maxFailedTrialCount": max_failed,
        "trialJobSpec": custom_job_spec(cfg, program, display_name),
        "labels": job_labels(cfg, git_sha),
    }


def _value(param: Any, value: Any) -> Any:
    from tuners.study_spec import ParameterType

    if param.type is ParameterType.INTEGER:
        return int(round(float(value)))
    if param.type in (ParameterType.DOUBLE, ParameterType.DISCRETE):
        return float(value)
    return str(value)


def trials_from_job(job: Any, spec: Any) -> List[Any]:
    """The job's trials as :class:`tuners.study_spec.Trial` objects."""
    from tuners.study_spec import Measurement, Trial, TrialStatus

    keys = {p.name: p.config_key for p in spec.all_parameters()}
    out = []
    for t in job.trials:
        params = {p.parameter_id: _value(spec.parameter(p.parameter_id), p.value) for p in t.parameters
                  if p.parameter_id in keys}
        status = TrialStatus(_STATUS.get(getattr(t.state, "name", str(t.state)), "FAILED"))
        measurements = [Measurement(int(m.step_count), {x.metric_id: float(x.value) for x in m.metrics})
                        for m in t.measurements]
        objectives = {}
        final = t.final_measurement
        if final and final.metrics:
            values = {x.metric_id: float(x.value) for x in final.metrics}
            objectives = {m.tag: values[m.tag] for m in spec.metrics if m.tag in values}
            measurements.append(Measurement(int(final.step_count), values))
        if status is TrialStatus.COMPLETED and len(objectives) < len(spec.metrics):
            status = TrialStatus.FAILED  # a finished trial without a value for every objective ranks nowhere
        trial = Trial(id=int(t.id), parameters=params, status=status, measurements=measurements,
                      objective=objectives.get(spec.metric.tag), objectives=objectives,
                      error=t.infeasible_reason or None, config_keys=keys)
        out.append(trial)
    return out


def store_trials(job: Any, spec: Any, location: Path) -> List[Any]:
    """Write the job's trials into the study store at ``location`` (bound to ``spec``); return them."""
    from tuners.study_store import StudyStore

    trials = trials_from_job(job, spec)
    with StudyStore(location) as store:
        store.attach(spec)
        for trial in trials:
            store.save_trial(trial)
    return trials


def best_trial(trials: Sequence[Any], spec: Any) -> Optional[Any]:
    """The completed trial with the best objective under the study's goal."""
    done = [t for t in trials if t.objective is not None]
    if not done:
        return None
    best = done[0]
    for t in done[1:]:
        if spec.metric.goal.is_better(t.objective, best.objective):
            best = t
    return best
