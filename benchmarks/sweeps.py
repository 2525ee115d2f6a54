"""Hyperparameter studies: ``tfscale -m`` against Ray Tune's ``Tuner`` on the same study, and slot use.

Runs, side by side in one run (this machine is noisy, so only ratios within one run mean anything):

1. The 8-trial random study of ``study=digits_lr_units`` (learning rate log-uniform in 1e-4..0.1, width of the
   first hidden layer log-uniform in 16..256, the digits MLP, 20 epochs, 2 trials at a time) with
   ``tfscale -m study=digits_lr_units study.algorithm=RANDOM_SEARCH``, and the same study with Ray Tune's
   ``Tuner`` (``ray_tune.py`` below: same search space, trial count and parallelism, one CPU per trial).
   Both run the same training function: each Ray Tune trial composes and validates the trial's config with
   tfscale and trains it with tfscale's ``run_training`` (model, data, fit, evaluation, export). Each side
   is timed as a user would see it, from the command's start to its end. Per side it prints the wall time,
   the summed trial time (each trial's ``wall_seconds``: ``run_training`` from its start to the end of
   training, the same code on both sides) and wall/ideal, where ideal = summed trial time / parallel
   trials. Goals: tfscale's wall <= 0.6x Ray Tune's, and <= 1.3x its ideal.
2. A tfscale study whose trials differ widely in length (``trainer.epochs`` tuned over 1..30, 8 trials, 2
   at a time): the idle slot time, from the start and end times ``study.csv`` records, as a share of the
   study's wall (first trial's start to last trial's end). Idle time counts only while trials were still
   to start: the integral of (slots - running trials) up to the last trial's start. Goal: <= 10%.

``--cold`` adds the tfscale study with ``hydra.launcher.warm=false`` (every trial a fresh process that
imports TensorFlow), to show what the warm trial processes buy.

It also times ``import tensorflow, tf_keras`` in a fresh interpreter as a warm trial process does it (collector
paused): no trial can train before that, so 1 + import/ideal is a floor on wall/ideal that nothing after the
command starts can lower.

Measured on the 2-core development machine (``--repeats 2``, medians): tfscale 11.7 s against Ray Tune's 34.2 s
(0.34); tfscale wall/ideal 1.43 (trials of about 2.05 s, ideal 8.2 s; Ray Tune's trials of the same function
take 4.6 s each, its ideal 18.6 s), idle slot time 3.2%. The TensorFlow import alone takes 1.61 s, 20% of that
ideal (floor 1.20); the rest is the warm process's start and the first trial's set-up (0.45 s), about 0.25 s of
set-up per later trial (Hydra's ``run_job``, the run record, typing the config), the final plots (0.2 s) and
the last trial running alone. Longer trials carry the fixed start better: ``--epochs 30`` (trials of 2.95 s)
measured 1.32, ``--epochs 40`` (3.2 s, still shorter than one Ray Tune trial of 20 epochs) 1.28.

Usage: ``python benchmarks/sweeps.py [--repeats 1] [--trials 8] [--parallel 2] [--epochs 20] [--cold]``.
Needs Ray Tune (``pip install "ray[tune]"``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RAY_TUNE_SCRIPT = textwrap.dedent('''
    import json, sys, tempfile
    from pathlib import Path

    TRIALS, PARALLEL, WORK = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    BASE = json.loads(sys.argv[4])  # the overrides every trial shares (the same as tfscale's)

    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator


    def train(config):
        """A tfscale trial's training: tfscale composes and validates the config, run_training trains it."""
        from orchestrator.artifacts.run_record import RunRecord
        from orchestrator.config.compose import compose
        from orchestrator.config.validation import validate
        from orchestrator.training.task import load_run_config, run_training

        cfg = compose(BASE + [f"model.optimizer.learning_rate={config['learning_rate']!r}",
                              f"model.layers.1.units={config['units']}"])
        validate(cfg)
        run_dir = Path(tempfile.mkdtemp(prefix="trial_", dir=Path(WORK) / "ray_runs"))
        RunRecord(run_dir).write_config(cfg)
        metrics = run_training(load_run_config(run_dir), run_dir)
        tune.report({"accuracy": metrics["validation"]["accuracy"], "wall_seconds": metrics["wall_seconds"]})


    ray.init(num_cpus=PARALLEL, include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(train, {"cpu": 1}),
        param_space={"learning_rate": tune.loguniform(1e-4, 0.1), "units": tune.lograndint(16, 257)},
        tune_config=tune.TuneConfig(num_samples=TRIALS, max_concurrent_trials=PARALLEL, metric="accuracy",
                                    mode="max", search_alg=BasicVariantGenerator(random_state=0)),
        run_config=tune.RunConfig(name="sweeps", storage_path=str(Path(WORK) / "ray_results"), verbose=0))
    results = tuner.fit()
    rows = [{"accuracy": r.metrics["accuracy"], "wall_seconds": r.metrics["wall_seconds"]} for r in results
            if r.error is None]
    print("RESULT " + json.dumps({"rows": rows, "errors": sum(r.error is not None for r in results)}))
