"""Hydra launchers that run each sweep job (a study trial) in a process of its own.

Like Hydra's own launchers (joblib, submitit, ray), these run the task function Hydra hands them through
``hydra.core.utils.run_job``, on the job's config composed once (by the caller that hands it over, or here
with ``load_sweep_config``); so they run any Hydra app, tfscale's (``orchestrator.app.cli.hydra_task``) among
them. Unlike joblib's pool, every job gets a process of its own, because a trial's device topology is
applied before TensorFlow initialises:

* :class:`ProcessesLauncher` runs jobs on this machine, up to ``max_parallel`` at a time. Each slot keeps a
  warm process that has imported TensorFlow and forks a child per job (see
  :mod:`orchestrator.launch.trial_pool`); with ``warm=false``, each job is a fresh
  ``python -m orchestrator.launch.job_process`` (see there). With GPUs, parallel jobs get disjoint GPUs
  through ``CUDA_VISIBLE_DEVICES``.
* :class:`RayLauncher` runs each job in a fresh Ray worker process (``max_calls=1``) that reserves
  ``cpus_per_trial``/``gpus_per_trial``. A job whose own config is ``backend=ray`` joins the same Ray
  cluster (its ``backend.ray_address`` is set to it) and reserves no CPU itself: its actors do. On a
  cluster tfscale did not start, the project's code travels as a Ray ``runtime_env`` (as for
  ``backend=ray``); when its nodes do not share this machine's files, each job runs in a scratch directory
  on its node and its files come back with its result into the job's directory here (the study uploads
  them with the rest when ``hydra.sweep.dir`` is a bucket), and its models must go to a storage URI.

Besides Hydra's ``launch`` (a batch, all of it returned at once), both offer the incremental API a study's
sweeper uses to keep every slot busy (see :class:`_BaseLauncher`): ``open``, ``start`` one job, ``poll`` for
the jobs that ended, ``stop`` one. Job directories are ``hydra.sweep.dir/hydra.sweep.subdir`` with
``hydra.job.num`` = the job number the caller gives (for a study, the trial id; any numbers, in any
order). Each job talks to the driver through its :class:`~orchestrator.launch.trial_channel.TrialChannel`:
its output goes to the channel's log, and a stop request on the channel (or ``stop``) stops the job, which
then returns FAILED with :class:`TrialStoppedError`. Jobs never outlive the driver (see
:mod:`orchestrator.runtime.supervisor`).
"""
from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from orchestrator.config.devices import check_gpu_share
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


