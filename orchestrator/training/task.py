"""One training task, in its own process: topology → strategy → data → model → fit → export → record.

This is the code every backend ends up running (for ``local``, in the task process ``tfscale`` forked at
start-up or in-process; in a child process per task for
``processes``, in a process per Ray actor, in the container of a Vertex job). The device topology is
applied first, before TensorFlow initialises.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional

from omegaconf import OmegaConf

from orchestrator.artifacts.run_record import RunRecord, provenance
from orchestrator.runtime import supervisor
from orchestrator.training.mirrors import DirectoryMirror, Mirrors, copy_model, mirror_callback, restore

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskIdentity:
    """Role of this process in a cluster (from TF_CONFIG); a lone process is the chief."""

    task_type: str = "chief"
    task_index: int = 0
    in_cluster: bool = False
    has_chief: bool = True

    @property
    def is_chief(self) -> bool:
        """The task that exports and writes the run's metrics (TensorFlow's multi-worker saving rule)."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0 and not self.has_chief)

    @classmethod
    def from_env(cls) -> "TaskIdentity":
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            return cls()
        conf = json.loads(raw)
        task = conf.get("task", {})
        return cls(task_type=task.get("type", "chief"), task_index=int(task.get("index", 0)), in_cluster=True,
                   has_chief=bool(conf.get("cluster", {}).get("chief")))


class EpochLog:
    """A Keras callback recording each epoch: a line of the run record's ``epochs.jsonl`` (study early
    stopping, live tails; also in ``also``, the run's record in a bucket when this task works on a scratch
    copy of it) and, when ``tensorboard_dir`` is set, TensorBoard scalars.

    The scalars use tf_keras' TensorBoard layout (``train/`` and ``validation/``, tags ``epoch_<metric>``), so
    TensorBoard and the study metric readers see the same thing. They are written as event protos, without
    TensorFlow summary ops: Keras' TensorBoard callback and ``tf.summary`` cost tens of milliseconds per
    epoch, a visible share of a small model's training time.
    """

    def __new__(cls, keras: Any, record: RunRecord, tensorboard_dir: Optional[Path] = None, also: Optional[RunRecord] = None):
        from tuners.metrics import EventWriter

        class _EpochLog(keras.callbacks.Callback):
            writers: Dict[str, Any] = {}

            def on_epoch_end(self, epoch, logs=None):
                logs = {k: float(v) for k, v in (logs or {}).items()}
                record.append_epoch({"epoch": epoch + 1, **logs})
                if also is not None:  # the run's own record, when this task works on a scratch copy of it
                    also.append_epoch({"epoch": epoch + 1, **logs})
                if tensorboard_dir is None:
                    return
                for key, value in logs.items():
                    split, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
                    if split not in self.writers:
                        self.writers[split] = EventWriter(tensorboard_dir / split, suffix=".v2")
                    self.writers[split].add_scalar(f"epoch_{tag}", value, step=epoch)
                for writer in self.writers.values():
                    writer.flush()

            def on_train_end(self, logs=None):
                for writer in self.writers.values():
                    writer.close()

        return _EpochLog()


def _callbacks(keras: Any, cfg: ExperimentConfig, run_dir: Path, identity: TaskIdentity, mirrors: Mirrors) -> list:
    t = cfg.trainer
    cbs = []
    if t.backup_and_restore:
        backup = run_dir / "backup"
        if mirrors.backup:  # a restarted task may run on another machine: resume from the shared copy
            restore(mirrors.backup, backup)
        cbs.append(keras.callbacks.BackupAndRestore(backup_dir=str(backup)))
        if mirrors.backup and identity.is_chief:  # the chief's backup is the one every task restores from
            cbs.append(mirror_callback(keras, DirectoryMirror(backup, mirrors.backup, skip=lambda rel: rel.startswith("workertemp")),
                                       at_end="keep" if mirrors.keep_backup else "remove"))
    if t.checkpoints:
        ckpt_dir = run_dir / "checkpoints" if identity.is_chief else run_dir / f"checkpoints_tmp_{identity.task_type}_{identity.task_index}"
        cbs.append(keras.callbacks.ModelCheckpoint(filepath=str(ckpt_dir / "epoch-{epoch:03d}.weights.h5"), save_weights_only=True))
    es = t.early_stopping
    if es.enabled:
        cbs.append(keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta,
                                                 restore_best_weights=es.restore_best_weights))
    if identity.is_chief:
        cbs.append(EpochLog(keras, RunRecord(run_dir), run_dir / "tensorboard" if t.tensorboard else None,
                            also=RunRecord(mirrors.record) if mirrors.record else None))
        if t.tensorboard and mirrors.tensorboard:
            cbs.append(mirror_callback(keras, DirectoryMirror(run_dir / "tensorboard", mirrors.tensorboard)))
    return cbs


