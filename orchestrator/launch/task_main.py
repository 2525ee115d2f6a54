"""Entry point of a task process: ``python -m orchestrator.launch.task_main RUN_DIR``.

Backends that start tasks in fresh processes (a local re-launch, process clusters, Ray actors) run this with
the task's TF_CONFIG in the environment; it reads the run's resolved config and trains.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from orchestrator.errors import TfscaleError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.launch.task_main", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="run directory holding config.resolved.yaml")
    args = parser.parse_args(argv)
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
