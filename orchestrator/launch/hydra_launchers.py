"""Hydra launchers that run each sweep job (a study trial) as a fresh ``tfscale`` process.

A trial's device topology is applied before TensorFlow initialises, which only a new process allows, so
both launchers start ``python -m orchestrator.app.cli <overrides> hydra.run.dir=<job dir>`` — exactly the
single run a user would type — and read the job's ``metrics.json`` as its return value.

* :class:`ProcessesLauncher` runs the jobs of a batch on this machine, up to ``max_parallel`` at a time.
  With GPUs, parallel jobs get disjoint GPUs through ``CUDA_VISIBLE_DEVICES``.
* :class:`RayLauncher` runs each job in a fresh Ray worker process (``max_calls=1``) that reserves
  ``cpus_per_trial``/``gpus_per_trial``. A job whose own config is ``backend=ray`` joins the same Ray
  cluster (its ``backend.ray_address`` is set to it) and reserves no CPU itself: its actors do.

Job directories are ``hydra.sweep.dir/hydra.sweep.subdir`` with ``hydra.job.num`` = the job index the
sweeper passes (the study's trial id), so a re-run of an interrupted trial reuses, after clearing, its
directory. A job is stopped early when the file :data:`STOP_FILE` appears in its directory. Jobs never
outlive the driver: each job process dies with its parent (``PR_SET_PDEATHSIG``) and is killed with its
process group when ``launch`` exits by an exception or the interpreter exits.
"""
from __future__ import annotations

import atexit
import copy
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from orchestrator.errors import ConfigError, TaskFailedError

log = logging.getLogger("tfscale.study")

#: Created in a job's directory to ask the launcher to stop that job (early stopping).
STOP_FILE = ".tfscale_stop"
#: Where a job's ``report_metric`` lines go, relative to its directory.
REPORTED_METRICS = "reported_metrics.jsonl"
#: A job's combined stdout/stderr, relative to its directory.
JOB_LOG = "trial.log"


class TrialStoppedError(TaskFailedError):
    """The job was terminated because its directory received a stop request."""