class JobComposer:
    """Job configs of a sweep whose jobs share a prefix of overrides (a study: the command line's).

    Hydra composes every job from scratch: the defaults list, every config file, the schema merge, then the
    overrides — a few tenths of a second a job. The overrides that follow the shared prefix (a trial's
    ``key=value`` pairs) choose no config group, so the composition up to them is the same for every job:
    it is done once here (for the prefix), and a job's config is a copy of it with the job's own overrides
    applied the way Hydra applies them (``hydra.overrides.task``, ``hydra.job.override_dirname`` and the job
    number included). A job whose own overrides choose a group, or touch ``hydra``, is composed by Hydra.
    """

    def __init__(self, hydra_context: HydraContext, config: DictConfig, prefix: Sequence[str]) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.prefix = list(prefix)
        self._base: Optional[DictConfig] = None

    def compose(self, overrides: Sequence[str], num: int) -> DictConfig:
        """Job ``num``'s config, as :func:`compose_job` composes it."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
        from hydra.core.override_parser.overrides_parser import OverridesParser

        own = list(overrides[len(self.prefix):]) if list(overrides[:len(self.prefix)]) == self.prefix else None
        loader = self.hydra_context.config_loader
        repository = getattr(loader, "repository", None)
        if own is None or repository is None:
            return compose_job(self.hydra_context, self.config, overrides, num)
        parser = OverridesParser.create(config_loader=loader)
        parsed = parser.parse_overrides(own)
        if any(o.is_hydra_override() or o.package is not None or o.is_sweep_override()
               or repository.group_exists(o.key_or_group) for o in parsed):
            return compose_job(self.hydra_context, self.config, overrides, num)
        if self._base is None:
            self._base = compose_job(self.hydra_context, self.config, self.prefix, num)
        cfg = copy.deepcopy(self._base)
        with read_write(cfg):
            ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
            with open_dict(cfg.hydra):
                cfg.hydra.overrides.task.extend(own)
                task = [o for o in parser.parse_overrides(list(cfg.hydra.overrides.task)) if not o.is_hydra_override()]
                dirname = cfg.hydra.job.config.override_dirname
                cfg.hydra.job.override_dirname = get_overrides_dirname(
                    overrides=task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
                cfg.hydra.job.id = str(num)
                cfg.hydra.job.num = num
        OmegaConf.copy_cache(from_config=self.config, to_config=cfg)
        return cfg


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


def gpu_slots(parallel: int, gpus: Sequence[str], gpus_per_trial: Optional[int],
              trials_per_gpu: int = 1) -> List[Optional[List[str]]]:
    """Disjoint GPU sets for up to ``parallel`` concurrent jobs; one entry per slot.

    ``None`` means "leave CUDA_VISIBLE_DEVICES alone" (no GPU on this machine). With GPUs, each slot gets
    ``gpus_per_trial`` of them (default: an even share, at least one); when they do not go round, fewer
    jobs run at once rather than two jobs sharing a GPU. ``gpus_per_trial=0`` hides the GPUs from jobs.
    ``trials_per_gpu`` > 1 gives every GPU to that many slots (one GPU each, round robin over the GPUs);
    each trial then keeps to its own memory slice, ``topology.gpu_memory_limit_mb`` (see
    :func:`check_gpu_share`).
    """
    if gpus_per_trial is not None and gpus_per_trial < 0:
        raise ConfigError("hydra.launcher.gpus_per_trial", gpus_per_trial, "Use null (an even share), 0 or more.")
    if trials_per_gpu > 1:
        if not gpus:
            raise ConfigError("hydra.launcher.trials_per_gpu", trials_per_gpu,
                              "This machine has no GPU visible to tfscale, so no GPU can be shared. Use 1, or run on a GPU machine.")
        if gpus_per_trial not in (None, 1):
            raise ConfigError("hydra.launcher.gpus_per_trial", gpus_per_trial,
                              f"trials_per_gpu={trials_per_gpu} puts several trials on one GPU each; use gpus_per_trial=1 or null.")
        shared: List[Optional[List[str]]] = [[gpus[i % len(gpus)]] for i in range(len(gpus) * trials_per_gpu)]
        if len(shared) < parallel:
            log.warning("%d GPU(s), %d trials per GPU: running %d trial(s) at a time instead of %d", len(gpus),
                        trials_per_gpu, len(shared), parallel)
        return shared[:parallel]
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
    """Hydra's ``launch`` on top of an incremental API a study's sweeper uses directly.

    The protocol: :meth:`open` once with the number of trials wanted at a time (it returns how many slots it
    has, and may warm them up); then :meth:`start` a job (:meth:`job`) whenever fewer than that many run;
    :meth:`poll` returns the jobs that ended (stopped ones included) as soon as one does; :meth:`stop` stops one
    job, or with no argument every job and the slots. A slot is free again once :meth:`poll` returned its job.
    """

    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    # -- the incremental API ----------------------------------------------------------------------------
    def job(self, overrides: Sequence[str], num: int, config: Optional[DictConfig] = None) -> Job:
        """Job ``num`` with its config (composed by the caller, e.g. a sweeper that validated it, or here) and
        its directory created."""
        if self.config is None or self.hydra_context is None or self.task_function is None:
            raise RuntimeError("job() called before setup()")
        if config is None:
            config = compose_job(self.hydra_context, self.config, overrides, num)
        channel = TrialChannel.of_job(config)
        channel.dir.mkdir(parents=True, exist_ok=True)
        return Job(num=num, overrides=list(overrides), config=config, channel=channel)

    def open(self, parallel: int) -> int:
        """Get ready to run up to ``parallel`` jobs at a time; the number of slots (at most ``parallel``)."""
        from hydra.core.utils import configure_log

        if self.config is None:
            raise RuntimeError("open() called before setup()")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        return self._open(max(1, int(parallel)))

    @abstractmethod
    def _open(self, parallel: int) -> int:
        ...

    @abstractmethod
    def start(self, job: Job) -> None:
        """Start ``job`` now, on a free slot."""

    @abstractmethod
    def poll(self, timeout: float) -> List[Tuple[Job, JobReturn]]:
        """The jobs that ended, each with its JobReturn; waits up to ``timeout`` s for the first one.

        A job whose channel asks to stop (:meth:`TrialChannel.request_stop`) is stopped here.
        """

    @abstractmethod
    def stop(self, num: Optional[int] = None) -> None:
        """Stop job ``num`` (its JobReturn, FAILED with :class:`TrialStoppedError`, comes from :meth:`poll`);
        with no ``num``, stop every job and release the slots."""

    # -- Hydra's contract -------------------------------------------------------------------------------
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run a batch of jobs, numbered from ``initial_job_idx``, up to the slots at a time; their JobReturns."""
        jobs = self._jobs(job_overrides, initial_job_idx)
        if not jobs:
            return []
        slots = self.open(len(jobs))
        pending = list(jobs)
        results: Dict[int, JobReturn] = {}
        running = 0
        try:
            while pending or running:
                while pending and running < slots:
                    self.start(pending.pop(0))
                    running += 1
                for job, ret in self.poll(0.1):
                    results[job.num] = ret
                    running -= 1
        finally:
            self.stop()
        return [results[job.num] for job in jobs]

    def _jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[Job]:
        """Compose every job of the batch (once each) and create its directory."""
        from hydra.core.utils import filter_overrides

        if self.config is None:
            raise RuntimeError("launch() called before setup()")
        log.info("Launching %d job(s) with %s, sweep output dir: %s", len(job_overrides), type(self).__name__,
                 self.config.hydra.sweep.dir)
        jobs = []
        for i, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))
            jobs.append(self.job(overrides, initial_job_idx + i))
        return jobs

    def _payload(self, job: Job, data: Optional[Tuple[str, Any]] = None) -> Dict[str, Any]:
        from hydra.core.singleton import Singleton

        return job_process.payload(task_function=self.task_function, config=job.config,
                                   hydra_context=self.hydra_context, singleton_state=Singleton.get_state(), data=data)


