"""One sweep job in a process of its own: ``python -m orchestrator.launch.job_process [--warm] JOB_FILE``.

tfscale's Hydra launchers run a job the way Hydra's own launchers do — ``hydra.core.utils.run_job`` with the
task function Hydra handed them and the job's config, composed once in the driver — but never in the
driver's process: a trial's device topology must be applied before TensorFlow initialises, which only a
process of its own allows. The launcher writes the job file (cloudpickle: the task function, the job's config,
the :class:`~hydra.types.HydraContext` and Hydra's singletons, which carry the config store and custom
resolvers) and starts this module on it, or hands it to a warm trial process whose forked child runs it
(:mod:`orchestrator.launch.trial_pool`); either way :func:`run_job_file` restores the singletons, runs the job
and pickles the :class:`~hydra.core.utils.JobReturn` back next to the job file. A Ray worker calls
:func:`execute` directly.

``--warm`` (for task functions marked with :func:`warm_start`) forks the warm task process first, so
TensorFlow is imported while this process unpickles the job and Hydra writes the job's files.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

_JOB_FILE = ".tfscale_job.pkl"
_RETURN_FILE = ".tfscale_return.pkl"
_WARM_MARK = "__tfscale_warm_start__"


def warm_start(task_function: Callable) -> Callable:
    """Mark a Hydra task function that trains with TensorFlow in its own process.

    A job process running it forks the warm task process (:mod:`orchestrator.launch.warm_task`) before
    anything else, as a plain ``tfscale`` run does.
    """
    setattr(task_function, _WARM_MARK, True)
    return task_function


def wants_warm_start(task_function: Any) -> bool:
    """True for task functions marked with :func:`warm_start`."""
    return bool(getattr(task_function, _WARM_MARK, False))


# ----------------------------------------------------------------------------------------- driver side
def payload(*, task_function: Any, config: Any, hydra_context: Any, singleton_state: Any,
            data: Optional[Tuple[str, Any]] = None) -> Dict[str, Any]:
    """Everything a job needs to run elsewhere: the task function, the job's config, Hydra's context and
    singletons, and the driver's working directory (relative paths in the config are relative to it).

    ``data``: the job's data as the driver loaded it (``(key, splits)``, see
    :func:`orchestrator.launch.warm_task.study_data`), which the run takes instead of loading it again.
    """
    job = {"task_function": task_function, "config": config, "hydra_context": hydra_context,
           "singletons": singleton_state, "cwd": os.getcwd()}
    if data is not None:
        job["data"] = data
    return job


def write_job(directory: Path, job: Dict[str, Any]) -> Path:
    """Write the job file of ``job`` (see :func:`payload`) into its directory; returns its path."""
    import cloudpickle

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _JOB_FILE
    (directory / _RETURN_FILE).unlink(missing_ok=True)
    _write_atomically(path, cloudpickle.dumps(job))
    return path


def command(job_file: Path, warm: bool) -> List[str]:
    """The argv of the job process of ``job_file``."""
    return [sys.executable, "-m", "orchestrator.launch.job_process", *(["--warm"] if warm else []), str(job_file)]


def read_return(job_file: Path) -> Any:
    """The JobReturn the job process left next to ``job_file`` (None if it left none); both files go."""
    path = job_file.parent / _RETURN_FILE
    try:
        with open(path, "rb") as f:
            ret = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        ret = None
    path.unlink(missing_ok=True)
    job_file.unlink(missing_ok=True)
    return ret


# -------------------------------------------------------------------------------------------- job side
def execute(job: Dict[str, Any], log_path: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> Any:
    """Run one job here: restore Hydra's singletons, ``run_job`` in the sweep directory; the JobReturn.

    ``log_path``: send this process's stdout and stderr there (a Ray worker, whose output is otherwise Ray's);
    ``env``: variables to set first. Relative paths in the job's config mean what they mean in the driver,
    so the job runs from the driver's working directory when this machine has it.
    """
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    if log_path is not None:
        _redirect_output(log_path)
    os.environ.update(env or {})
    if os.path.isdir(job.get("cwd", "")):
        os.chdir(job["cwd"])
    setup_globals()
    Singleton.set_state(job["singletons"])
    ret = run_job(hydra_context=job["hydra_context"], task_function=job["task_function"], config=job["config"],
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    error = ret._return_value if isinstance(ret._return_value, BaseException) else None
    if error is not None:  # the log shows why the job failed; the driver gets the exception itself
        traceback.print_exception(type(error), error, error.__traceback__)
    sys.stdout.flush()
    sys.stderr.flush()
    return _portable(ret)


def execute_elsewhere(job: Dict[str, Any], log_name: str, env: Optional[Dict[str, str]] = None) -> Tuple[Any, Dict[str, bytes]]:
    """Run one job on a machine that does not share the driver's files (a node of a Ray cluster).

    The job's directory is a scratch directory here (also the working directory: nothing lands where the
    driver's paths happen to exist), its output goes to ``log_name`` in it, and what the job wrote there
    comes back with the JobReturn as ``{relative path: bytes}`` for the driver to put into the job's own
    directory; the scratch directory is removed. The node this runs on is recorded in the trial's
    provenance (``ray_node``).
    """
    import json
    import shutil
    import tempfile

    from omegaconf import open_dict, read_write

    from orchestrator.artifacts.run_record import RAY_NODE_ENV
    from orchestrator.launch.ray_session import node_facts
    from tuners.metrics import METRICS_ENV_VAR

    scratch = Path(tempfile.mkdtemp(prefix="tfscale-job-"))
    try:
        config = job["config"]
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(scratch)
        subdir = _job_subdir(config)
        out = scratch / subdir
        job = {**job, "config": config, "cwd": str(scratch)}
        env = dict(env or {})
        if METRICS_ENV_VAR in env:  # the trial's reported metrics: into its directory on this node
            env[METRICS_ENV_VAR] = str(out / Path(env[METRICS_ENV_VAR]).name)
        env[RAY_NODE_ENV] = json.dumps(node_facts())
        ret = execute(job, str(out / log_name), env)
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                 if p.is_file() and not p.is_symlink()}
        return ret, files
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _job_subdir(config: Any) -> str:
    """``hydra.sweep.subdir`` of a job's config, resolved as ``run_job`` resolves it."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().set_config(config)
    return str(OmegaConf.select(config, "hydra.sweep.subdir"))


