"""Strategies that span a cluster of tasks: multi_worker_mirrored, parameter_server, tpu.

They read the cluster from ``TF_CONFIG`` in the task process; a backend that launches the cluster
(``processes``, ``ray``, ``vertex``) sets it for each task, or the platform does (an existing cluster).
"""
from __future__ import annotations

import math
from typing import Any, Dict

from orchestrator.errors import ConfigError
from strategies.base import ExperimentSettings, FitData, FitInput, Strategy, StrategyContext
from strategies.devices import local_tpu_devices
from strategies.tf_config import check_cluster, cluster_from_env, role_counts, role_topology


def _require_cluster(ctx: StrategyContext, name: str, example: str) -> Dict[str, int]:
    counts = cluster_from_env() or role_counts(ctx.cfg.cluster)
    if not counts:
        raise ConfigError("cluster", ctx.cfg.cluster.name,
                          f"strategy={name} trains on a cluster of tasks; choose one and a backend that launches it, "
                          f"e.g. `{example}`.")
    if not cluster_from_env() and not ctx.backend_launches_cluster:
        raise ConfigError("backend", ctx.cfg.backend.name,
                          f"strategy={name} needs a backend that launches the cluster's tasks, e.g. `{example}` "
                          "(or backend=ray / backend=vertex).")
    if not cluster_from_env():
        check_cluster(ctx.cfg)
    return counts


class MultiWorkerMirroredStrategy(Strategy):
    """Synchronous all-reduce data parallelism across worker processes."""

    name = "multi_worker_mirrored"
    needs_cluster = True

    def check(self, ctx: StrategyContext) -> None:
        counts = _require_cluster(ctx, self.name, "cluster=workers_2 backend=processes")
        if counts.get("ps"):
            raise ConfigError("cluster.ps.count", counts["ps"], "multi_worker_mirrored has no parameter servers; set it to 0 or use strategy=parameter_server.")
        if ctx.cfg.strategy.communication == "nccl" and not ctx.devices.logical_gpus:
            raise ConfigError("strategy.communication", "nccl", "NCCL collectives need a GPU in every worker; on CPUs use ring or auto.")

    def replicas(self, ctx: StrategyContext) -> int:
        counts = cluster_from_env() or role_counts(ctx.cfg.cluster)
        per_worker = max(1, ctx.devices.logical_gpus or 1)
        return (counts.get("chief", 0) + counts.get("worker", 0)) * per_worker

    def build(self, ctx: StrategyContext, tf: Any) -> Any:
        impl = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}[ctx.cfg.strategy.communication]
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=impl))


class ParameterServerStrategy(Strategy):
    """Asynchronous training: a coordinator (the chief) dispatches steps to workers; variables live on ps tasks.

    Only the chief trains: it builds the strategy and runs ``fit``, which sends closures to the worker servers
    and keeps the variables on the ps servers. Each worker builds its own input pipeline from a
    ``DatasetCreator``, so an epoch has a fixed number of steps.
    """

    name = "parameter_server"
    needs_cluster = True
    server_roles = ("ps", "worker")
    variables_on_servers = True

    def check(self, ctx: StrategyContext) -> None:
        counts = _require_cluster(ctx, self.name, "cluster=ps_2x1 backend=processes")
        if not counts.get("ps"):
            raise ConfigError("cluster.ps.count", 0, "strategy=parameter_server needs at least one ps task; e.g. cluster=ps_2x1.")
        if not counts.get("worker"):
            raise ConfigError("cluster.worker.count", 0, "strategy=parameter_server needs at least one worker task; e.g. cluster=ps_2x1.")
        if not counts.get("chief"):
            raise ConfigError("cluster.chief.count", 0, "strategy=parameter_server runs its coordinator on the chief; set cluster.chief.count=1 (e.g. cluster=ps_2x1).")
        s = ctx.cfg.strategy
        if s.num_shards < 0 or s.min_shard_bytes < 0 or s.max_shards < 0:
            raise ConfigError("strategy.num_shards", s.num_shards, "Shard settings must be >= 0 (0 = off).")
        if s.num_shards and s.min_shard_bytes:
            raise ConfigError("strategy.min_shard_bytes", s.min_shard_bytes, "Choose one partitioning: num_shards (fixed) or min_shard_bytes (by size), not both.")

    def replicas(self, ctx: StrategyContext) -> int:
        # Each worker consumes whole global batches from its own dataset.
        return 1

    def partitioner(self, cfg: ExperimentSettings, tf: Any, num_ps: int) -> Any:
        """The variable partitioner of ``strategy.num_shards`` / ``min_shard_bytes`` (None: one shard per variable)."""
        s = cfg.strategy
        if s.num_shards:
            return tf.distribute.experimental.partitioners.FixedShardsPartitioner(s.num_shards)
        if s.min_shard_bytes:
            return tf.distribute.experimental.partitioners.MinSizePartitioner(
                min_shard_bytes=s.min_shard_bytes, max_shards=s.max_shards or num_ps or 1)
        return None

    def server_config(self, tf: Any, ctx: StrategyContext, role: str, workers: int) -> Any:
        """Session config of a ps/worker server.

        A worker server runs one closure per worker in parallel; with fewer inter-op threads than
        workers + 1 (the default on a 2-core machine) ``fit`` under ParameterServerStrategy can hang.
        """
        topology = role_topology(ctx.cfg, role)
        config = tf.compat.v1.ConfigProto()
        config.inter_op_parallelism_threads = max(topology.inter_op_threads, workers + 1)
        if topology.intra_op_threads:
            config.intra_op_parallelism_threads = topology.intra_op_threads
        return config

    def build(self, ctx: StrategyContext, tf: Any) -> Any:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if resolver.task_type in self.server_roles:
            # A ps or worker task serves: the coordinator's strategy object drives it remotely.
            spec = resolver.cluster_spec()
            workers = len(spec.as_dict().get("worker", []))
            return tf.distribute.Server(spec, job_name=resolver.task_type, task_index=resolver.task_id,
                                        protocol=resolver.rpc_layer or "grpc",
                                        config=self.server_config(tf, ctx, resolver.task_type, workers), start=True)
        return tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=self.partitioner(ctx.cfg, tf, cluster_from_env().get("ps", 1)))

    def fit_input(self, data: FitData, tf: Any, keras: Any) -> FitInput:
        """Per-worker datasets from a ``DatasetCreator`` and the steps of one epoch; no validation data.

        Each worker builds its own pipeline from ``dataset_fn`` (a shard of the training set, repeated), so
        ``fit`` needs ``steps_per_epoch``; when the config leaves it null it is one pass over the data.
        """
        x, y, batch, seed = data.x, data.y, data.batch_size, data.seed
        buffer = min(data.shuffle_buffer, len(x))

        def dataset_fn(input_context):
            ds = tf.data.Dataset.from_tensor_slices((x, y))
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            ds = ds.shuffle(buffer, seed=seed).repeat()
            return ds.batch(input_context.get_per_replica_batch_size(batch)).prefetch(2)

        steps = data.steps_per_epoch or math.ceil(len(x) / batch)
        return FitInput(keras.utils.experimental.DatasetCreator(dataset_fn), steps, None)


