"""Device topology: planned from the config without TensorFlow, applied before TensorFlow initialises.

Two halves with one boundary: :func:`plan_devices` only reads the machine (``/proc``, ``nvidia-smi``-free)
and the config, so validation can reason about replicas in milliseconds; :func:`apply_topology` runs in the
task process, sets the CUDA environment, then imports TensorFlow and configures its physical devices —
which TensorFlow allows only before its runtime is initialised.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from orchestrator.config.devices import DevicePlan, plan_devices

if TYPE_CHECKING:
    from orchestrator.config.schema import TopologyConfig

log = logging.getLogger(__name__)

def set_process_environment(topo: TopologyConfig, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment variables that must be set before TensorFlow is imported (returned and applied)."""
    env = os.environ if env is None else env
    changes = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "TF_USE_LEGACY_KERAS": "1"}
    if topo.gpus is not None:
        changes["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in topo.gpus) if topo.gpus else "-1"
    env.update(changes)
    return changes


def configure_devices(topo: TopologyConfig) -> Tuple[Any, DevicePlan, Dict[str, str]]:
    """Set the CUDA environment, import TensorFlow and configure its physical devices and thread pools.

    Everything here is accepted by TensorFlow only before its runtime initialises, so nothing in this
    function lists logical devices or runs an op. Strategies that start the runtime themselves
    (MultiWorkerMirrored starts collective ops) are built after this and before :func:`describe_devices`.
    """
    plan = plan_devices(topo)
    env_changes = set_process_environment(topo)
    from orchestrator.runtime.tf_env import import_tensorflow

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


def describe_devices(tf: Any, topo: TopologyConfig, plan: DevicePlan, env_changes: Dict[str, str]) -> Dict[str, Any]:
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


def apply_topology(topo: TopologyConfig) -> Dict[str, Any]:
    """Configure this process's devices (before TensorFlow initialises) and report what was applied."""
    tf, plan, env_changes = configure_devices(topo)
    return describe_devices(tf, topo, plan, env_changes)
