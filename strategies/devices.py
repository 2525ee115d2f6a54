"""The devices one task will have once its topology is applied: what a strategy may span."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List


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
