"""Hydra launchers that run each sweep job (a study trial) in a fresh process.

Like Hydra's own launchers (joblib, submitit, ray), these run the task function Hydra hands them through
``hydra.core.utils.run_job``, on the job's config composed once here (``load_sweep_config``); so they run
any Hydra app, tfscale's (``orchestrator.app.cli.hydra_task``) among them. Unlike joblib's pool, every job
gets a process of its own, because a trial's device topology is applied before TensorFlow initialises:

* :class:`ProcessesLauncher` runs the jobs of a batch on this machine, up to ``max_parallel`` at a time, each
  as ``python -m orchestrator.launch.job_process`` (see there). With GPUs, parallel jobs get disjoint GPUs
  through ``CUDA_VISIBLE_DEVICES``.
* :class:`RayLauncher` runs each job in a fresh Ray worker process (``max_calls=1``) that reserves
  ``cpus_per_trial``/``gpus_per_trial``. A job whose own config is ``backend=ray`` joins the same Ray
  cluster (its ``backend.ray_address`` is set to it) and reserves no CPU itself: its actors do. On a
  cluster tfscale did not start, the project's code travels as a Ray ``runtime_env`` (as for
  ``backend=ray``); when its nodes do not share this machine's files, each job runs in a scratch directory
  on its node and its files come back with its result into the job's directory here (the study uploads
  them with the rest when ``hydra.sweep.dir`` is a bucket), and its models must go to a storage URI.

Job directories are ``hydra.sweep.dir/hydra.sweep.subdir`` with ``hydra.job.num`` = the job index the
caller passes (for a study, the trial id). Each job talks to the driver through its
:class:`~orchestrator.launch.trial_channel.TrialChannel`: its output goes to the channel's log, and a stop
request on the channel stops the job (early stopping), which then returns FAILED with
:class:`TrialStoppedError`. Jobs never outlive the driver (see :mod:`orchestrator.runtime.supervisor`).
"""
from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from orchestrator.errors import ConfigError, TaskFailedError
from orchestrator.launch import job_process
from orchestrator.launch.trial_channel import TrialChannel

log = logging.getLogger("tfscale.study")


class TrialStoppedError(TaskFailedError):
    """The job was terminated because its channel received a stop request."""


def compose_job(hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str], num: int) -> DictConfig:
    """Job ``num``'s config, composed as Hydra's launchers compose it (``hydra.job.id``/``num`` set)."""
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = str(num)
        sweep_config.hydra.job.num = num
    return sweep_config


