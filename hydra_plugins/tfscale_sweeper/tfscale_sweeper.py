"""Plugin classes and their configs, delegating to :mod:`orchestrator.launch`.

Hydra imports every module under ``hydra_plugins`` on each ``tfscale`` call (a single run and ``--help``
included), so this module imports only Hydra: the implementation (and numpy, scikit-learn, Ray behind it)
is loaded when the plugin is instantiated for a ``-m`` study. The classes are defined here only, and
nothing else in ``hydra_plugins`` imports them: Hydra's scan lists every plugin class it finds as a member
of a module it imports (and re-runs modules already imported), so a re-export would list each one twice.

No ``from __future__ import annotations`` here: Hydra's scan executes this module before it is in
``sys.modules``, where ``@dataclass`` cannot resolve string annotations.
"""
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

_PREFIX = "hydra_plugins.tfscale_sweeper.tfscale_sweeper"


@dataclass
class StudySweeperConf:
    """``hydra/sweeper=tfscale``: runs the study declared under the root ``study:`` key."""

    _target_: str = f"{_PREFIX}.StudySweeper"
    store: Optional[str] = None  # study store: null = <hydra.sweep.dir>/study.db; a .db path or sqlite:/// URL
    poll_interval_s: float = 1.0  # how often running trials' per-epoch metrics are read
    lease_ttl_s: float = 120.0  # bucket study: its lease, renewed every ttl/4, is taken over after this long unrenewed
    plots: bool = True  # PNG plots in the results (matplotlib)


@dataclass
class ProcessesLauncherConf:
    """``hydra/launcher=tfscale_processes``: each job a process of its own on this machine, running the task function."""

    _target_: str = f"{_PREFIX}.ProcessesLauncher"
    max_parallel: Optional[int] = None  # jobs running at once; null = the whole batch (a study: max_parallel_trials)
    gpus_per_trial: Optional[int] = None  # null = this machine's GPUs split evenly between parallel jobs
    trials_per_gpu: int = 1  # > 1: that many jobs share each GPU, each in its topology.gpu_memory_limit_mb slice
    stop_timeout_s: float = 10.0  # SIGTERM -> SIGKILL grace when a job is stopped
    stream_logs: bool = False  # echo each job's output prefixed with "[trial N] "
    warm: bool = True  # each slot a warm process (TensorFlow imported) forking a child per job; false = fresh processes


@dataclass
class RayLauncherConf:
    """``hydra/launcher=tfscale_ray``: each job a fresh Ray worker process holding the job's resources."""

    _target_: str = f"{_PREFIX}.RayLauncher"
    address: Optional[str] = None  # null = start a local Ray; "auto", "host:port", "ray://host:port"
    num_cpus: Optional[int] = None  # local Ray only: CPUs it offers (null = this machine's cores)
    cpus_per_trial: float = 1.0  # jobs whose own backend is ray reserve none: their actors do
    gpus_per_trial: float = 0.0
    stop_timeout_s: float = 10.0


ConfigStore.instance().store(group="hydra/sweeper", name="tfscale", node=StudySweeperConf, provider="tfscale")
ConfigStore.instance().store(group="hydra/launcher", name="tfscale_processes", node=ProcessesLauncherConf,
                             provider="tfscale")
ConfigStore.instance().store(group="hydra/launcher", name="tfscale_ray", node=RayLauncherConf,
                             provider="tfscale")


class StudySweeper(Sweeper):
    """Hydra entry point of :class:`orchestrator.launch.sweeper.StudySweeper`."""

    def __init__(self, **settings: Any) -> None:
        from orchestrator.launch import sweeper

        self._impl = sweeper.StudySweeper(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self._impl.sweep(arguments)


class ProcessesLauncher(Launcher):
    """Hydra entry point of :class:`orchestrator.launch.hydra_launchers.ProcessesLauncher`."""

    def __init__(self, **settings: Any) -> None:
        from orchestrator.launch import hydra_launchers

        self._impl = hydra_launchers.ProcessesLauncher(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self._impl.launch(job_overrides, initial_job_idx)

    def incremental(self) -> Any:
        """The launcher's job-at-a-time API (``open``/``start``/``poll``/``stop``) that tfscale's sweeper uses."""
        return self._impl


class RayLauncher(Launcher):
    """Hydra entry point of :class:`orchestrator.launch.hydra_launchers.RayLauncher`."""

    def __init__(self, **settings: Any) -> None:
        from orchestrator.launch import hydra_launchers

        self._impl = hydra_launchers.RayLauncher(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self._impl.launch(job_overrides, initial_job_idx)

    def incremental(self) -> Any:
        """The launcher's job-at-a-time API (``open``/``start``/``poll``/``stop``) that tfscale's sweeper uses."""
        return self._impl
