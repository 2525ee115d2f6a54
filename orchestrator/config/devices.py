"""The device plan of a topology, worked out from the config and the machine without TensorFlow.

:func:`plan_devices` only reads the machine (``/proc``, no ``nvidia-smi``, no CUDA) and the config, so validation
reasons about replicas in milliseconds; :mod:`orchestrator.training.topology` applies the plan in the task process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Mapping, Optional

from orchestrator.config.schema import OnMissingGpu, TopologyConfig
from orchestrator.errors import ConfigError
from strategies.devices import DevicePlan


def detect_gpus() -> int:
    """Count NVIDIA GPUs on this machine without importing TensorFlow or starting CUDA."""
    forced = os.environ.get("TFSCALE_FAKE_GPU_COUNT")
    if forced is not None:  # lets tests plan GPU topologies on CPU-only machines
        return int(forced)
    proc = Path("/proc/driver/nvidia/gpus")
    try:
        return sum(1 for _ in proc.iterdir())
    except OSError:
        return 0


def _visible_from_env(total: int, env: Mapping[str, str]) -> int:
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return total
    ids = [p for p in raw.split(",") if p.strip() and p.strip() != "-1"]
    return min(len(ids), total)


def plan_devices(topo: TopologyConfig, env: Optional[Mapping[str, str]] = None, gpus_on_machine: Optional[int] = None) -> DevicePlan:
    """Check the topology against this machine and return the devices the task will have.

    Raises :class:`ConfigError` for values out of range and for GPUs that are not there (unless
    ``on_missing_gpu: cpu_fallback``, which is recorded in the plan and logged when applied).
    """
    env = os.environ if env is None else env
    if topo.cpu_devices < 1:
        raise ConfigError("topology.cpu_devices", topo.cpu_devices, "It must be >= 1 (1 = no split); e.g. topology=cpu_x2.")
    if topo.virtual_gpus < 1:
        raise ConfigError("topology.virtual_gpus", topo.virtual_gpus, "It must be >= 1 (1 = no split).")
    if topo.gpu_memory_limit_mb is not None and topo.gpu_memory_limit_mb <= 0:
        raise ConfigError("topology.gpu_memory_limit_mb", topo.gpu_memory_limit_mb, "Give a positive number of MiB, or null for no limit.")
    if topo.virtual_gpus > 1 and topo.gpu_memory_limit_mb is None:
        raise ConfigError("topology.gpu_memory_limit_mb", None, f"virtual_gpus={topo.virtual_gpus} needs a memory limit per virtual GPU; set topology.gpu_memory_limit_mb (e.g. 2048).")
    for key in ("inter_op_threads", "intra_op_threads"):
        if getattr(topo, key) < 0:
            raise ConfigError(f"topology.{key}", getattr(topo, key), "Use 0 (TensorFlow's choice) or a positive count.")
    gpu_ids = list(topo.gpus) if topo.gpus is not None else None
    if gpu_ids is not None:
        if any((not isinstance(g, int)) or g < 0 for g in gpu_ids) or len(set(gpu_ids)) != len(gpu_ids):
            raise ConfigError("topology.gpus", gpu_ids, "List distinct GPU indices >= 0 (PCI bus order), [] for none, or null for all.")

    total = detect_gpus() if gpus_on_machine is None else gpus_on_machine
    wants_gpu = bool(gpu_ids) or topo.virtual_gpus > 1 or topo.gpu_memory_limit_mb is not None
    notes: List[str] = []
    if gpu_ids is not None:
        missing = [g for g in gpu_ids if g >= total]
        if missing and topo.on_missing_gpu == OnMissingGpu.error:
            what = f"this machine has {total} GPU(s)" if total else "this machine has no GPU"
            raise ConfigError("topology.gpus", gpu_ids, f"{what}, so GPU(s) {missing} do not exist. Pick indices below {total}, use topology=cpu, or set topology.on_missing_gpu=cpu_fallback to run on the CPU.")
        visible = len([g for g in gpu_ids if g < total])
    else:
        visible = _visible_from_env(total, env)
    fallback = False
    if wants_gpu and visible == 0:
        if topo.on_missing_gpu == OnMissingGpu.error:
            key, value = ("topology.gpu_memory_limit_mb", topo.gpu_memory_limit_mb) if topo.gpu_memory_limit_mb is not None else ("topology.virtual_gpus", topo.virtual_gpus)
            if gpu_ids:
                key, value = "topology.gpus", gpu_ids
            raise ConfigError(key, value, "This machine has no visible GPU, so GPU settings cannot apply. Use topology=cpu or cpu_x2, or set topology.on_missing_gpu=cpu_fallback to run on the CPU.")
        fallback = True
        notes.append("GPU settings requested but no GPU is visible: running on CPU (topology.on_missing_gpu=cpu_fallback)")
    logical_gpus = visible * topo.virtual_gpus if visible else 0
    return DevicePlan(physical_gpus=visible, logical_gpus=logical_gpus, logical_cpus=topo.cpu_devices,
                      gpu_fallback=fallback, notes=tuple(notes))


def check_gpu_share(trials_per_gpu: int, memory_limit_mb: Optional[int]) -> None:
    """Study trials sharing a GPU (``hydra.launcher.trials_per_gpu``) must each keep to a memory slice.

    TensorFlow otherwise maps nearly all of a GPU's memory in the first process that touches it, and the next
    trial on that GPU fails to allocate; ``topology.gpu_memory_limit_mb`` gives each trial its own logical GPU of
    that size. (Ray's fractional GPUs share the scheduling only, not the memory.)
    """
    if trials_per_gpu < 1:
        raise ConfigError("hydra.launcher.trials_per_gpu", trials_per_gpu, "Use 1 (a GPU per trial) or more trials per GPU.")
    if trials_per_gpu > 1 and memory_limit_mb is None:
        raise ConfigError("hydra.launcher.trials_per_gpu", trials_per_gpu,
                          f"{trials_per_gpu} trials share each GPU, so each needs its own memory slice: set "
                          f"topology.gpu_memory_limit_mb to at most the GPU's memory / {trials_per_gpu} "
                          "(e.g. topology.gpu_memory_limit_mb=4096), or use hydra.launcher.trials_per_gpu=1.")


__all__ = ["DevicePlan", "check_gpu_share", "detect_gpus", "plan_devices"]