def place_files(directory: Path, files: Dict[str, bytes]) -> None:
    """Write what :func:`execute_elsewhere` brought back into the job's directory on the driver's machine."""
    from orchestrator.artifacts.publish import publish_file

    for rel, data in files.items():
        publish_file(Path(directory) / rel, data)


def _portable(ret: Any) -> Any:
    """``ret`` with a return value that survives the trip back to the driver.

    An exception whose constructor takes other arguments than its message cannot be unpickled; the driver
    then gets a :class:`TaskFailedError` with the same type name and message. A return value that cannot be
    pickled at all makes the job FAILED, saying so.
    """
    import cloudpickle
    from hydra.core.utils import JobStatus

    from orchestrator.errors import TaskFailedError

    value = ret._return_value
    try:
        pickle.loads(cloudpickle.dumps(value))
    except Exception as exc:  # noqa: BLE001 - whatever pickling raises, the value cannot travel
        if isinstance(value, BaseException):
            ret._return_value = TaskFailedError(f"{type(value).__name__}: {value}")
        else:
            ret.status = JobStatus.FAILED
            ret._return_value = TaskFailedError(f"The task function returned a {type(value).__name__}, which cannot "
                                                f"be sent back to the launcher ({exc}). Return plain data "
                                                f"(numbers, strings, lists, dicts).")
    return ret


def _redirect_output(log_path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole, readable by its owner only (the job file holds the config, secrets
    included). Not fsynced: a job file and its return only pass a job to, and its result from, a process on
    this machine that reads them once, right after they are written."""
    from orchestrator.artifacts.publish import publish_file

    publish_file(path, data, durable=False, private=True)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the job of a job file and write its JobReturn next to it; 0 once the JobReturn is written."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.launch.job_process", description=__doc__)
    parser.add_argument("--warm", action="store_true", help="fork the warm task process first")
    parser.add_argument("job_file", type=Path)
    args = parser.parse_args(argv)
    if args.warm:
        from orchestrator.launch import warm_task

        warm_task.start()  # TensorFlow imports in the task process while this one unpickles
    return run_job_file(args.job_file)


def run_job_file(job_file: Path) -> int:
    """Run the job of ``job_file`` in this process and write its JobReturn next to it; 0 once written.

    The body of a job process, and of a trial forked by a warm trial process
    (:mod:`orchestrator.launch.trial_pool`).
    """
    from orchestrator.runtime import supervisor

    supervisor.install_signal_handlers()  # a stopped job unwinds (its run record says so, its children stop)
    with open(job_file, "rb") as f:
        job = pickle.load(f)
    Path(job_file).unlink(missing_ok=True)  # it holds the whole config, secrets included: gone once read
    if job.get("data") is not None:
        from orchestrator.launch import warm_task

        warm_task.offer_data(*job["data"])
    ret = execute(job)
    import cloudpickle

    _write_atomically(Path(job_file).parent / _RETURN_FILE, cloudpickle.dumps(ret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
