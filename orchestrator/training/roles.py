"""The cluster-specific parts of a task: servers, the evaluator sidecar, and parameter-server training glue.

Under ``strategy=parameter_server`` only the chief trains (it is the coordinator); ps and worker tasks run a
``tf.distribute.Server`` and block in ``join()`` until the backend stops them after the coordinator ended. An
``evaluator`` task, under any cluster strategy, is a sidecar: it evaluates each checkpoint the chief writes
to ``RUN_DIR/eval_checkpoints`` and keeps its own metrics in ``RUN_DIR/evaluator/``.
:func:`orchestrator.training.task.run_training` calls :func:`server_or_sidecar` first and hands such tasks here before
it builds any model.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from orchestrator.artifacts.run_record import write_json

log = logging.getLogger(__name__)

EVAL_CHECKPOINTS = "eval_checkpoints"
EVALUATOR_DIR = "evaluator"
ATTEMPT_ENV = "TFSCALE_ATTEMPT"  # set by cluster backends: 0 for the first launch, n after n restarts


def server_or_sidecar(cfg: Any, identity: Any) -> Optional[str]:
    """``"server"`` or ``"evaluator"`` if this task does not train itself, else None."""
    if not identity.in_cluster:
        return None
    if identity.task_type == "evaluator":
        return "evaluator"
    if cfg.strategy.name == "parameter_server" and identity.task_type in ("ps", "worker"):
        return "server"
    return None


def run_cluster_task(cfg: Any, run_dir: Path, identity: Any) -> Dict[str, Any]:
    """Run a ps/worker server or the evaluator sidecar; returns what the task recorded."""
    from orchestrator.training.topology import apply_topology
    from strategies.tf_config import role_topology

    apply_topology(role_topology(cfg, identity.task_type))
    if server_or_sidecar(cfg, identity) == "evaluator":
        return run_evaluator(cfg, Path(run_dir))
    return run_server(cfg, identity)


def server_config(tf: Any, cfg: Any, workers: int) -> Any:
    """Session config of a ps/worker server.

    A worker server runs one closure per worker in parallel; with fewer inter-op threads than
    workers + 1 (the default on a 2-core machine) ``fit`` under ParameterServerStrategy can hang.
    """
    config = tf.compat.v1.ConfigProto()
    config.inter_op_parallelism_threads = max(int(cfg.topology.inter_op_threads or 0), workers + 1)
    if cfg.topology.intra_op_threads:
        config.intra_op_parallelism_threads = int(cfg.topology.intra_op_threads)
    return config


def run_server(cfg: Any, identity: Any) -> Dict[str, Any]:
    """Serve this task's part of the cluster until the process is stopped."""
    from orchestrator.runtime.tf_env import import_tensorflow

    tf = import_tensorflow()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    workers = len(spec.as_dict().get("worker", []))
    server = tf.distribute.Server(spec, job_name=identity.task_type, task_index=identity.task_index,
                                  protocol=resolver.rpc_layer or "grpc", config=server_config(tf, cfg, workers), start=True)
    log.info("%s:%d serving at %s", identity.task_type, identity.task_index, server.target)
    # Servers never return on their own: the coordinator's end is the job's end, and the backend stops us.
    server.join()
    return {}


# ------------------------------------------------------------------------------------------ evaluator
def run_evaluator(cfg: Any, run_dir: Path) -> Dict[str, Any]:
    """Evaluate every new checkpoint of the chief with tf_keras' SidecarEvaluator.

    Writes one line per evaluation to ``RUN_DIR/evaluator/evaluations.jsonl`` and the latest to
    ``RUN_DIR/evaluator/metrics.json``; stops after the checkpoint of the last epoch.
    """
    from orchestrator.training.data import load_splits, make_dataset
    from orchestrator.training.models import build_model
    from orchestrator.runtime.tf_env import import_keras, import_tensorflow

    tf, keras = import_tensorflow(), import_keras()
    splits = load_splits(cfg.data)
    x, y = (splits.x_val, splits.y_val) if len(splits.x_val) else (splits.x_test, splits.y_test)
    data = make_dataset(tf, x, y, int(cfg.trainer.batch_size), shuffle=False, seed=0)
    model = build_model(cfg, splits.input_shape, splits.num_classes, splits.scale)
    ckpt_dir = run_dir / EVAL_CHECKPOINTS
    out_dir = run_dir / EVALUATOR_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluations = []

    class _Record(keras.callbacks.Callback):
        def on_test_end(self, logs=None):
            latest = tf.train.latest_checkpoint(str(ckpt_dir))
            entry = {"checkpoint": latest, "epoch": _checkpoint_epoch(latest),
                     "iterations": int(model.optimizer.iterations.numpy()), "time": time.time(),
                     **{k: float(v) for k, v in (logs or {}).items()}}
            evaluations.append(entry)
            with open(out_dir / "evaluations.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            write_json(out_dir / "metrics.json", {"evaluated_on": "validation" if len(splits.x_val) else "test",
                                                 "evaluations": len(evaluations), "last": entry})

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.SidecarEvaluator(model, data=data, checkpoint_dir=str(ckpt_dir), max_evaluations=int(cfg.trainer.epochs),
                                 callbacks=[_Record()]).start()
    return evaluations[-1] if evaluations else {}


