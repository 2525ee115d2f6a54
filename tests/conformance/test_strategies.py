"""Every strategy runs the shipped conformance suite (:mod:`strategies.testing`).

Valid contexts are configs the project's full validation accepts; invalid ones are composed as a user's
overrides would be and handed to ``check`` directly.
"""
from __future__ import annotations

import functools
import os

from orchestrator.config.compose import compose
from orchestrator.config.validation import strategy_context, validate
from orchestrator.runtime import supervisor
from strategies.testing import BasicStrategyTestCase, Invalid

MWMS = ["strategy=multi_worker_mirrored", "cluster=workers_2", "backend=processes"]
PS = ["strategy=parameter_server", "cluster=ps_2x1", "backend=processes"]


@functools.lru_cache(maxsize=None)  # composed once per module: several tests ask for the same contexts
def _context(overrides: tuple, validated: bool):
    cfg = compose(list(overrides))
    if validated:
        validate(cfg)
    return strategy_context(cfg)


def valid(*overrides: str):
    """The strategy context of a config that passes the project's whole validation."""
    return _context(overrides, True)


def invalid(overrides, key, value) -> Invalid:
    return Invalid(_context(tuple(overrides), False), key, value)


class _Suite(BasicStrategyTestCase):
    """Every strategy's tasks start through tfscale's own process supervisor."""

    start_process = staticmethod(supervisor.start)


class TestDefault(_Suite):
    name = "default"

    def valid_contexts(self):
        return [valid("strategy=default"), valid("strategy=default", "topology=cpu_x2")]

    def expected_replicas(self, ctx):
        return 1


class TestOneDevice(_Suite):
    name = "one_device"

    def valid_contexts(self):
        return [valid("strategy=one_device", "topology=cpu"),
                valid("strategy=one_device", "topology=cpu_x2", "strategy.device=/cpu:1")]

    def invalid_contexts(self):
        return [invalid(["strategy=one_device", "topology=cpu", "strategy.device=/cpu:3"], "strategy.device", ["/cpu:3"]),
                invalid(["strategy=one_device", "topology=cpu", "strategy.device=cpu0"], "strategy.device", ["cpu0"])]

    def expected_replicas(self, ctx):
        return 1


class TestMirrored(_Suite):
    name = "mirrored"

    def valid_contexts(self):
        return [valid("strategy=mirrored", "topology=cpu_x2"),
                valid("strategy=mirrored", "topology=cpu_x4", "strategy.devices=[/cpu:0,/cpu:2]")]

    def invalid_contexts(self):
        return [invalid(["strategy=mirrored", "topology=cpu"], "topology.cpu_devices", 1),
                invalid(["strategy=mirrored", "topology=cpu_x2", "strategy.devices=[/cpu:0,/cpu:7]"], "strategy.devices",
                        ["/cpu:0", "/cpu:7"]),
                invalid(["strategy=mirrored", "topology=cpu_x2", "strategy.cross_device_ops=nccl"],
                        "strategy.cross_device_ops", "nccl")]

    def expected_replicas(self, ctx):
        return len(ctx.cfg.strategy.devices or []) or ctx.devices.logical_cpus


class TestCentralStorage(_Suite):
    name = "central_storage"

    def valid_contexts(self):
        return [valid("strategy=central_storage", "topology=cpu_x2"),
                valid("strategy=central_storage", "topology=cpu_x2", "strategy.parameter_device=/cpu:1")]

    def invalid_contexts(self):
        return [invalid(["strategy=central_storage", "topology=cpu_x2", "strategy.devices=[/cpu:0,/cpu:9]"],
                        "strategy.devices", ["/cpu:0", "/cpu:9"]),
                invalid(["strategy=central_storage", "topology=cpu_x2", "strategy.parameter_device=/cpu:9"],
                        "strategy.parameter_device", ["/cpu:9"])]

    def expected_replicas(self, ctx):
        return ctx.devices.logical_cpus


class TestMultiWorkerMirrored(_Suite):
    name = "multi_worker_mirrored"

    def valid_contexts(self):
        return [valid(*MWMS), valid(*MWMS, "cluster.worker.count=1"),
                valid("strategy=multi_worker_mirrored", "cluster=chief_workers_2", "backend=ray", "trainer.batch_size=48")]

    def invalid_contexts(self):
        return [invalid(["strategy=multi_worker_mirrored"], "cluster", "none"),
                invalid(["strategy=multi_worker_mirrored", "cluster=workers_2"], "backend", "local"),
                invalid([*MWMS, "strategy.communication=nccl"], "strategy.communication", "nccl"),
                invalid(["strategy=multi_worker_mirrored", "cluster=ps_2x1", "backend=processes"], "cluster.ps.count", 1)]

    def expected_replicas(self, ctx):
        return ctx.cluster_workers


class TestParameterServer(_Suite):
    name = "parameter_server"

    def valid_contexts(self):
        return [valid(*PS), valid(*PS, "strategy.num_shards=2")]

    def invalid_contexts(self):
        return [invalid(["strategy=parameter_server", "cluster=workers_2", "backend=processes"], "cluster.ps.count", 0),
                invalid([*PS, "strategy.num_shards=2", "strategy.min_shard_bytes=1024"], "strategy.min_shard_bytes", 1024),
                invalid([*PS, "strategy.num_shards=-1"], "strategy.num_shards", -1)]

    def expected_replicas(self, ctx):
        return 1

    def build_cluster(self, ctx):
        # The smallest cluster the strategy accepts keeps the build quick on two cores.
        return {"chief": 1, "worker": 1, "ps": 1}


def _tpu_here() -> bool:
    from strategies.devices import local_tpu_devices

    return bool(os.environ.get("TPU_NAME")) or bool(local_tpu_devices())


class TestTPU(_Suite):
    name = "tpu"

    def valid_contexts(self):
        local = [valid("strategy=tpu")] if _tpu_here() else []  # strategy.tpu=local needs a TPU device here
        return local + [valid("strategy=tpu", "strategy.tpu=grpc://10.240.1.2:8470"), valid("strategy=tpu", "strategy.tpu=my-tpu")]

    def invalid_contexts(self):
        no_device = [] if _tpu_here() else [invalid(["strategy=tpu"], "strategy.tpu", "local")]
        return no_device + [
            invalid(["strategy=tpu", "strategy.tpu=null"], "strategy.tpu", None),
            invalid(["strategy=tpu", "strategy.tpu=grpc://10.240.1.2"], "strategy.tpu", "grpc://10.240.1.2"),
            invalid(["strategy=tpu", "strategy.tpu=my-tpu", "cluster=workers_2"], "cluster", "workers_2")]

    def expected_replicas(self, ctx):
        return 1

    def missing_hardware(self):
        return None if _tpu_here() else "this machine has no TPU"


def test_every_registered_strategy_runs_the_suite():
    import strategies

    suites = {cls.name for cls in globals().values()
              if isinstance(cls, type) and issubclass(cls, BasicStrategyTestCase) and cls.name}
    assert suites == set(strategies.STRATEGIES)