@dataclass
class Job:
    """One sweep job: its overrides, its composed config and its channel (directory)."""

    num: int
    overrides: List[str]
    config: DictConfig
    channel: TrialChannel

    def failed(self, error: BaseException) -> JobReturn:
        """The JobReturn of a job that ended without returning one (stopped, killed, crashed)."""
        ret = JobReturn(overrides=list(self.overrides), task_name=str(self.config.hydra.job.name),
                        working_dir=str(self.channel.dir) if self.config.hydra.job.chdir else os.getcwd())
        task_cfg = copy.deepcopy(self.config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        ret.cfg = task_cfg
        ret.hydra_cfg = OmegaConf.create({"hydra": copy.deepcopy(self.config.hydra)})
        ret.status, ret.return_value = JobStatus.FAILED, error
        return ret

    def stopped(self) -> JobReturn:
        return self.failed(TrialStoppedError(f"job {self.num} was stopped early (log: {self.channel.log_path})"))


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


# -------------------------------------------------------------------------------------------- GPUs
def visible_gpu_ids(env: Optional[Dict[str, str]] = None) -> List[str]:
    """GPU ids this driver may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU detected."""
    from orchestrator.config.devices import detect_gpus

    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        return [p.strip() for p in raw.split(",") if p.strip() and p.strip() != "-1"]
    return [str(i) for i in range(detect_gpus())]


def gpu_slots(parallel: int, gpus: Sequence[str], gpus_per_trial: Optional[int]) -> List[Optional[List[str]]]:
    """Disjoint GPU sets for up to ``parallel`` concurrent jobs; one entry per slot.

    ``None`` means "leave CUDA_VISIBLE_DEVICES alone" (no GPU on this machine). With GPUs, each slot gets
    ``gpus_per_trial`` of them (default: an even share, at least one); when they do not go round, fewer
    jobs run at once rather than two jobs sharing a GPU. ``gpus_per_trial=0`` hides the GPUs from jobs.
    """
    if gpus_per_trial is not None and gpus_per_trial < 0:
        raise ConfigError("hydra.launcher.gpus_per_trial", gpus_per_trial, "Use null (an even share), 0 or more.")
    if not gpus:
        if gpus_per_trial:
            raise ConfigError("hydra.launcher.gpus_per_trial", gpus_per_trial,
                              "This machine has no GPU visible to tfscale. Use null or 0, or run on a GPU machine.")
        return [None] * parallel
    if gpus_per_trial == 0:
        return [[] for _ in range(parallel)]
    per = gpus_per_trial or max(1, len(gpus) // parallel)
    if per > len(gpus):
        raise ConfigError("hydra.launcher.gpus_per_trial", gpus_per_trial,
                          f"This machine has {len(gpus)} GPU(s) ({','.join(gpus)}). Ask for at most {len(gpus)}.")
    count = min(parallel, len(gpus) // per)
    if count < parallel:
        log.warning("%d GPU(s), %d per trial: running %d trial(s) at a time instead of %d", len(gpus), per, count,
                    parallel)
    return [list(gpus[i * per:(i + 1) * per]) for i in range(count)]


# ------------------------------------------------------------------------------------------ common
class _BaseLauncher(Launcher):
    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def _jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[Job]:
        """Compose every job of the batch (once each) and create its directory."""
        from hydra.core.utils import configure_log, filter_overrides

        if self.config is None or self.hydra_context is None or self.task_function is None:
            raise RuntimeError("launch() called before setup()")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Launching %d job(s) with %s, sweep output dir: %s", len(job_overrides), type(self).__name__,
                 sweep_dir)
        jobs = []
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            config = compose_job(self.hydra_context, self.config, overrides, num)
            channel = TrialChannel.of_job(config)
            channel.dir.mkdir(parents=True, exist_ok=True)
            jobs.append(Job(num=num, overrides=list(overrides), config=config, channel=channel))
        return jobs

    def _payload(self, job: Job, singleton_state: Any) -> Dict[str, Any]:
        return job_process.payload(task_function=self.task_function, config=job.config,
                                   hydra_context=self.hydra_context, singleton_state=singleton_state)


# --------------------------------------------------------------------------------------- processes
class ProcessesLauncher(_BaseLauncher):
    """Each job a fresh process on this machine; up to ``max_parallel`` at once."""

    def __init__(self, max_parallel: Optional[int] = None, gpus_per_trial: Optional[int] = None,
                 stop_timeout_s: float = 10.0, stream_logs: bool = False) -> None:
        super().__init__()
        if max_parallel is not None and max_parallel < 1:
            raise ConfigError("hydra.launcher.max_parallel", max_parallel, "Use null (the whole batch) or >= 1.")
        self.max_parallel = max_parallel
        self.gpus_per_trial = gpus_per_trial
        self.stop_timeout_s = float(stop_timeout_s)
        self.stream_logs = bool(stream_logs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton

        jobs = self._jobs(job_overrides, initial_job_idx)
        if not jobs:
            return []
        parallel = min(len(jobs), self.max_parallel or len(jobs))
        slots = gpu_slots(parallel, visible_gpu_ids(), self.gpus_per_trial)
        free = list(range(len(slots)))
        pending = list(jobs)
        singletons = Singleton.get_state()
        running: Dict[int, list] = {}  # job num -> [job, slot, child, job file, stopped]
        results: Dict[int, JobReturn] = {}
        try:
            while pending or running:
                while pending and free:
                    job, slot = pending.pop(0), free.pop(0)
                    env = dict(os.environ, **job.channel.env())
                    if slots[slot] is not None:
                        env["CUDA_VISIBLE_DEVICES"] = ",".join(slots[slot])
                    job_file = job_process.write_job(job.channel.dir, self._payload(job, singletons))
                    log.info("job %d: started%s -> %s", job.num,
                             f" on GPU(s) {env['CUDA_VISIBLE_DEVICES']}" if slots[slot] else "", job.channel.dir)
                    running[job.num] = [job, slot, self._start(job, job_file, env), job_file, False]
                time.sleep(0.1)
                for num, entry in list(running.items()):
                    job, slot, child, job_file, stopped = entry
                    if not stopped and child.poll() is None and job.channel.stop_requested:
                        log.info("job %d: stopping (stop requested)", num)
                        child.stop(self.stop_timeout_s)
                        entry[4] = stopped = True
                    if child.poll() is not None:
                        results[num] = self._result(job, job_file, child.returncode, stopped)
                        del running[num]
                        free.append(slot)
        finally:
            for job, _, child, _, _ in running.values():
                child.stop(self.stop_timeout_s)
        return [results[job.num] for job in jobs]

    def _start(self, job: Job, job_file: Path, env: Dict[str, str]) -> Any:
        """Start ``job``'s process in its own process group, tied to this one, output into its log."""
        from orchestrator.runtime import supervisor

        argv = job_process.command(job_file, warm=job_process.wants_warm_start(self.task_function))
        logf = open(job.channel.log_path, "wb")
        try:
            # SIGTERM when the driver dies lets the job stop its own children and record how its run ended.
            child = supervisor.start(argv, env=env, cwd=os.getcwd(), stdout=supervisor.PIPE if self.stream_logs else logf,
                                     stderr=supervisor.STDOUT, death_signal=signal.SIGTERM,
                                     exit_grace=self.stop_timeout_s)
        except BaseException:
            logf.close()
            raise
        if self.stream_logs:
            threading.Thread(target=_pump, args=(child.stdout, logf, f"[trial {job.num}] "), daemon=True).start()
        else:
            logf.close()
        return child

    @staticmethod
    def _result(job: Job, job_file: Path, returncode: int, stopped: bool) -> JobReturn:
        ret = job_process.read_return(job_file)
        if stopped:
            return job.stopped()
        if ret is None:
            return job.failed(TaskFailedError(f"job {job.num} exited with code {returncode} before returning a "
                                              f"result. Log {job.channel.log_path}:\n{_tail(job.channel.log_path)}"))
        return ret


def _pump(stream: Any, logf: Any, prefix: str) -> None:
    with logf:
        for line in stream:
            logf.write(line)
            sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


# ------------------------------------------------------------------------------------------- Ray
class RayLauncher(_BaseLauncher):
    """Each job in a fresh Ray worker process (``max_calls=1``) with its reserved CPUs/GPUs.

    The driver connects to ``address`` (or ``RAY_ADDRESS``; else it starts a local Ray of ``num_cpus``) in
    ``setup`` and keeps it for the rest of the sweep. Jobs on nodes that do not share this machine's files
    bring their directory back with their result (see the module doc); their per-epoch metrics are then
    read when they end, so early stopping sees a trial only once it finished.
    """

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None, cpus_per_trial: float = 1.0,
                 gpus_per_trial: float = 0.0, stop_timeout_s: float = 10.0) -> None:
        super().__init__()
        for key, value in (("cpus_per_trial", cpus_per_trial), ("gpus_per_trial", gpus_per_trial)):
            if value is None or value < 0:
                raise ConfigError(f"hydra.launcher.{key}", value, "Use a number >= 0 (fractions are allowed).")
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_trial = float(cpus_per_trial)
        self.gpus_per_trial = float(gpus_per_trial)
        self.stop_timeout_s = float(stop_timeout_s)
        self._remote: Any = None
        self._elsewhere = False  # the nodes do not share this machine's files

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        # Ray's GCS and raylet die with the thread that started them (PR_SET_PDEATHSIG), and the sweeper
        # calls launch() from a worker thread per batch: connect here, on the caller's thread.
        self._ray()

    def _ray(self) -> Any:
        from orchestrator.launch import ray_session

        attached = ray_session.attaches(self.address)
        runtime_env = ray_session.project_runtime_env(hydra_plugins=True) if attached else None
        ray = ray_session.connect(self.address, self.num_cpus, runtime_env=runtime_env, key="hydra.launcher.address")
        if self._remote is None:
            self._elsewhere = attached and not ray_session.shares_this_filesystem(self.address)
            log.info("Ray cluster at %s%s", ray.get_runtime_context().gcs_address,
                     f" ({len(ray_session.alive_nodes())} nodes; jobs bring their files back)" if self._elsewhere else "")
            if self._elsewhere:
                base = str(OmegaConf.select(self.config, "export.model_base") or "")
                enabled = bool(OmegaConf.select(self.config, "export.enabled", default=False))
                from orchestrator.artifacts import storage

                if enabled and base and not storage.is_remote(base):
                    raise ConfigError("export.model_base", base, "The Ray cluster's nodes do not share this machine's "
                                      "files, so each trial's model would stay on its node: give a storage URI, e.g. "
                                      "export.model_base=gs://BUCKET/models.")
            self._remote = ray.remote(max_calls=1)(job_process.execute_elsewhere if self._elsewhere else job_process.execute)
        return ray

    def _join_cluster(self, job: Job, gcs_address: str) -> float:
        """A job running ``backend=ray`` joins this cluster instead of starting a Ray inside a worker.

        Returns the CPUs the job's worker reserves: none for such a job, whose actors reserve their own.
        """
        if str(OmegaConf.select(job.config, "backend.name")) != "ray":
            return self.cpus_per_trial
        if OmegaConf.select(job.config, "backend.ray_address") is None:
            with read_write(job.config):
                OmegaConf.update(job.config, "backend.ray_address", gcs_address)
        return 0.0

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton

        jobs = self._jobs(job_overrides, initial_job_idx)
        if not jobs:
            return []
        ray = self._ray()
        gcs = ray.get_runtime_context().gcs_address
        singletons = Singleton.get_state()
        refs: Dict[int, Any] = {}
        for job in jobs:
            cpus = self._join_cluster(job, gcs)
            refs[job.num] = self._start(job, singletons, cpus)
            log.info("job %d: submitted to Ray (%g CPU, %g GPU) -> %s", job.num, cpus, self.gpus_per_trial,
                     job.channel.dir)
        results: Dict[int, JobReturn] = {}
        stopped: set = set()
        pending = dict(refs)
        try:
            while pending:
                ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0.1)
                for job in jobs:
                    ref = pending.get(job.num)
                    if ref is None:
                        continue
                    if ref in ready:
                        results[job.num] = self._result(ray, job, ref, job.num in stopped)
                        del pending[job.num]
                    elif job.num not in stopped and job.channel.stop_requested:
                        log.info("job %d: stopping (stop requested)", job.num)
                        ray.cancel(ref, force=True)  # ends the job's worker process, and its children with it
                        stopped.add(job.num)
        finally:
            for ref in pending.values():
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or Ray shutting down: nothing left to cancel
                    pass
        return [results[job.num] for job in jobs]

    def _start(self, job: Job, singletons: Any, cpus: float) -> Any:
        """Submit ``job`` to a fresh worker reserving ``cpus`` and this launcher's GPUs; its output to its log.

        Ray sets CUDA_VISIBLE_DEVICES in the worker for the GPUs it reserved.
        """
        job.channel.log_path.unlink(missing_ok=True)
        log_to = job.channel.log_path.name if self._elsewhere else str(job.channel.log_path)
        return self._remote.options(num_cpus=cpus, num_gpus=self.gpus_per_trial).remote(
            self._payload(job, singletons), log_to, job.channel.env())

    def _result(self, ray: Any, job: Job, ref: Any, stopped: bool) -> JobReturn:
        try:
            ret = ray.get(ref)
            if self._elsewhere:  # (JobReturn, the files the job wrote on its node)
                ret, files = ret
                job_process.place_files(job.channel.dir, files)
        except ray.exceptions.RayError as exc:
            if stopped:
                return job.stopped()
            return job.failed(TaskFailedError(f"job {job.num}: the Ray task failed: {exc}. Log "
                                              f"{job.channel.log_path}:\n{_tail(job.channel.log_path)}"))
        return job.stopped() if stopped else ret