# --------------------------------------------------------------------------------------- processes
def warm_pool_grace(config: DictConfig) -> Optional[float]:
    """The trials' stop grace if the launcher ``config`` selects runs them from warm trial processes (tfscale's
    processes launcher with ``warm``, where ``os.fork`` exists); None for any other launcher."""
    launcher = OmegaConf.select(config, "hydra.launcher")
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if launcher is None or not target.startswith("hydra_plugins.tfscale_sweeper.") \
            or not target.endswith(".ProcessesLauncher") or not hasattr(os, "fork") \
            or not bool(launcher.get("warm", True)):
        return None
    return float(launcher.get("stop_timeout_s", 10.0))


def prepare(config: DictConfig, task_function: TaskFunction) -> None:
    """Let the launcher ``config`` selects get ready before it is instantiated.

    A sweeper calls this first thing: with tfscale's processes launcher (``warm``), the warm trial process is
    started now (unless ``tfscale -m`` started it already), with this process's environment, and its imports
    overlap the sweeper's own preparation; the launcher's pool adopts it (see
    :func:`orchestrator.launch.trial_pool.prestart`). Any other launcher: a warm process started already goes.
    """
    from orchestrator.launch.trial_pool import discard_prestarted, prestart

    grace = warm_pool_grace(config)
    if grace is None:
        discard_prestarted()
        return
    from orchestrator.launch import warm_task

    tensorflow = job_process.wants_warm_start(task_function) and warm_task.enabled()
    prestart(dict(os.environ), tensorflow=tensorflow, grace=grace)


