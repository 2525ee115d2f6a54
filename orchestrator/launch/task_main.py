"""Entry point of a task process: ``python -m orchestrator.launch.task_main RUN_DIR``.

Backends that start tasks in fresh processes (process clusters, Ray actors) run this with the task's
TF_CONFIG in the environment; it reads the run's resolved config and trains. A local run whose task cannot
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.launch.task_main", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="run directory holding config.resolved.yaml")
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
    from orchestrator.training.task import load_run_config, run_training

    try:
        cfg = load_run_config(args.run_dir)
        run_training(cfg, args.run_dir)
    except TfscaleError as exc:
        print(f"tfscale: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
