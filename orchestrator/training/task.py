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
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from orchestrator.artifacts.run_record import provenance, write_json

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
    """A Keras callback recording each epoch: a JSON line in ``epochs.jsonl`` (study early stopping, live
    tails) and, when ``tensorboard_dir`` is set, TensorBoard scalars.

    The scalars use tf_keras' TensorBoard layout (``train/`` and ``validation/``, tags ``epoch_<metric>``), so
    TensorBoard and the study metric readers see the same thing. They are written as event protos, without
    TensorFlow summary ops: Keras' TensorBoard callback and ``tf.summary`` cost tens of milliseconds per
    epoch, a visible share of a small model's training time.
    """

    def __new__(cls, keras: Any, path: Path, tensorboard_dir: Optional[Path] = None):
        from tuners.metrics import EventWriter

        class _EpochLog(keras.callbacks.Callback):
            writers: Dict[str, Any] = {}

            def on_epoch_end(self, epoch, logs=None):
                logs = {k: float(v) for k, v in (logs or {}).items()}
                with open(path, "a") as f:
                    f.write(json.dumps({"epoch": epoch + 1, **logs}) + "\n")
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


def _callbacks(keras: Any, cfg: Any, run_dir: Path, identity: TaskIdentity) -> list:
    t = cfg.trainer
    cbs = []
    if t.backup_and_restore:
        cbs.append(keras.callbacks.BackupAndRestore(backup_dir=str(run_dir / "backup")))
    if t.checkpoints:
        ckpt_dir = run_dir / "checkpoints" if identity.is_chief else run_dir / f"checkpoints_tmp_{identity.task_type}_{identity.task_index}"
        cbs.append(keras.callbacks.ModelCheckpoint(filepath=str(ckpt_dir / "epoch-{epoch:03d}.weights.h5"), save_weights_only=True))
    es = t.early_stopping
    if es.enabled:
        cbs.append(keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta,
                                                 restore_best_weights=es.restore_best_weights))
    if identity.is_chief:
        cbs.append(EpochLog(keras, run_dir / "epochs.jsonl", run_dir / "tensorboard" if t.tensorboard else None))
    return cbs


def _evaluate(model: Any, ds: Any, n: int) -> Dict[str, float]:
    if not n:
        return {}
    values = model.evaluate(ds, verbose=0, return_dict=True)
    return {k: float(v) for k, v in values.items()}


