"""The cluster-specific parts of a task: servers, the evaluator sidecar, and the trainer's cluster glue.

A task whose role the strategy runs as a server (``Strategy.server_roles``: the ps and worker tasks of
``strategy=parameter_server``, whose chief is the coordinator and the only task that trains) runs the
``tf.distribute.Server`` the strategy builds for it and blocks in ``join()`` until the backend stops it after
the training tasks ended. An ``evaluator`` task, under any cluster strategy, is a sidecar: it evaluates each checkpoint the chief writes
to ``RUN_DIR/eval_checkpoints`` and keeps its own metrics in ``RUN_DIR/evaluator/``.
:func:`orchestrator.training.task.run_training` calls :func:`server_or_sidecar` first and hands such tasks here before
it builds any model.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import strategies
from orchestrator.artifacts.run_record import RunRecord

if TYPE_CHECKING:
    from orchestrator.config.schema import ExperimentConfig
    from orchestrator.training.task import TaskIdentity

log = logging.getLogger(__name__)

EVAL_CHECKPOINTS = "eval_checkpoints"


def server_or_sidecar(cfg: ExperimentConfig, identity: TaskIdentity) -> Optional[str]:
    """``"server"`` or ``"evaluator"`` if this task does not train itself, else None."""
    if not identity.in_cluster:
        return None
    if identity.task_type == "evaluator":
        return "evaluator"
    if identity.task_type in strategies.get(cfg.strategy.name).server_roles:
        return "server"
    return None


def run_cluster_task(cfg: ExperimentConfig, run_dir: Path, identity: TaskIdentity) -> Dict[str, Any]:
    """Run a ps/worker server or the evaluator sidecar; returns what the task recorded."""
    from orchestrator.training.topology import apply_topology
    from strategies.tf_config import role_topology

    apply_topology(role_topology(cfg, identity.task_type))
    if server_or_sidecar(cfg, identity) == "evaluator":
        return run_evaluator(cfg, Path(run_dir))
    return run_server(cfg, identity)


def run_server(cfg: ExperimentConfig, identity: TaskIdentity) -> Dict[str, Any]:
    """Serve this task's part of the cluster until the process is stopped."""
    from orchestrator.config.validation import strategy_context
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    server = strategies.get(cfg.strategy.name).build(strategy_context(cfg), tf)  # a started tf.distribute.Server
    log.info("%s:%d serving at %s", identity.task_type, identity.task_index, server.target)
    # Servers never return on their own: the coordinator's end is the job's end, and the backend stops us.
    server.join()
    return {}


# ------------------------------------------------------------------------------------------ evaluator
def run_evaluator(cfg: ExperimentConfig, run_dir: Path) -> Dict[str, Any]:
    """Evaluate every new checkpoint of the chief with tf_keras' SidecarEvaluator.

    Writes one line per evaluation to ``RUN_DIR/evaluator/evaluations.jsonl`` and the latest to
    ``RUN_DIR/evaluator/metrics.json``; stops after the checkpoint of the last epoch.
    """
    from orchestrator.training.data import make_dataset
    from orchestrator.training.models import build_model
    from orchestrator.training.streaming import load_source
    from orchestrator.runtime.tf_env import import_keras, import_tensorflow

    tf, keras = import_tensorflow(), import_keras()
    splits = load_source(tf, cfg, run_dir=run_dir)
    if splits.streaming:  # the validation files, one pass per checkpoint
        evaluated_on = "validation"
        data = splits.evaluation("validation")
    else:
        evaluated_on = "validation" if len(splits.x_val) else "test"
        x, y = (splits.x_val, splits.y_val) if len(splits.x_val) else (splits.x_test, splits.y_test)
        data = make_dataset(tf, x, y, cfg.trainer.batch_size, shuffle=False, seed=0)
    model = build_model(cfg, splits.input_shape, splits.num_classes, splits.scale, target=splits.target_stats)
    ckpt_dir = run_dir / EVAL_CHECKPOINTS
    record = RunRecord(run_dir)
    evaluations = []

    class _Record(keras.callbacks.Callback):
        def on_test_end(self, logs=None):
            latest = tf.train.latest_checkpoint(str(ckpt_dir))
            entry = {"checkpoint": latest, "epoch": _checkpoint_epoch(latest),
                     "iterations": int(model.optimizer.iterations.numpy()), "time": time.time(),
                     **{k: float(v) for k, v in (logs or {}).items()}}
            evaluations.append(entry)
            record.record_evaluation(entry, {"evaluated_on": evaluated_on,
                                             "evaluations": len(evaluations), "last": entry})

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.SidecarEvaluator(model, data=data, checkpoint_dir=str(ckpt_dir), max_evaluations=cfg.trainer.epochs,
                                 callbacks=[_Record()]).start()
    return evaluations[-1] if evaluations else {}


