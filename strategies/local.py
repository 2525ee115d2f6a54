"""Strategies that run inside one process: default, one_device, mirrored, central_storage."""
from __future__ import annotations

from typing import Any

from orchestrator.errors import ConfigError
from strategies.base import Strategy, StrategyContext, device_list


def _known_device(ctx: StrategyContext, device: str) -> bool:
    kind, _, index = device.lower().lstrip("/").replace("device:", "").partition(":")
    if not index.isdigit():
        return False
    limit = {"cpu": ctx.devices.logical_cpus, "gpu": ctx.devices.logical_gpus}.get(kind)
    return limit is not None and int(index) < limit


def _check_devices(ctx: StrategyContext, key: str, devices: list) -> None:
    unknown = [d for d in devices if not _known_device(ctx, d)]
    if unknown:
        raise ConfigError(key, devices, f"Device(s) {unknown} are not in the topology, which has "
                          f"{ctx.devices.logical_cpus} logical CPU(s) and {ctx.devices.logical_gpus} logical GPU(s). "
                          "Name devices like '/cpu:0' or '/gpu:1', or choose a topology with more devices (e.g. topology=cpu_x2).")


class DefaultStrategy(Strategy):
    """No distribution: TensorFlow's default strategy on the default device."""

    name = "default"

    def check(self, ctx: StrategyContext) -> None:
        return None

    def replicas(self, ctx: StrategyContext) -> int:
        return 1

    def build(self, ctx: StrategyContext, tf: Any) -> Any:
        return tf.distribute.get_strategy()


class OneDeviceStrategy(Strategy):
    """Everything placed on one named device (first GPU if any, else the CPU)."""

    name = "one_device"

    def _device(self, ctx: StrategyContext) -> str:
        return ctx.cfg.strategy.device or ("/gpu:0" if ctx.devices.logical_gpus else "/cpu:0")

    def check(self, ctx: StrategyContext) -> None:
        _check_devices(ctx, "strategy.device", [self._device(ctx)])

    def replicas(self, ctx: StrategyContext) -> int:
        return 1

    def build(self, ctx: StrategyContext, tf: Any) -> Any:
        return tf.distribute.OneDeviceStrategy(self._device(ctx))


class MirroredStrategy(Strategy):
    """Synchronous data parallelism over the devices of one machine (all-reduce of gradients)."""

    name = "mirrored"

    def _devices(self, ctx: StrategyContext) -> list:
        return device_list(ctx, ctx.cfg.strategy.devices)

    def check(self, ctx: StrategyContext) -> None:
        s = ctx.cfg.strategy
        devices = self._devices(ctx)
        _check_devices(ctx, "strategy.devices", devices)
        if len(devices) < 2:
            raise ConfigError("strategy.devices" if s.devices else "topology.cpu_devices", s.devices or ctx.cfg.topology.cpu_devices,
                              f"strategy=mirrored on one device ({devices}) mirrors nothing. Give it 2+ devices "
                              "(topology=cpu_x2 on a CPU-only machine) or use strategy=one_device.")
        if s.cross_device_ops == "nccl" and not all("gpu" in d.lower() for d in devices):
            raise ConfigError("strategy.cross_device_ops", "nccl", "NCCL all-reduce needs GPU devices only; use hierarchical_copy or reduce_to_one_device on CPUs.")

    def replicas(self, ctx: StrategyContext) -> int:
        return len(self._devices(ctx))

    def build(self, ctx: StrategyContext, tf: Any) -> Any:
        ops = {
            "auto": None,
            "nccl": lambda: tf.distribute.NcclAllReduce(),
            "hierarchical_copy": lambda: tf.distribute.HierarchicalCopyAllReduce(),
            "reduce_to_one_device": lambda: tf.distribute.ReductionToOneDevice(),
        }[ctx.cfg.strategy.cross_device_ops]
        devices = self._devices(ctx)
        if ops is None and not ctx.devices.logical_gpus:
            # MirroredStrategy's automatic choice (NCCL) does not exist for CPU devices.
            ops = lambda: tf.distribute.ReductionToOneDevice()  # noqa: E731
        return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=ops() if ops else None)


class CentralStorageStrategy(Strategy):
    """Variables on one parameter device, computation replicated over the compute devices."""

    name = "central_storage"

    def _devices(self, ctx: StrategyContext) -> list:
        return device_list(ctx, ctx.cfg.strategy.devices)

    def check(self, ctx: StrategyContext) -> None:
        devices = self._devices(ctx)
        _check_devices(ctx, "strategy.devices", devices)
        if ctx.cfg.strategy.parameter_device:
            _check_devices(ctx, "strategy.parameter_device", [ctx.cfg.strategy.parameter_device])

    def replicas(self, ctx: StrategyContext) -> int:
        return len(self._devices(ctx))

    def build(self, ctx: StrategyContext, tf: Any) -> Any:
        return tf.distribute.experimental.CentralStorageStrategy(
            compute_devices=self._devices(ctx), parameter_device=ctx.cfg.strategy.parameter_device or "/cpu:0")
