"""Device topology: planned from the config without TensorFlow, applied before TensorFlow initialises.

Two halves with one boundary: :func:`plan_devices` only reads the machine (``/proc``, ``nvidia-smi``-free)
and the config, so validation can reason about replicas in milliseconds; :func:`apply_topology` runs in the
task process, sets the CUDA environment, then imports TensorFlow and configures its physical devices —
which TensorFlow allows only before its runtime is initialised.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from orchestrator.errors import ConfigError

log = logging.getLogger(__name__)

ON_MISSING_GPU = ("error", "cpu_fallback")


@dataclass(frozen=True)
class DevicePlan:
    """What the task process will see once the topology is applied."""

    physical_gpus: int  # GPUs visible to the process (after CUDA_VISIBLE_DEVICES)
    logical_gpus: int
    logical_cpus: int
    gpu_fallback: bool = False  # GPUs were asked for, none exist, and the config allowed running on CPU
    notes: tuple = ()

    @property
    def accelerator_devices(self) -> List[str]:
        """Device names a multi-device strategy mirrors over by default."""
        if self.logical_gpus:
            return [f"/gpu:{i}" for i in range(self.logical_gpus)]
        return [f"/cpu:{i}" for i in range(self.logical_cpus)]


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


def plan_devices(topo: Any, env: Optional[Mapping[str, str]] = None, gpus_on_machine: Optional[int] = None) -> DevicePlan:
    """Check the topology against this machine and return the devices the task will have.

    Raises :class:`ConfigError` for values out of range and for GPUs that are not there (unless
    ``on_missing_gpu: cpu_fallback``, which is recorded in the plan and logged when applied).
    """
    env = os.environ if env is None else env
    if topo.on_missing_gpu not in ON_MISSING_GPU:
        raise ConfigError("topology.on_missing_gpu", topo.on_missing_gpu, f"Use one of: {', '.join(ON_MISSING_GPU)}.")
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
        if missing and topo.on_missing_gpu == "error":
            what = f"this machine has {total} GPU(s)" if total else "this machine has no GPU"
            raise ConfigError("topology.gpus", gpu_ids, f"{what}, so GPU(s) {missing} do not exist. Pick indices below {total}, use topology=cpu, or set topology.on_missing_gpu=cpu_fallback to run on the CPU.")
        visible = len([g for g in gpu_ids if g < total])
    else:
        visible = _visible_from_env(total, env)
    fallback = False
    if wants_gpu and visible == 0:
        if topo.on_missing_gpu == "error":
            key, value = ("topology.gpu_memory_limit_mb", topo.gpu_memory_limit_mb) if topo.gpu_memory_limit_mb is not None else ("topology.virtual_gpus", topo.virtual_gpus)
            if gpu_ids:
                key, value = "topology.gpus", gpu_ids
            raise ConfigError(key, value, "This machine has no visible GPU, so GPU settings cannot apply. Use topology=cpu or cpu_x2, or set topology.on_missing_gpu=cpu_fallback to run on the CPU.")
        fallback = True
        notes.append("GPU settings requested but no GPU is visible: running on CPU (topology.on_missing_gpu=cpu_fallback)")
    logical_gpus = visible * topo.virtual_gpus if visible else 0
    return DevicePlan(physical_gpus=visible, logical_gpus=logical_gpus, logical_cpus=topo.cpu_devices,
                      gpu_fallback=fallback, notes=tuple(notes))


def set_process_environment(topo: Any, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment variables that must be set before TensorFlow is imported (returned and applied)."""
    env = os.environ if env is None else env
    changes = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "TF_USE_LEGACY_KERAS": "1"}
    if topo.gpus is not None:
        changes["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in topo.gpus) if topo.gpus else "-1"
    env.update(changes)
    return changes


def configure_devices(topo: Any) -> Tuple[Any, DevicePlan, Dict[str, str]]:
    """Set the CUDA environment, import TensorFlow and configure its physical devices and thread pools.

    Everything here is accepted by TensorFlow only before its runtime initialises, so nothing in this
    function lists logical devices or runs an op. Strategies that start the runtime themselves
    (MultiWorkerMirrored starts collective ops) are built after this and before :func:`describe_devices`.
    """
    plan = plan_devices(topo)
    env_changes = set_process_environment(topo)
    from orchestrator.tf_env import import_tensorflow

    tf = import_tensorflow()
    for note in plan.notes:
        log.warning("topology: %s", note)
    try:
        for gpu in tf.config.list_physical_devices("GPU"):
            if topo.virtual_gpus > 1 or topo.gpu_memory_limit_mb is not None:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=topo.gpu_memory_limit_mb)] * topo.virtual_gpus)
            elif topo.gpu_memory_growth:
                tf.config.experimental.set_memory_growth(gpu, True)
        cpus = tf.config.list_physical_devices("CPU")
        if topo.cpu_devices > 1:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(topo.cpu_devices)])
        if topo.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(topo.inter_op_threads)
        if topo.intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(topo.intra_op_threads)
    except RuntimeError as exc:
        raise RuntimeError(
            "The device topology must be applied before TensorFlow initialises; something in this process "
            f"already used TensorFlow ({exc}). Run each task in a fresh process.") from exc
    return tf, plan, env_changes


def describe_devices(tf: Any, topo: Any, plan: DevicePlan, env_changes: Dict[str, str]) -> Dict[str, Any]:
    """What was applied, as TensorFlow reports it (initialises the runtime): for the run record."""
    tf.config.set_soft_device_placement(bool(topo.soft_device_placement))
    applied = {
        "name": topo.name,
        "plan": asdict(plan),
        "env": env_changes,
        "physical_gpus": len(tf.config.list_physical_devices("GPU")),
        "logical_devices": [d.name for d in tf.config.list_logical_devices()],
        "soft_device_placement": bool(topo.soft_device_placement),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }
    log.info("topology %s applied: %s", topo.name, ", ".join(applied["logical_devices"]))
    return applied


def apply_topology(topo: Any) -> Dict[str, Any]:
    """Configure this process's devices (before TensorFlow initialises) and report what was applied."""
    tf, plan, env_changes = configure_devices(topo)
    return describe_devices(tf, topo, plan, env_changes)
