"""The devices one task will have once its topology is applied: what a strategy may span."""
from __future__ import annotations

import glob
import os
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


def local_tpu_devices() -> List[str]:
    """TPU device files of this machine (a Cloud TPU VM: ``/dev/accel*``, or ``/dev/vfio/<n>`` from v5e on).

    Read without TensorFlow, so validation can tell that ``strategy.tpu=local`` has nothing to connect to.
    ``TFSCALE_FAKE_TPU=1`` pretends there is one (tests of the TPU path on machines without).
    """
    if os.environ.get("TFSCALE_FAKE_TPU", "") not in ("", "0"):
        return ["/dev/accel0"]
    return sorted(glob.glob("/dev/accel[0-9]*") + glob.glob("/dev/vfio/[0-9]*"))