''')

EPOCHS_STUDY = textwrap.dedent('''
    # @package _global_
    # Trials of very different lengths: trainer.epochs over 1..30.
    defaults:
      - override /hydra/sweeper: tfscale
      - override /hydra/launcher: tfscale_processes
    study:
      name: epochs_1_30
      metric: {tag: accuracy, goal: MAXIMIZE}
      max_trials: 8
      max_parallel_trials: 2
      algorithm: RANDOM_SEARCH
      seed: 0
      parameters:
        - {name: epochs, type: INTEGER, min: 1, max: 30, key: trainer.epochs}
''')


def run(cmd: list[str], cwd: Path, **extra_env: str) -> tuple[float, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p), **extra_env)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def study_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "study.csv", newline="") as f:
        return list(csv.DictReader(f))


def trial_seconds(sweep_dir: Path, rows: list[dict]) -> list[float]:
    """Each trial's ``wall_seconds`` (``run_training``'s own time), from its metrics.json."""
    return [json.loads((sweep_dir / f"trial_{r['trial_id']}" / "metrics.json").read_text())["wall_seconds"]
            for r in rows if r["status"] == "COMPLETED"]


def idle_share(rows: list[dict], slots: int) -> float:
    """Idle slot-seconds while trials were still to start, as a share of the study's wall (see the docstring)."""
    spans = [(float(r["started_at"]), float(r["ended_at"])) for r in rows if r["started_at"] and r["ended_at"]]
    first, last_start, last_end = min(s for s, _ in spans), max(s for s, _ in spans), max(e for _, e in spans)
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    idle, running, at = 0.0, 0, first
    for when, change in events:
        if when > last_start:
            break
        idle += max(0, slots - running) * (when - at)
        at, running = when, running + change
    return idle / (last_end - first)


IMPORT_PROBE = (
    "import time; from orchestrator.runtime import collection, tf_env; tf_env.prepare_environment(); "
    "t = time.perf_counter()\n"
    "with collection.paused(freeze=True):\n    import tensorflow, tf_keras\n"
    "print(time.perf_counter() - t)")


def import_seconds(cwd: Path) -> float:
    """``import tensorflow, tf_keras`` in a fresh interpreter, as a warm trial process does it."""
    _, out = run([sys.executable, "-c", IMPORT_PROBE], cwd)
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--cold", action="store_true", help="also run tfscale with a fresh process per trial")
    args = parser.parse_args()
    tfscale = [sys.executable, "-m", "orchestrator.app.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "ray_tune.py").write_text(RAY_TUNE_SCRIPT)
        (work / "conf" / "study").mkdir(parents=True)
        (work / "conf" / "study" / "epochs_1_30.yaml").write_text(EPOCHS_STUDY)
        (work / "ray_runs").mkdir()
        run(tfscale + ["--cfg", "job"], work)  # warm bytecode caches
        shared = [f"trainer.epochs={args.epochs}", f"export.model_base={work / 'models'}", f"runs_dir={work / 'runs'}"]
        study = ["study=digits_lr_units", "study.algorithm=RANDOM_SEARCH", f"study.max_trials={args.trials}",
                 f"study.max_parallel_trials={args.parallel}"]
        sides = {"tfscale": [], "ray_tune": [], "cold": [], "idle": []}
        imports = []
        for i in range(args.repeats):
            imports.append(import_seconds(work))
            sweep_dir = work / f"tfscale_{i}"
            wall, _ = run(tfscale + ["-m", *study, *shared, f"hydra.sweep.dir={sweep_dir}"], work)
            rows = study_rows(sweep_dir)
            sides["tfscale"].append((wall, sum(trial_seconds(sweep_dir, rows)), len(rows), idle_share(rows, args.parallel)))

            wall, out = run([sys.executable, "ray_tune.py", str(args.trials), str(args.parallel), str(work),
                             json.dumps(shared)], work)
            result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            sides["ray_tune"].append((wall, sum(r["wall_seconds"] for r in result["rows"]), len(result["rows"]), None))

            if args.cold:
                sweep_dir = work / f"cold_{i}"
                wall, _ = run(tfscale + ["-m", *study, *shared, f"hydra.sweep.dir={sweep_dir}",
                                         "hydra.launcher.warm=false"], work)
                rows = study_rows(sweep_dir)
                sides["cold"].append((wall, sum(trial_seconds(sweep_dir, rows)), len(rows),
                                      idle_share(rows, args.parallel)))

            sweep_dir = work / f"epochs_{i}"
            wall, _ = run(tfscale + ["-m", "-cd", str(work / "conf"), "study=epochs_1_30",
                                     f"export.model_base={work / 'models'}", f"runs_dir={work / 'runs'}",
                                     f"hydra.sweep.dir={sweep_dir}"], work)
            rows = study_rows(sweep_dir)
            sides["idle"].append((wall, sum(trial_seconds(sweep_dir, rows)), len(rows), idle_share(rows, args.parallel)))

    def med(side: str, index: int) -> float:
        return statistics.median(r[index] for r in sides[side])

    print(f"{args.trials} trials, {args.parallel} at a time, {args.epochs} epochs; {args.repeats} repeat(s), medians\n")
    print(f"{'study':<38}{'trials':>7}{'wall s':>9}{'summed s':>10}{'ideal s':>9}{'wall/ideal':>12}{'idle':>8}")
    labels = (("tfscale", "tfscale -m (warm trial processes)"), ("cold", "tfscale -m, hydra.launcher.warm=false"),
              ("ray_tune", "Ray Tune Tuner"), ("idle", "tfscale -m, trainer.epochs 1..30"))
    for side, label in labels:
        if not sides[side]:
            continue
        wall, summed = med(side, 0), med(side, 1)
        ideal = summed / args.parallel
        idle = f"{100 * med(side, 3):.1f}%" if sides[side][0][3] is not None else "-"
        print(f"{label:<38}{sides[side][0][2]:>7}{wall:>9.1f}{summed:>10.1f}{ideal:>9.1f}{wall / ideal:>12.2f}{idle:>8}")
    ratio = med("tfscale", 0) / med("ray_tune", 0)
    print(f"\nwall tfscale / Ray Tune            : {ratio:.2f}  (goal <= 0.60)")
    print(f"tfscale wall / ideal               : {med('tfscale', 0) / (med('tfscale', 1) / args.parallel):.2f}  "
          f"(goal <= 1.30)")
    print(f"idle slot time, epochs 1..30 study : {100 * med('idle', 3):.1f}% of its wall  (goal <= 10%)")
    ideal = med("tfscale", 1) / args.parallel
    floor = statistics.median(imports)
    print(f"\nNo trial trains before TensorFlow is imported: {floor:.2f} s in a fresh interpreter (collector "
          f"paused), {100 * floor / ideal:.0f}% of tfscale's ideal, so wall/ideal >= {1 + floor / ideal:.2f} "
          f"before any other cost")


if __name__ == "__main__":
    main()