@dataclass
class Job:
    """One sweep job: its overrides, composed config and directory."""

    num: int
    overrides: List[str]
    config: DictConfig  # the job's config as Hydra composes it for a sweep (hydra node included)
    dir: Path

    @property
    def log_path(self) -> Path:
        return self.dir / JOB_LOG

    @property
    def stop_requested(self) -> bool:
        return (self.dir / STOP_FILE).exists()

    def command(self) -> List[str]:
        """The ``tfscale`` single run of this job, in its own directory."""
        cmd = [sys.executable, "-m", "orchestrator.app.cli"]
        cmd += _config_flags(self.config)
        return cmd + list(self.overrides) + [f"hydra.run.dir={self.dir}"]

    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["TFSCALE_TRIAL_METRICS"] = str(self.dir / REPORTED_METRICS)
        env["TFSCALE_TRIAL_ID"] = str(self.num)
        return env

    def prepare_dir(self) -> None:
        """Create the job directory; a leftover one (an interrupted attempt of this trial) is cleared."""
        if self.dir.exists() and any(self.dir.iterdir()):
            log.info("trial %d: clearing %s, left by an interrupted attempt", self.num, self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def result(self, returncode: int, stopped: bool, metrics: Optional[Dict[str, Any]] = None) -> JobReturn:
        """The JobReturn of the finished process: COMPLETED with ``metrics.json``, else FAILED."""
        ret = JobReturn(overrides=list(self.overrides), working_dir=os.getcwd(), task_name=_task_name(self.config))
        ret.cfg = _without_hydra(self.config)
        ret.hydra_cfg = OmegaConf.create({"hydra": copy.deepcopy(self.config.hydra)})
        if metrics is None and returncode == 0:
            metrics = _read_json(self.dir / "metrics.json")
        if stopped:
            ret.status, ret.return_value = JobStatus.FAILED, TrialStoppedError(
                f"trial {self.num} was stopped early (log: {self.log_path})")
        elif returncode == 0 and isinstance(metrics, dict):
            ret.status, ret.return_value = JobStatus.COMPLETED, metrics
        else:
            why = (f"exited with code {returncode}" if returncode != 0 else "exited without writing metrics.json")
            ret.status, ret.return_value = JobStatus.FAILED, TaskFailedError(
                f"trial {self.num} {why}. Log {self.log_path}:\n{_tail(self.log_path)}")
        return ret


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _task_name(config: DictConfig) -> str:
    return str(OmegaConf.select(config, "hydra.job.name", default="tfscale"))


def _without_hydra(config: DictConfig) -> DictConfig:
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def _config_flags(config: DictConfig) -> List[str]:
    """``-cn``/``-cd`` flags so the job composes from the same primary config as the sweep."""
    flags = []
    name = OmegaConf.select(config, "hydra.job.config_name")
    if name and name != "config":
        flags += ["--config-name", str(name)]
    for source in OmegaConf.select(config, "hydra.runtime.config_sources", default=None) or []:
        if source.get("provider") == "command-line" and str(source.get("schema")) == "file":
            flags += ["--config-dir", str(source.get("path"))]
    return flags


def prepare_job(hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str], num: int) -> Job:
    """Compose job ``num``'s config as Hydra's launchers do and resolve its directory."""
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = str(num)
        sweep_config.hydra.job.num = num
    previous = HydraConfig.instance().cfg
    # hydra.sweep.dir/subdir may use ${hydra:...} and ${now:...}, resolved against the job's own config.
    HydraConfig.instance().set_config(sweep_config)
    try:
        out = Path(str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))) / str(
            OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
    finally:
        if previous is not None:
            HydraConfig.instance().cfg = previous
    out = out.absolute()
    with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
        sweep_config.hydra.runtime.output_dir = str(out)
    return Job(num=num, overrides=list(overrides), config=sweep_config, dir=out)


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


# ------------------------------------------------------------------------------------ processes
def _die_with_parent() -> None:
    # If the driver is SIGKILLed, its atexit cleanup never runs: the kernel stops the job instead.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_LIVE: Dict[int, subprocess.Popen] = {}
_LIVE_LOCK = threading.Lock()


def _kill_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the job's process group, SIGKILL it after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # grandchildren left in the group after the leader exited
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_all_live() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
        _LIVE.clear()
    for proc in procs:
        _kill_group(proc, 2.0)


atexit.register(_kill_all_live)


def start_job_process(job: Job, env: Dict[str, str], stream_logs: bool = False) -> subprocess.Popen:
    """Start ``job``'s tfscale process in its own process group, output into its log."""
    job.prepare_dir()
    logf = open(job.log_path, "wb")
    try:
        proc = subprocess.Popen(job.command(), stdout=subprocess.PIPE if stream_logs else logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd(),
                                start_new_session=True, preexec_fn=_die_with_parent)
    finally:
        if not stream_logs:
            logf.close()
    if stream_logs:
        threading.Thread(target=_pump, args=(proc, logf, f"[trial {job.num}] "), daemon=True).start()
    with _LIVE_LOCK:
        _LIVE[proc.pid] = proc
    return proc


def _pump(proc: subprocess.Popen, logf: Any, prefix: str) -> None:
    with logf:
        for line in proc.stdout:
            logf.write(line)
            sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


def _forget(proc: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(proc.pid, None)


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
        if self.config is None or self.hydra_context is None:
            raise RuntimeError("launch() called before setup()")
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        return [prepare_job(self.hydra_context, self.config, overrides, initial_job_idx + i)
                for i, overrides in enumerate(job_overrides)]


class ProcessesLauncher(_BaseLauncher):
    """Each job a fresh ``tfscale`` process on this machine; up to ``max_parallel`` at once."""

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
        jobs = self._jobs(job_overrides, initial_job_idx)
        if not jobs:
            return []
        parallel = min(len(jobs), self.max_parallel or len(jobs))
        slots = gpu_slots(parallel, visible_gpu_ids(), self.gpus_per_trial)
        free = list(range(len(slots)))
        pending = list(jobs)
        running: Dict[int, tuple] = {}  # job num -> (job, slot, process, stopped)
        results: Dict[int, JobReturn] = {}
        try:
            while pending or running:
                while pending and free:
                    job, slot = pending.pop(0), free.pop(0)
                    env = job.env()
                    if slots[slot] is not None:
                        env["CUDA_VISIBLE_DEVICES"] = ",".join(slots[slot])
                    log.info("trial %d: started%s -> %s", job.num,
                             f" on GPU(s) {env['CUDA_VISIBLE_DEVICES']}" if slots[slot] else "", job.dir)
                    running[job.num] = (job, slot, start_job_process(job, env, self.stream_logs), False)
                time.sleep(0.2)
                for num, (job, slot, proc, stopped) in list(running.items()):
                    if not stopped and proc.poll() is None and job.stop_requested:
                        log.info("trial %d: stopping (early stopping)", num)
                        _kill_group(proc, self.stop_timeout_s)
                        stopped = True
                    if proc.poll() is not None:
                        _forget(proc)
                        results[num] = job.result(proc.returncode, stopped)
                        del running[num]
                        free.append(slot)
        finally:
            for job, _, proc, _ in running.values():
                _kill_group(proc, self.stop_timeout_s)
                _forget(proc)
        return [results[job.num] for job in jobs]


# ------------------------------------------------------------------------------------------- Ray
def _run_job_in_worker(command: List[str], extra_env: Dict[str, str], cwd: str, job_dir: str,
                       stop_timeout_s: float) -> Dict[str, Any]:
    """Body of the Ray task: run the job's tfscale process in this (fresh) worker and wait for it.

    Ray sets CUDA_VISIBLE_DEVICES in the worker for the GPUs it reserved; the job inherits it.
    """
    env = dict(os.environ)
    env.update(extra_env)
    directory = Path(job_dir)
    job = Job(num=int(extra_env.get("TFSCALE_TRIAL_ID", "0")), overrides=[], config=OmegaConf.create({}),
              dir=directory)
    job.prepare_dir()
    with open(job.log_path, "wb") as logf:
        proc = subprocess.Popen(command, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
    stopped = False
    try:
        while proc.poll() is None:
            if job.stop_requested:
                _kill_group(proc, stop_timeout_s)
                stopped = True
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            _kill_group(proc, stop_timeout_s)
    return {"returncode": proc.returncode, "stopped": stopped, "metrics": _read_json(directory / "metrics.json")}


class RayLauncher(_BaseLauncher):
    """Each job in a fresh Ray worker process (``max_calls=1``) with its reserved CPUs/GPUs.

    The driver connects to ``address`` (or starts a local Ray of ``num_cpus``) on the first batch and
    keeps it for the rest of the sweep. Jobs' directories must be on a file system the driver sees (this
    machine, or a shared one): the sweeper reads per-epoch metrics there.
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

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        # Ray's GCS and raylet die with the thread that started them (PR_SET_PDEATHSIG), and the sweeper
        # calls launch() from a worker thread per batch: connect here, on the caller's thread.
        self._ray()

    def _ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            log.info("Ray cluster at %s", ray.get_runtime_context().gcs_address)
        if self._remote is None:
            self._remote = ray.remote(max_calls=1)(_run_job_in_worker)
        return ray

    def _overrides_for(self, job: Job, gcs_address: str) -> tuple:
        """A job running ``backend=ray`` joins this cluster instead of starting a Ray inside a worker."""
        if str(OmegaConf.select(job.config, "backend.name")) != "ray":
            return job.overrides, self.cpus_per_trial
        if OmegaConf.select(job.config, "backend.ray_address") is None:
            return job.overrides + [f"backend.ray_address={gcs_address}"], 0.0
        return job.overrides, 0.0

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self._jobs(job_overrides, initial_job_idx)
        if not jobs:
            return []
        ray = self._ray()
        gcs = ray.get_runtime_context().gcs_address
        refs = {}
        for job in jobs:
            overrides, cpus = self._overrides_for(job, gcs)
            command = Job(job.num, overrides, job.config, job.dir).command()
            extra = {k: v for k, v in job.env({}).items()}
            refs[job.num] = self._remote.options(num_cpus=cpus, num_gpus=self.gpus_per_trial).remote(
                command, extra, os.getcwd(), str(job.dir), self.stop_timeout_s)
            log.info("trial %d: submitted to Ray (%g CPU, %g GPU) -> %s", job.num, cpus, self.gpus_per_trial, job.dir)
        results: Dict[int, JobReturn] = {}
        try:
            for job in jobs:
                try:
                    out = ray.get(refs[job.num])
                except ray.exceptions.RayError as exc:
                    job.dir.mkdir(parents=True, exist_ok=True)
                    ret = job.result(1, False, None)
                    ret.return_value = TaskFailedError(f"trial {job.num}: the Ray task failed: {exc}")
                    results[job.num] = ret
                    continue
                results[job.num] = job.result(out["returncode"], out["stopped"], out["metrics"])
        finally:
            for ref in refs.values():
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or Ray shutting down: nothing left to cancel
                    pass
        return [results[job.num] for job in jobs]