class TPUStrategy(Strategy):
    """TPU training through a TPUClusterResolver (runs only where a TPU exists)."""

    name = "tpu"
    needs_cluster = False

    def check(self, ctx: StrategyContext) -> None:
        tpu = ctx.cfg.strategy.tpu
        if not tpu:
            raise ConfigError("strategy.tpu", tpu, "Name the TPU: a TPU name, a grpc://host:port address, or 'local'.")
        if str(tpu) == "local" and not local_tpu_devices():
            raise ConfigError("strategy.tpu", tpu, "This machine has no TPU device (no /dev/accel* or /dev/vfio/<n>), and "
                              "strategy.tpu=local works only on a Cloud TPU VM. Name a reachable TPU (strategy.tpu=grpc://10.240.1.2:8470 "
                              "or its name), or choose a strategy for this machine's devices, e.g. strategy=default or "
                              "strategy=mirrored topology=cpu_x2.")
        if str(tpu).startswith("grpc://"):
            from strategies.tf_config import split_address

            try:
                split_address(str(tpu)[len("grpc://"):])
            except ValueError:
                raise ConfigError("strategy.tpu", tpu, "A TPU address is grpc://host:port, e.g. grpc://10.240.1.2:8470.") from None
        if role_counts(ctx.cfg.cluster):
            raise ConfigError("cluster", ctx.cfg.cluster.name, "strategy=tpu finds its workers through the TPUClusterResolver, not a TF_CONFIG cluster; use cluster=none.")

    def replicas(self, ctx: StrategyContext) -> int:
        return 1  # known only once the TPU system is initialised; batch divisibility is checked then

    def resolver_kwargs(self, cfg: ExperimentSettings) -> Dict[str, Any]:
        """Arguments of ``TPUClusterResolver`` derived from the config."""
        s = cfg.strategy
        kwargs: Dict[str, Any] = {"tpu": s.tpu}
        if s.tpu_zone:
            kwargs["zone"] = s.tpu_zone
        if s.tpu_project:
            kwargs["project"] = s.tpu_project
        return kwargs

    def build(self, ctx: StrategyContext, tf: Any) -> Any:
        tpu = ctx.cfg.strategy.tpu
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(**self.resolver_kwargs(ctx.cfg))
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            # Where no TPU answers, TensorFlow raises a kernel-registration error several screens long.
            found = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0].rstrip(".")
            raise ConfigError("strategy.tpu", tpu, "Run on a Cloud TPU VM (strategy.tpu=local), name a reachable TPU "
                              "(its name, or grpc://host:8470), or choose a strategy for this machine's devices, "
                              "e.g. strategy=mirrored.", problem=f"no TPU could be initialised ({found[:160]})") from None
        return tf.distribute.TPUStrategy(resolver)