@dataclass
class _Running:
    job: Job
    slot: int
    job_file: Path
    child: Any = None  # a fresh job process (supervisor.Child); None on a warm slot
    kill_at: Optional[float] = None  # stopping: SIGKILL at this monotonic time
    follower: Optional[threading.Event] = None  # set to end the echo of its log (stream_logs)

    @property
    def stopping(self) -> bool:
        return self.kill_at is not None


class ProcessesLauncher(_BaseLauncher):
    """Jobs on this machine, up to ``max_parallel`` at once, each in a process of its own.

    With ``warm`` (the default, where ``os.fork`` exists) each slot keeps a warm process that forks a child per
    job (:mod:`orchestrator.launch.trial_pool`); otherwise each job is a fresh
    ``python -m orchestrator.launch.job_process``.
    """

    def __init__(self, max_parallel: Optional[int] = None, gpus_per_trial: Optional[int] = None,
                 stop_timeout_s: float = 10.0, stream_logs: bool = False, warm: bool = True,
                 trials_per_gpu: int = 1) -> None:
        super().__init__()
        if max_parallel is not None and max_parallel < 1:
            raise ConfigError("hydra.launcher.max_parallel", max_parallel, "Use null (the whole batch) or >= 1.")
        check_gpu_share(trials_per_gpu, 0)
        self.max_parallel = max_parallel
        self.gpus_per_trial = gpus_per_trial
        self.trials_per_gpu = int(trials_per_gpu)
        self.stop_timeout_s = float(stop_timeout_s)
        self.stream_logs = bool(stream_logs)
        self.warm = bool(warm) and hasattr(os, "fork")
        self._gpus: List[Optional[List[str]]] = []
        self._free: List[int] = []
        self._running: Dict[int, _Running] = {}
        self._pool: Any = None

    def _open(self, parallel: int) -> int:
        self.stop()
        count = min(parallel, self.max_parallel or parallel)
        # Before any trial starts (the sweeper's validation checks each trial's config too).
        check_gpu_share(self.trials_per_gpu, OmegaConf.select(self.config, "topology.gpu_memory_limit_mb"))
        self._gpus = gpu_slots(count, visible_gpu_ids(), self.gpus_per_trial, self.trials_per_gpu)
        self._free = list(range(len(self._gpus)))
        if self.warm:
            from orchestrator.launch import warm_task
            from orchestrator.launch.trial_pool import TrialPool

            tensorflow = job_process.wants_warm_start(self.task_function) and warm_task.enabled()
            self._pool = TrialPool([self._env(slot) for slot in self._free], tensorflow=tensorflow,
                                   grace=self.stop_timeout_s)
        if job_process.wants_warm_start(self.task_function):
            from orchestrator.launch import warm_task

            # The sweep's data, loaded now (while the warm processes import TensorFlow) rather than between
            # the starts of the first trials; start() hands it to every trial whose data it is.
            warm_task.study_data(self.config)
        return len(self._gpus)

    def _env(self, slot: int, job: Optional[Job] = None) -> Dict[str, str]:
        env = dict(os.environ, **(job.channel.env() if job is not None else {}))
        if self._gpus[slot] is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self._gpus[slot])
        return env

    def start(self, job: Job) -> None:
        if not self._free:
            raise RuntimeError(f"job {job.num}: every slot is busy; start a job once poll() returned one")
        check_gpu_share(self.trials_per_gpu, OmegaConf.select(job.config, "topology.gpu_memory_limit_mb"))
        slot = self._free.pop(0)
        env = self._env(slot, job)
        data = None
        if job_process.wants_warm_start(self.task_function):  # tfscale's task: the data, loaded once per study
            from orchestrator.launch import warm_task

            data = warm_task.study_data(job.config)
        job_file = job_process.write_job(job.channel.dir, self._payload(job, data))
        job.channel.log_path.write_bytes(b"")
        running = _Running(job, slot, job_file)
        try:
            if self._pool is not None:
                self._pool.run(slot, job.num, job_file, env, job.channel.log_path, data_given=data is not None)
            else:
                running.child = self._start(job, job_file, env)
        except BaseException:
            self._free.insert(0, slot)
            raise
        self._running[job.num] = running
        log.info("job %d: started%s -> %s", job.num, f" on GPU(s) {env['CUDA_VISIBLE_DEVICES']}"
                 if self._gpus[slot] else "", job.channel.dir)
        if self.stream_logs:
            running.follower = threading.Event()
            threading.Thread(target=_follow, args=(job.channel.log_path, f"[trial {job.num}] ", running.follower),
                             daemon=True).start()

    def _start(self, job: Job, job_file: Path, env: Dict[str, str]) -> Any:
        """Start ``job``'s own process in its own process group, tied to this one, output into its log."""
        from orchestrator.runtime import supervisor

        argv = job_process.command(job_file, warm=job_process.wants_warm_start(self.task_function))
        with open(job.channel.log_path, "ab") as logf:
            # SIGTERM when the driver dies lets the job stop its own children and record how its run ended.
            return supervisor.start(argv, env=env, cwd=os.getcwd(), stdout=logf, stderr=supervisor.STDOUT,
                                    death_signal=signal.SIGTERM, exit_grace=self.stop_timeout_s)

    def poll(self, timeout: float) -> List[Tuple[Job, JobReturn]]:
        for num, running in list(self._running.items()):
            if not running.stopping and running.job.channel.stop_requested:
                log.info("job %d: stopping (stop requested)", num)
                self.stop(num)
        codes: Dict[int, Optional[int]] = {}
        fresh = [r for r in self._running.values() if r.child is not None]
        wait = min(timeout, 0.05) if fresh else timeout  # a warm process reports its trials' ends itself
        if self._pool is not None:
            codes.update(self._pool.wait(wait))
        elif wait > 0:
            time.sleep(wait)
        now = time.monotonic()
        for running in fresh:
            if running.child.poll() is not None:
                codes[running.job.num] = running.child.returncode
            elif running.kill_at is not None and now >= running.kill_at:
                running.child.send(signal.SIGKILL)
        ended = []
        for num, code in codes.items():
            running = self._running.pop(num, None)
            if running is None:
                continue
            if running.follower is not None:
                running.follower.set()
            self._free.append(running.slot)
            ended.append((running.job, self._result(running.job, running.job_file, code, running.stopping)))
        return ended

    def stop(self, num: Optional[int] = None) -> None:
        if num is not None:
            running = self._running.get(num)
            if running is None or running.stopping:
                return
            running.kill_at = time.monotonic() + self.stop_timeout_s
            if running.child is not None:
                running.child.send(signal.SIGTERM)
            else:
                self._pool.stop(num)
            return
        try:
            for running in self._running.values():
                if running.child is not None:
                    running.child.stop(self.stop_timeout_s)
                if running.follower is not None:
                    running.follower.set()
        finally:
            self._running.clear()
            if self._pool is not None:
                pool, self._pool = self._pool, None
                pool.close()

    @staticmethod
    def _result(job: Job, job_file: Path, returncode: Optional[int], stopped: bool) -> JobReturn:
        ret = job_process.read_return(job_file)
        if stopped:
            return job.stopped()
        if ret is None:
            how = ("its warm process died" if returncode is None else
                   f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}")
            return job.failed(TaskFailedError(f"job {job.num} {how} before returning a result. Log "
                                              f"{job.channel.log_path}:\n{_tail(job.channel.log_path)}"))
        return ret