def _checkpoint_epoch(path: Optional[str]) -> Optional[int]:
    try:
        return int(str(path).rsplit("-", 1)[-1])
    except ValueError:
        return None


def has_evaluator(cfg: ExperimentConfig) -> bool:
    """Whether the cluster has an evaluator (TF_CONFIG of the training tasks does not list it)."""
    from strategies.tf_config import role_counts

    return bool(role_counts(cfg.cluster).get("evaluator"))


# --------------------------------------------------------------------------------------- callbacks
def cluster_callbacks(keras: Any, cfg: ExperimentConfig, run_dir: Path, identity: TaskIdentity) -> list:
    """Callbacks a training task adds in a cluster: checkpoints for the evaluator."""
    cbs = []
    if identity.in_cluster and has_evaluator(cfg):
        # Every training task saves (non-chiefs into temporary directories, handled by tf_keras) because
        # saving under multi_worker_mirrored is a collective; only the chief's files are kept.
        cbs.append(keras.callbacks.ModelCheckpoint(filepath=str(Path(run_dir) / EVAL_CHECKPOINTS / "ckpt-{epoch}"),
                                                   save_weights_only=True))
    return cbs


# ----------------------------------------------------------------------------------- variables on servers
def variable_devices(model: Any) -> Dict[str, list]:
    """Where each model variable lives (every shard's device for partitioned variables)."""
    found = {}
    for v in model.variables:
        shards = getattr(v, "variables", None) or [v]
        found[v.name] = [str(s.device) for s in shards]
    return found


def coordinator_result(cfg: ExperimentConfig, model: Any, splits: Any) -> Tuple[Any, Dict[str, Any]]:
    """A single-process copy of the coordinator's model, and where the trained variables lived
    (for a strategy whose ``variables_on_servers``).

    The copy is what gets evaluated and exported: a SavedModel that needs no cluster to be served.
    """
    from orchestrator.training.models import build_model

    devices = variable_devices(model)
    local = build_model(cfg, splits.input_shape, splits.num_classes, splits.scale, target=splits.target_stats)
    local.set_weights(model.get_weights())
    jobs = sorted({d.split("/device:")[0] for ds in devices.values() for d in ds if d})
    return local, {"variable_devices": devices, "variable_jobs": jobs,
                   "num_shards": max((len(ds) for ds in devices.values()), default=0)}


# ---------------------------------------------------------------------------------------- saving
def save_as_non_chief(tf: Any, model: Any, cfg: ExperimentConfig, input_shape: Any, run_dir: Path, identity: TaskIdentity) -> None:
    """TensorFlow's multi-worker saving pattern for a non-chief worker.

    Saving under multi_worker_mirrored is a collective, so every worker saves; a non-chief writes to a
    temporary directory that is deleted at once — only the chief publishes the model version.
    """
    from orchestrator.artifacts.export import save_model, signature_options

    tmp = Path(tempfile.mkdtemp(prefix=f".{identity.task_type}-{identity.task_index}-", dir=run_dir))
    try:
        # The same signatures as the chief's export: every worker traces and saves the same functions.
        save_model(tf, model, tmp / "model", input_shape, cfg.export.input_name, cfg.export.output_name,
                   **signature_options(cfg))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(Path(run_dir) / f"checkpoints_tmp_{identity.task_type}_{identity.task_index}", ignore_errors=True)