def run_training(cfg: Any, run_dir: Path, *, overrides: Optional[list] = None, splits: Any = None) -> Dict[str, Any]:
    """Train, evaluate, export and record one task of ``cfg``; returns the metrics written to metrics.json.

    ``splits``: the data, when the caller already loaded it with ``load_splits(cfg.data)``.
    """
    from orchestrator import deploy
    from orchestrator.artifacts import quantization
    from orchestrator.training import roles as cluster_task
    from orchestrator.training.data import load_splits, make_dataset
    from orchestrator.artifacts.export import export_version
    from orchestrator.training.models import build_model
    from orchestrator.training.topology import configure_devices, describe_devices
    from orchestrator.runtime.tf_env import import_keras
    from orchestrator.config.validation import strategy_context
    from strategies.tf_config import role_topology
    import strategies

    started = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = TaskIdentity.from_env()
    if cluster_task.server_or_sidecar(cfg, identity):  # ps/worker servers and the evaluator build no trainer
        return cluster_task.run_cluster_task(cfg, run_dir, identity)
    topology = role_topology(cfg, identity.task_type)
    tf, plan, env_changes = configure_devices(topology)  # first: before anything initialises TensorFlow's runtime
    keras = import_keras()
    t = cfg.trainer
    keras.utils.set_random_seed(int(t.seed))
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    # Built after the device settings and before anything lists devices: MultiWorkerMirrored starts the
    # collective runtime in its constructor, which must see the configured devices.
    strategy = strategies.get(cfg.strategy.name).build(strategy_context(cfg, plan), tf)
    applied = describe_devices(tf, topology, plan, env_changes)
    if t.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(t.mixed_precision)
    replicas = int(strategy.num_replicas_in_sync)
    record = provenance(cfg, topology=applied, overrides=overrides)
    record.update({"strategy": cfg.strategy.name, "replicas": replicas, "task": identity.__dict__})
    if identity.is_chief:
        write_json(run_dir / "provenance.json", record)

    if splits is None:
        splits = load_splits(cfg.data)
    batch = int(t.batch_size)
    train_ds = make_dataset(tf, splits.x_train, splits.y_train, batch, shuffle=True, seed=int(t.seed),
                            shuffle_buffer=int(cfg.data.shuffle_buffer), prefetch=int(cfg.data.prefetch))
    val_ds = make_dataset(tf, splits.x_val, splits.y_val, batch, shuffle=False, seed=0) if len(splits.x_val) else None
    test_ds = make_dataset(tf, splits.x_test, splits.y_test, batch, shuffle=False, seed=0)
    with strategy.scope():
        model = build_model(cfg, splits.input_shape, splits.num_classes, splits.scale)
        model = quantization.prepare_model(cfg, model, splits.x_train)  # qat: wrapped before compile/training

    parameter_server = cfg.strategy.name == "parameter_server"
    fit_x, steps_per_epoch = (cluster_task.ps_training_input(tf, keras, cfg, splits) if parameter_server
                              else (train_ds, t.steps_per_epoch))
    fit_start = time.time()
    history = model.fit(fit_x, epochs=int(t.epochs), validation_data=None if parameter_server else val_ds,
                        steps_per_epoch=steps_per_epoch, verbose=int(t.verbose),
                        callbacks=_callbacks(keras, cfg, run_dir, identity) + cluster_task.cluster_callbacks(keras, cfg, run_dir, identity))
    fit_seconds = time.time() - fit_start
    epochs_run = len(history.history.get("loss", []))  # this attempt's epochs; BackupAndRestore skips finished ones
    steps = steps_per_epoch or -(-len(splits.x_train) // batch)
    ps_record = None
    if parameter_server:  # evaluate and export a single-process copy; record where the variables lived
        model, ps_record = cluster_task.coordinator_result(cfg, model, splits)
    examples = epochs_run * (steps * batch if t.steps_per_epoch else len(splits.x_train))

    metrics: Dict[str, Any] = {
        "train": {k: float(v[-1]) for k, v in history.history.items() if not k.startswith("val_")},
        "validation": {k[4:]: float(v[-1]) for k, v in history.history.items() if k.startswith("val_")},
        "test": _evaluate(model, test_ds, len(splits.x_test)),
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
    }
    if ps_record is not None:
        metrics["parameter_server"] = ps_record
    # Converted and gated before the version is published: a failed gate (GateError) publishes nothing.
    conversion = quantization.convert_and_gate(cfg, model, splits, run_dir) if identity.is_chief else None
    if identity.is_chief and cfg.export.enabled:
        version_dir = export_version(tf, model, cfg, splits.input_shape, {
            "run_dir": str(run_dir.resolve()), "git": record["git"], "overrides": overrides or [],
            "config": OmegaConf.to_container(cfg, resolve=True), "test": metrics["test"]})
        metrics["model_version"] = str(version_dir)
        if conversion is not None:
            conversion.publish(version_dir)
        metrics["deploy"] = deploy.get(cfg.deploy.target).deploy(cfg, version_dir, run_dir)
    elif identity.in_cluster and cfg.export.enabled and not parameter_server:
        cluster_task.save_as_non_chief(tf, model, cfg, splits.input_shape, run_dir, identity)
    if conversion is not None:
        metrics["quantization"] = conversion.report
    metrics["wall_seconds"] = round(time.time() - started, 3)
    if identity.is_chief:
        write_json(run_dir / "metrics.json", metrics)
        from orchestrator.vertex.hypertune import report_from_env

        report_from_env(metrics)  # a no-op unless this task is a Vertex tuning trial
    return metrics


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


def load_run_config(run_dir: Path) -> Any:
    """The resolved config a run was started with, typed by the experiment schema."""
    from orchestrator.config.schema import ExperimentConfig

    loaded = OmegaConf.load(Path(run_dir) / "config.resolved.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), loaded)
    return cfg
