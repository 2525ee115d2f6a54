"""Entry point of a task process: ``python -m orchestrator.launch.task_main RUN_DIR``.

Backends that start tasks in fresh processes (process clusters, Ray actors) run this with the task's
TF_CONFIG in the environment; it reads the run's resolved config and trains. ``RUN_DIR`` may be a storage
URI (a Ray node that does not share this machine's files): the task then works in a local scratch directory
(``--scratch``, else a temporary one), reads the config from the URI, mirrors its backup and TensorBoard logs
there while it trains, and the chief uploads its record files (metrics, provenance, epochs, logs) at the end. A local run whose task cannot
use the forked warm process runs it with ``--job-fd N --reply-fd M``: it then speaks the warm task's
protocol (:func:`orchestrator.launch.warm_task.task_process_main`) over the two pipes ``tfscale`` passed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from orchestrator.errors import TfscaleError


#: Seconds a cluster task has to unwind after SIGTERM before it exits anyway (its peers are stopping too).
STOP_WITHIN_S = 3.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.launch.task_main", description=__doc__)
    parser.add_argument("run_dir", help="run directory (or storage URI) holding config.resolved.yaml")
    parser.add_argument("--scratch", type=Path, default=None, help="local directory of a task whose run directory is a URI")
    parser.add_argument("--job-fd", type=int, default=None, help="read end of the pipe the job arrives on")
    parser.add_argument("--reply-fd", type=int, default=None, help="write end of the pipe the reply goes to")
    args = parser.parse_args(argv)
    if (args.job_fd is None) != (args.reply_fd is None):
        parser.error("--job-fd and --reply-fd go together")
    if args.job_fd is not None:
        from orchestrator.launch.warm_task import task_process_main

        code = task_process_main(args.job_fd, args.reply_fd)
        os._exit(code)  # like the forked task: no interpreter tear-down once everything is written and reported
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from orchestrator.runtime import supervisor

    # A task of a cluster job told to stop blocks in collective ops that wait for peers that are gone or
    # stopping too: it is gone STOP_WITHIN_S after SIGTERM, instead of waiting for its backend's SIGKILL.
    supervisor.exit_after_sigterm(STOP_WITHIN_S)
    from orchestrator.artifacts import storage
    from orchestrator.training.task import load_run_config, run_training

    try:
        if storage.is_remote(args.run_dir):
            run_from_uri(args.run_dir, args.scratch)
        else:
            cfg = load_run_config(Path(args.run_dir))
            run_training(cfg, Path(args.run_dir))
    except TfscaleError as exc:
        print(f"tfscale: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def run_from_uri(run_uri: str, scratch: Path | None) -> None:
    """Train one task of the run kept at ``run_uri``, working in ``scratch`` (see the module doc)."""
    import shutil
    import tempfile

    from orchestrator.artifacts import storage
    from orchestrator.artifacts.run_record import CONFIG_FILE, EPOCHS_FILE, RunRecord
    from orchestrator.training.task import TaskIdentity, load_run_config, run_training

    own = scratch is None
    work = Path(tempfile.mkdtemp(prefix="tfscale-task-")) if own else Path(scratch)
    work.mkdir(parents=True, exist_ok=True)
    chief = TaskIdentity.from_env().is_chief
    try:
        (work / CONFIG_FILE).write_bytes(storage.read_bytes(storage.join(run_uri, CONFIG_FILE)))
        if chief:  # a restarted job's chief continues the epochs its predecessor recorded
            try:
                (work / EPOCHS_FILE).write_bytes(storage.read_bytes(storage.join(run_uri, EPOCHS_FILE)))
            except FileNotFoundError:
                pass
        cfg = load_run_config(work)
        failed = True
        try:
            run_training(cfg, work, run_uri=run_uri)
            failed = False
        finally:
            if chief:  # what the chief recorded, also when training failed (its epochs tell how far it got)
                try:
                    RunRecord(run_uri).upload(work, skip=lambda rel: rel == CONFIG_FILE or rel.startswith("backup/"))
                except Exception as exc:
                    if not failed:
                        raise
                    # never hide how training ended behind a failed upload
                    print(f"tfscale: could not upload the task's record to {run_uri}: {exc}", file=sys.stderr)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