def _evaluate(model: Any, ds: Any, n: int) -> Dict[str, float]:
    if not n:
        return {}
    values = model.evaluate(ds, verbose=0, return_dict=True)
    return {k: float(v) for k, v in values.items()}


def run_training(cfg: ExperimentConfig, run_dir: Path, *, overrides: Optional[list] = None, splits: Any = None,
                 run_uri: Optional[str] = None, record_uri: Optional[str] = None) -> Dict[str, Any]:
    """Train, evaluate, export and record one task of ``cfg``; returns the metrics written to metrics.json.

    ``splits``: the data, when the caller already loaded it with ``load_splits(cfg.data)``. ``run_uri``: the
    run directory in a bucket when ``run_dir`` is this machine's scratch copy of it (a task on a Ray node);
    the backup and TensorBoard logs are then mirrored below it (see :mod:`orchestrator.training.mirrors`,
    which also applies Vertex's ``AIP_*`` directories). ``record_uri``: where the caller uploads the run record
    once the task is done (a local run with ``runs_dir=gs://...``); the published version names it.
    """
    from orchestrator import deploy
    from orchestrator.artifacts import quantization
    from orchestrator.training import roles as cluster_task
    from orchestrator.training.data import make_dataset
    from orchestrator.training.streaming import input_share, load_source, profile_input, step_timer
    from orchestrator.config.streams import input_pipelines
    from orchestrator.artifacts.export import export_version
    from orchestrator.training.models import build_model
    from orchestrator.training import preflight
    from orchestrator.training.topology import configure_devices, describe_devices
    from orchestrator.runtime.tf_env import import_keras
    from orchestrator.config.schema import MixedPrecision
    from orchestrator.config.validation import strategy_context
    from strategies.base import FitData, FitInput
    from strategies.tf_config import role_topology
    import strategies

    started = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = TaskIdentity.from_env()
    mirrors = Mirrors.resolve(run_uri)
    if cluster_task.server_or_sidecar(cfg, identity):  # ps/worker servers and the evaluator build no trainer
        return cluster_task.run_cluster_task(cfg, run_dir, identity)
    topology = role_topology(cfg, identity.task_type)
    tf, plan, env_changes = configure_devices(topology)  # first: before anything initialises TensorFlow's runtime
    keras = import_keras()
    t = cfg.trainer
    keras.utils.set_random_seed(t.seed)
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    # Built after the device settings and before anything lists devices: MultiWorkerMirrored starts the
    # collective runtime in its constructor, which must see the configured devices.
    kind = strategies.get(cfg.strategy.name)
    strategy = kind.build(strategy_context(cfg, plan), tf)
    supervisor.reclaim_sigterm()  # the collective runtime just took SIGTERM over (see the function)
    applied = describe_devices(tf, topology, plan, env_changes)
    if t.mixed_precision != MixedPrecision.none:
        keras.mixed_precision.set_global_policy(t.mixed_precision.value)
    replicas = int(strategy.num_replicas_in_sync)
    record = provenance(cfg, topology=applied, overrides=overrides)
    record.update({"strategy": cfg.strategy.name, "replicas": replicas, "task": identity.__dict__})
    if identity.is_chief:
        RunRecord(run_dir).write_provenance(record)
    hparams = _start_hparams_session(run_dir, overrides, started) if identity.is_chief and t.tensorboard else None

    splits = load_source(tf, cfg, run_dir=run_dir, splits=splits)  # in memory, or streamed from sharded files
    streamed = splits.streaming
    batch = t.batch_size
    if streamed:
        train_ds = None
        val_ds, test_ds = splits.evaluation("validation"), splits.evaluation("test")
    else:
        train_ds = make_dataset(tf, splits.x_train, splits.y_train, batch, shuffle=True, seed=t.seed,
                                shuffle_buffer=cfg.data.shuffle_buffer, prefetch=cfg.data.prefetch)
        val_ds = make_dataset(tf, splits.x_val, splits.y_val, batch, shuffle=False, seed=0) if len(splits.x_val) else None
        test_ds = make_dataset(tf, splits.x_test, splits.y_test, batch, shuffle=False, seed=0) if len(splits.x_test) else None
    def built() -> Any:  # a layer that cannot be connected is named by the pre-flight
        return preflight.built(lambda: build_model(cfg, splits.input_shape, splits.num_classes, splits.scale,
                                                   target=splits.target_stats))

    with strategy.scope():
        model = built()
        # qat: wrapped before compile/training; int8 and qat check there are rows to calibrate on
        model = quantization.prepare_model(cfg, model, splits.sample_x if streamed else splits.x_train)
    preflight_seconds = None
    if t.preflight:  # before any epoch: forward pass, signatures, the configured conversions of the untrained model
        # Variables on parameter servers: the check runs on a local copy, as the export does after training.
        checked = (quantization.prepare_model(cfg, built(), splits.sample_x if streamed else splits.x_train)
                   if kind.variables_on_servers else model)
        preflight_seconds = preflight.run(cfg, checked, splits, run_dir, tf=tf, convert=identity.is_chief)

    if streamed:  # every strategy: per-pipeline datasets from a DatasetCreator, a fixed number of steps
        # Under ParameterServerStrategy one traced dataset function runs on every worker, which learns
        # its index (and so its files) only there.
        creator, steps_per_pass = splits.train_input(keras, batch, workers_at_run_time=input_pipelines(cfg) if kind.variables_on_servers else 0)
        # A ParameterServer coordinator is given no validation data, as with in-memory input.
        fit = FitInput(creator, t.steps_per_epoch or steps_per_pass, None if kind.variables_on_servers else val_ds)
    else:
        fit = kind.fit_input(FitData(train=train_ds, validation=val_ds, x=splits.x_train, y=splits.y_train, batch_size=batch,
                                     seed=t.seed, shuffle_buffer=cfg.data.shuffle_buffer, steps_per_epoch=t.steps_per_epoch),
                             tf, keras)
    steps_per_epoch = fit.steps_per_epoch
    timer = step_timer(keras)
    fit_start = time.time()
    history = model.fit(fit.x, epochs=t.epochs, validation_data=fit.validation_data,
                        steps_per_epoch=steps_per_epoch, verbose=t.verbose,
                        callbacks=_callbacks(keras, cfg, run_dir, identity, mirrors) + cluster_task.cluster_callbacks(keras, cfg, run_dir, identity) + [timer])
    fit_seconds = time.time() - fit_start
    epochs_run = len(history.history.get("loss", []))  # this attempt's epochs; BackupAndRestore skips finished ones
    steps = steps_per_epoch or -(-len(splits.x_train) // batch)
    pipelines = input_pipelines(cfg) if streamed else 1
    input_seconds = profile_input(tf, splits, train_ds, batch_size=batch, replicas=replicas, pipelines=pipelines,
                                  batches=cfg.data.profile_batches) if identity.is_chief else None
    placement = None
    if kind.variables_on_servers:  # evaluate and export a single-process copy; record where the variables lived
        model, placement = cluster_task.coordinator_result(cfg, model, splits)
    examples = epochs_run * (steps * batch if (t.steps_per_epoch or streamed) else len(splits.x_train))

    metrics: Dict[str, Any] = {
        "train": {k: float(v[-1]) for k, v in history.history.items() if not k.startswith("val_")},
        "validation": {k[4:]: float(v[-1]) for k, v in history.history.items() if k.startswith("val_")},
        "test": _evaluate(model, test_ds, 1 if streamed else len(splits.x_test)) if test_ds is not None else {},
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "epochs": (history.epoch[-1] + 1) if history.epoch else epochs_run,
        "epochs_this_attempt": epochs_run,
        "fit_seconds": round(fit_seconds, 3),
        "examples_per_second": round(examples / fit_seconds, 1) if fit_seconds > 0 else None,
        "replicas": replicas,
        "strategy": cfg.strategy.name,
        "topology": cfg.topology.name,
        "logical_devices": applied["logical_devices"],
        "model_version": None,
        "input_pipeline": input_share(input_seconds, timer.epoch_seconds, steps),
        "preflight_seconds": preflight_seconds,
    }
    if streamed:
        metrics["input"] = {**splits.describe(), "shards": splits.shard_table(pipelines), "this_task": splits.pipelines_built}
    if placement is not None:
        metrics[kind.name] = placement
    # Converted and gated before the version is published: a failed gate (GateError) publishes nothing.
    conversion = quantization.convert_and_gate(cfg, model, splits, run_dir) if identity.is_chief else None
    if identity.is_chief and cfg.export.enabled:
        version_dir = export_version(tf, model, cfg, splits.input_shape, {
            "run_dir": run_uri or record_uri or str(run_dir.resolve()), "git": record["git"], "overrides": overrides or [],
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "test": metrics["test"]})
        metrics["model_version"] = str(version_dir)
        if mirrors.model:  # inside a Vertex job: where Vertex (and a model upload from the job) looks for it
            metrics["model_dir"] = copy_model(version_dir, mirrors.model)
        if conversion is not None:
            conversion.publish(version_dir)
        metrics["deploy"] = deploy.get(cfg.deploy.target).deploy(cfg, version_dir, run_dir)
    elif identity.in_cluster and cfg.export.enabled:  # a non-chief that trained (servers never get here)
        cluster_task.save_as_non_chief(tf, model, cfg, splits.input_shape, run_dir, identity)
    if conversion is not None:
        metrics["quantization"] = conversion.report
    metrics["wall_seconds"] = round(time.time() - started, 3)
    metrics["peak_rss_mb"] = peak_rss_mb()
    if hparams is not None:
        _end_hparams_session(hparams, metrics)
    if identity.is_chief:
        RunRecord(run_dir).write_metrics(metrics)
        from orchestrator.vertex.hypertune import report_from_env

        report_from_env(metrics)  # a no-op unless this task is a Vertex tuning trial
    return metrics


def _start_hparams_session(run_dir: Path, overrides: Optional[list], started: float) -> Any:
    """The run as a TensorBoard HParams session, its overrides as hyperparameters, so that ``tensorboard
    --logdir runs`` compares runs side by side (its per-epoch scalars are the session's metrics)."""
    from tuners.hparams import HParamsSession, overrides_as_hparams

    session = HParamsSession(run_dir / "tensorboard")
    from orchestrator.artifacts.redact import redact_args

    # Event files are shared and uploaded like any log: a secret given as an override never reaches them.
    session.start(overrides_as_hparams(redact_args(overrides or [])), start_time=started)
    return session


def _end_hparams_session(session: Any, metrics: Dict[str, Any]) -> None:
    """The final evaluation as the session's metrics (``final/test_accuracy``, ...), then its end.

    The tags stay clear of the per-epoch ones (``validation/epoch_accuracy``) and of each other's suffixes,
    so a short tag such as ``accuracy`` still names one series of the run's event files.
    """
    from tuners import TrialStatus

    final = {f"final/{split}_{k}": v for split in ("test", "validation") for k, v in (metrics.get(split) or {}).items()}
    if final:
        session.scalars(final, step=int(metrics.get("epochs") or 0))
    session.end(TrialStatus.COMPLETED)
    session.close()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (the run record's ``peak_rss_mb``)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def summary(metrics: Dict[str, Any]) -> str:
    """A few lines for the end of a run."""
    test = metrics.get("test") or {}
    val = metrics.get("validation") or {}
    parts = [f"epochs={metrics.get('epochs')}", f"replicas={metrics.get('replicas')} ({metrics.get('strategy')})"]
    parts += [f"test_{k}={v:.4f}" for k, v in test.items()]
    if not test:
        parts += [f"val_{k}={v:.4f}" for k, v in val.items()]
    parts.append(f"{metrics.get('examples_per_second')} ex/s")
    lines = ["tfscale: " + "  ".join(parts)]
    if metrics.get("model_version"):
        lines.append(f"tfscale: model version {metrics['model_version']}")
    return "\n".join(lines)


_schema: Any = None


def experiment_schema() -> Any:
    """The experiment schema as a structured config, built once per process (tens of milliseconds): a warm trial
    process builds it before it forks its trials. Read-only: :func:`load_run_config` merges into a copy."""
    global _schema
    if _schema is None:
        from orchestrator.config.schema import ExperimentConfig

        _schema = OmegaConf.structured(ExperimentConfig)
        OmegaConf.set_readonly(_schema, True)
    return _schema


def load_run_config(run_dir: Path) -> ExperimentConfig:
    """The resolved config a run was started with, typed by the experiment schema."""
    import copy

    loaded = OmegaConf.load(Path(run_dir) / "config.resolved.yaml")
    schema = copy.deepcopy(experiment_schema())
    OmegaConf.set_readonly(schema, None)
    # unsafe_merge: the same result as merge without copying its inputs again (both are this call's own).
    return OmegaConf.unsafe_merge(schema, loaded)
