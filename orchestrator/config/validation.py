"""Cross-field validation of a composed experiment, before any TensorFlow is imported.

Types, unknown keys and values outside a closed choice (a :class:`~orchestrator.config.schema.Choice`) are
caught by the schemas at compose time; this module checks values and the rules that span groups (replicas vs batch, strategy vs topology, cluster vs backend, data files). Every
failure is a :class:`ConfigError` naming the key, the value and the fix.
"""
from __future__ import annotations

import re
from typing import Any, Dict

from omegaconf import OmegaConf

import strategies
from strategies.tf_config import describe_counts, role_counts, role_topology
from orchestrator.config import registry
from orchestrator.config.data import check_data
from orchestrator.config.heads import check_head
from orchestrator.config.paths import check_names, check_output_directories
from orchestrator.config.targets import check_targets
from orchestrator.config.streams import check_workers as check_stream_workers
from orchestrator.config.schema import (ExperimentConfig, ExportConfig, MixedPrecision, ModelConfig, TrainerConfig)
from orchestrator.errors import ConfigError
from orchestrator.config.devices import DevicePlan, check_gpu_share, plan_devices


_BUILDER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def check_model(m: ModelConfig) -> None:
    """Check the layer list or builder and the optimizer settings of the ``model`` group."""
    if m.builder is None:
        if not m.layers:
            raise ConfigError("model.layers", [], "Declare at least one layer (a _target_ to a tf_keras layer), or set model.builder=package.module:function.")
        for i, layer in enumerate(m.layers):
            target = layer.get("_target_") if hasattr(layer, "get") else None
            if not isinstance(target, str) or "." not in target:
                raise ConfigError(f"model.layers[{i}]._target_", target, "Each layer needs a dotted _target_, e.g. tf_keras.layers.Dense with its arguments (units: 128).")
    elif not _BUILDER.match(m.builder):
        raise ConfigError("model.builder", m.builder, "Use 'package.module:function'; the function gets (input_shape, num_classes, **model.builder_kwargs) and returns a tf_keras model.")
    o = m.optimizer
    if not o.learning_rate > 0:
        raise ConfigError("model.optimizer.learning_rate", o.learning_rate, "It must be > 0, e.g. 0.001.")
    if not 0.0 <= o.momentum < 1.0:
        raise ConfigError("model.optimizer.momentum", o.momentum, "It must be in [0, 1).")
    if o.clipnorm is not None and o.clipnorm <= 0:
        raise ConfigError("model.optimizer.clipnorm", o.clipnorm, "Give a positive norm, or null.")


def check_trainer(t: TrainerConfig) -> None:
    """Check the ``trainer`` group's counts and settings."""
    if t.epochs < 1:
        raise ConfigError("trainer.epochs", t.epochs, "Train for at least 1 epoch.")
    if t.batch_size < 1:
        raise ConfigError("trainer.batch_size", t.batch_size, "The global batch size must be >= 1.")
    if t.steps_per_epoch is not None and t.steps_per_epoch < 1:
        raise ConfigError("trainer.steps_per_epoch", t.steps_per_epoch, "Use a positive number of steps, or null for one pass over the data.")
    if t.verbose not in (0, 1, 2):
        raise ConfigError("trainer.verbose", t.verbose, "Use 0 (silent), 1 (progress bar) or 2 (one line per epoch).")
    if t.early_stopping.patience < 0:
        raise ConfigError("trainer.early_stopping.patience", t.early_stopping.patience, "Use 0 or more epochs.")
    if t.seed < 0:
        raise ConfigError("trainer.seed", t.seed, "Use a non-negative integer seed.")


def check_export(e: ExportConfig) -> None:
    """Check the repository and signature names of the ``export`` group."""
    if not e.enabled:
        return
    if not e.model_base:
        raise ConfigError("export.model_base", e.model_base, "Name the model repository directory, e.g. models.")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", e.model_name):
        raise ConfigError("export.model_name", e.model_name, "Use letters, digits, '_', '-' or '.', no slashes (it is one directory of the model repository).")
    for key in ("input_name", "output_name"):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", getattr(e, key)):
            raise ConfigError(f"export.{key}", getattr(e, key), "Signature names must be identifiers (letters, digits, '_').")