def _checkpoint_epoch(path: Optional[str]) -> Optional[int]:
    try:
        return int(str(path).rsplit("-", 1)[-1])
    except ValueError:
        return None


def has_evaluator(cfg: Any) -> bool:
    """Whether the cluster has an evaluator (TF_CONFIG of the training tasks does not list it)."""
    from strategies.tf_config import role_counts

    return bool(role_counts(cfg.cluster).get("evaluator"))


# --------------------------------------------------------------------------------------- callbacks
def cluster_callbacks(keras: Any, cfg: Any, run_dir: Path, identity: Any) -> list:
    """Callbacks a training task adds in a cluster: checkpoints for the evaluator, injected faults."""
    cbs = []
    if identity.in_cluster and has_evaluator(cfg):
        # Every training task saves (non-chiefs into temporary directories, handled by tf_keras) because
        # saving under multi_worker_mirrored is a collective; only the chief's files are kept.
        cbs.append(keras.callbacks.ModelCheckpoint(filepath=str(Path(run_dir) / EVAL_CHECKPOINTS / "ckpt-{epoch}"),
                                                   save_weights_only=True))
    fault = fault_for(cfg, identity)
    if fault is not None:
        cbs.append(KillAtEpoch(keras, fault))
    return cbs


def fault_for(cfg: Any, identity: Any) -> Optional[int]:
    """The epoch at which ``backend.inject_fault`` kills this task (first attempt only), or None."""
    spec = cfg.backend.inject_fault
    if not spec or os.environ.get(ATTEMPT_ENV, "0") != "0":
        return None
    task, _, epoch = str(spec).partition("@")
    if task != f"{identity.task_type}:{identity.task_index}":
        return None
    return int(epoch)


class KillAtEpoch:
    """SIGKILLs this process after the first batch of a given (1-based) epoch: a real, abrupt task death."""

    def __new__(cls, keras: Any, epoch: int):
        class _Kill(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if self._epoch + 1 == epoch:
                    log.warning("inject_fault: killing this task in epoch %d", epoch)
                    os.kill(os.getpid(), signal.SIGKILL)

            def on_epoch_begin(self, e, logs=None):
                self._epoch = e

        return _Kill()


# --------------------------------------------------------------------------------- parameter server
def ps_training_input(tf: Any, keras: Any, cfg: Any, splits: Any) -> Tuple[Any, int]:
    """Per-worker datasets for ParameterServerStrategy and the steps of one epoch.

    Each worker builds its own pipeline from ``dataset_fn`` (a shard of the training set, repeated), so
    ``fit`` needs ``steps_per_epoch``; when the config leaves it null it is one pass over the data.
    """
    batch = int(cfg.trainer.batch_size)
    seed = int(cfg.trainer.seed)
    steps = int(cfg.trainer.steps_per_epoch or math.ceil(len(splits.x_train) / batch))
    x, y = splits.x_train, splits.y_train
    buffer = min(int(cfg.data.shuffle_buffer), len(x))

    def dataset_fn(input_context):
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        ds = ds.shuffle(buffer, seed=seed).repeat()
        return ds.batch(input_context.get_per_replica_batch_size(batch)).prefetch(2)

    return keras.utils.experimental.DatasetCreator(dataset_fn), steps


def variable_devices(model: Any) -> Dict[str, list]:
    """Where each model variable lives (every shard's device for partitioned variables)."""
    found = {}
    for v in model.variables:
        shards = getattr(v, "variables", None) or [v]
        found[v.name] = [str(s.device) for s in shards]
    return found


def coordinator_result(cfg: Any, model: Any, splits: Any) -> Tuple[Any, Dict[str, Any]]:
    """A single-process copy of the coordinator's model, and where the trained variables lived.

    The copy is what gets evaluated and exported: a SavedModel that needs no cluster to be served.
    """
    from orchestrator.training.models import build_model

    devices = variable_devices(model)
    local = build_model(cfg, splits.input_shape, splits.num_classes, splits.scale)
    local.set_weights(model.get_weights())
    jobs = sorted({d.split("/device:")[0] for ds in devices.values() for d in ds if d})
    return local, {"variable_devices": devices, "variable_jobs": jobs,
                   "num_shards": max((len(ds) for ds in devices.values()), default=0)}


# ---------------------------------------------------------------------------------------- saving
def save_as_non_chief(tf: Any, model: Any, cfg: Any, input_shape: Any, run_dir: Path, identity: Any) -> None:
    """TensorFlow's multi-worker saving pattern for a non-chief worker.

    Saving under multi_worker_mirrored is a collective, so every worker saves; a non-chief writes to a
    temporary directory that is deleted at once — only the chief publishes the model version.
    """
    from orchestrator.artifacts.export import save_model

    tmp = Path(tempfile.mkdtemp(prefix=f".{identity.task_type}-{identity.task_index}-", dir=run_dir))
    try:
        save_model(tf, model, tmp / "model", input_shape, cfg.export.input_name, cfg.export.output_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(Path(run_dir) / f"checkpoints_tmp_{identity.task_type}_{identity.task_index}", ignore_errors=True)