def _follow(path: Path, prefix: str, done: threading.Event) -> None:
    """Echo the lines of a job's log as they are written, each prefixed, until ``done`` is set (stream_logs)."""
    position, partial = 0, b""
    while True:
        finished = done.is_set()
        try:
            with open(path, "rb") as f:
                f.seek(position)
                data = f.read()
        except OSError:
            data = b""
        position += len(data)
        *lines, partial = (partial + data).split(b"\n")
        if finished and partial:
            lines, partial = lines + [partial], b""
        for line in lines:
            sys.stdout.write(prefix + line.decode(errors="replace") + "\n")
        if lines:
            sys.stdout.flush()
        if finished:
            return
        done.wait(0.2)


# ------------------------------------------------------------------------------------------- Ray
class RayLauncher(_BaseLauncher):
    """Each job in a fresh Ray worker process (``max_calls=1``) with its reserved CPUs/GPUs.

    The driver connects to ``address`` (or ``RAY_ADDRESS``; else it starts a local Ray of ``num_cpus``) in
    ``setup`` and keeps it for the rest of the sweep. Jobs on nodes that do not share this machine's files
    bring their directory back with their result (see the module doc); their per-epoch metrics are then
    read when they end, so early stopping sees a trial only once it finished. Ray places the jobs: every
    slot :meth:`open` grants is a job submitted at once, which starts when the cluster has its resources.
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
        self._refs: Dict[int, Tuple[Job, Any]] = {}  # running job number -> (job, its Ray object ref)
        self._stopped: set = set()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        # Ray's GCS and raylet die with the thread that started them (PR_SET_PDEATHSIG): connect here, on the
        # thread that sets the launcher up (the driver's main thread), not on whichever thread launches.
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

    def _open(self, parallel: int) -> int:
        from orchestrator.launch.trial_pool import discard_prestarted

        discard_prestarted()
        self.stop()
        self._ray()
        return parallel

    def start(self, job: Job) -> None:
        """Submit ``job`` to a fresh worker reserving its CPUs and this launcher's GPUs; its output to its log.

        Ray sets CUDA_VISIBLE_DEVICES in the worker for the GPUs it reserved.
        """
        ray = self._ray()
        cpus = self._join_cluster(job, ray.get_runtime_context().gcs_address)
        job.channel.log_path.unlink(missing_ok=True)
        log_to = job.channel.log_path.name if self._elsewhere else str(job.channel.log_path)
        ref = self._remote.options(num_cpus=cpus, num_gpus=self.gpus_per_trial).remote(
            self._payload(job), log_to, job.channel.env())
        self._refs[job.num] = (job, ref)
        log.info("job %d: submitted to Ray (%g CPU, %g GPU) -> %s", job.num, cpus, self.gpus_per_trial,
                 job.channel.dir)

    def poll(self, timeout: float) -> List[Tuple[Job, JobReturn]]:
        ray = self._ray()
        for num, (job, _) in list(self._refs.items()):
            if num not in self._stopped and job.channel.stop_requested:
                log.info("job %d: stopping (stop requested)", num)
                self.stop(num)
        if not self._refs:
            time.sleep(max(0.0, timeout))
            return []
        refs = [ref for _, ref in self._refs.values()]
        ready, _ = ray.wait(refs, num_returns=1, timeout=max(0.0, timeout))
        if ready:  # and whatever else is ready by now
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        ended = []
        for num, (job, ref) in list(self._refs.items()):
            if ref in ready:
                del self._refs[num]
                stopped = num in self._stopped
                self._stopped.discard(num)
                ended.append((job, self._result(ray, job, ref, stopped)))
        return ended

    def stop(self, num: Optional[int] = None) -> None:
        if num is not None:
            entry = self._refs.get(num)
            if entry is not None and num not in self._stopped:
                self._stopped.add(num)
                self._cancel(entry[1])  # ends the job's worker process, and its children with it
            return
        for _, ref in self._refs.values():
            self._cancel(ref)
        self._refs.clear()
        self._stopped.clear()

    @staticmethod
    def _cancel(ref: Any) -> None:
        import ray

        try:
            ray.cancel(ref, force=True)
        except Exception:  # already finished or Ray shutting down: nothing left to cancel
            pass

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