def strategy_context(cfg: ExperimentConfig, plan: DevicePlan | None = None) -> strategies.StrategyContext:
    """The context strategies are checked and built with."""
    from strategies.tf_config import cluster_from_env

    plan = plan or plan_devices(cfg.topology)
    counts = cluster_from_env() or (role_counts(cfg.cluster) if cfg.cluster.name != "none" or cfg.cluster.spec else {})
    return strategies.StrategyContext(cfg=cfg, devices=plan, cluster_workers=counts.get("chief", 0) + counts.get("worker", 0),
                                      cluster_ps=counts.get("ps", 0),
                                      backend_launches_cluster=registry.backend(cfg.backend.name).launches_clusters)


def check_strategy(cfg: ExperimentConfig, plan: DevicePlan) -> int:
    """Check the strategy against the topology and cluster; return the replica count."""
    strategy = strategies.get(cfg.strategy.name)
    ctx = strategy_context(cfg, plan)
    declared = role_counts(cfg.cluster)
    tasks = sum(n for role, n in declared.items() if role != "evaluator")
    if not strategy.needs_cluster and ctx.backend_launches_cluster and tasks > 1:
        raise ConfigError("strategy.name", cfg.strategy.name,
                          f"The cluster has {tasks} training tasks ({describe_counts(declared)}) but "
                          f"strategy={cfg.strategy.name} runs in one process. Use a strategy that trains on a cluster "
                          f"({', '.join(n for n, s in strategies.STRATEGIES.items() if s.needs_cluster)}), or cluster=none.")
    strategy.check(ctx)
    from strategies.tf_config import cluster_from_env

    if tasks > 1 and not ctx.backend_launches_cluster and not cluster_from_env():  # no silent single-process run
        example = "strategy=parameter_server" if declared.get("ps") else "strategy=multi_worker_mirrored"
        raise ConfigError("backend", cfg.backend.name,
                          f"The cluster declares {describe_counts(declared)} tasks, but backend={cfg.backend.name} runs one "
                          f"process, which would train alone and ignore them. Launch the cluster: backend=processes {example} "
                          "(or backend=ray / backend=vertex); or train in one process with cluster=none.")
    replicas = strategy.replicas(ctx)
    if cfg.trainer.batch_size % replicas:
        lower = cfg.trainer.batch_size - cfg.trainer.batch_size % replicas
        raise ConfigError("trainer.batch_size", cfg.trainer.batch_size,
                          f"The global batch is split across {replicas} replicas (strategy={cfg.strategy.name}), so it must be divisible by {replicas}; "
                          f"use e.g. trainer.batch_size={lower or replicas} or {lower + replicas}.")
    if cfg.trainer.mixed_precision == MixedPrecision.mixed_float16 and not plan.logical_gpus:
        raise ConfigError("trainer.mixed_precision", "mixed_float16", "float16 compute needs a GPU; on CPU use mixed_bfloat16 or none.")
    return replicas


def check_backend(cfg: ExperimentConfig) -> None:
    """The backend's own checks, and restarts only where training can resume."""
    registry.backend(cfg.backend.name).check(cfg)
    if cfg.backend.max_restarts < 0:
        raise ConfigError("backend.max_restarts", cfg.backend.max_restarts, "Use 0 or more restarts.")
    if cfg.backend.max_restarts and not cfg.trainer.backup_and_restore:
        raise ConfigError("backend.max_restarts", cfg.backend.max_restarts, "Restarting a task only resumes training with trainer.backup_and_restore=true; set it, or max_restarts=0.")


def validate(cfg: ExperimentConfig) -> Dict[str, Any]:
    """Validate a composed experiment; return facts derived on the way (device plan, replicas).

    Raises ConfigError on the first problem. Imports no TensorFlow.
    """
    check_names(cfg)
    check_data(cfg.data)
    check_stream_workers(cfg)
    check_model(cfg.model)
    check_targets(cfg)
    check_head(cfg)
    check_trainer(cfg.trainer)
    check_export(cfg.export)
    from orchestrator.config.quantization import check as check_quantization

    check_quantization(cfg)
    check_backend(cfg)
    plan = plan_devices(cfg.topology)
    trials_per_gpu = OmegaConf.select(cfg, "hydra.launcher.trials_per_gpu", default=None)  # a study's trial
    if trials_per_gpu is not None:
        check_gpu_share(int(trials_per_gpu), cfg.topology.gpu_memory_limit_mb)
    for role in role_counts(cfg.cluster):  # a role's own topology must fit this machine too
        if getattr(cfg.cluster, role).topology:
            plan_devices(role_topology(cfg, role))
    replicas = check_strategy(cfg, plan)
    registry.deploy_target(cfg.deploy.target).check(cfg)
    check_output_directories(cfg)  # last: the only check that touches the filesystem (creates and removes a probe)
    return {"devices": plan, "replicas": replicas}
