"""Benchmark tfscale's default tuner (GP bandit) against RANDOM_SEARCH and Optuna TPE.

Functions (minimised): Branin on [-5, 10] x [0, 15] (optimum 0.397887, target: within 0.01) and Hartmann6 on
[0, 1]^6 (optimum -3.32237, target: within 0.05). Each algorithm runs sequentially (one trial at a time) for
a budget of N trials per function (``--budget``; default 60 for Branin, 100 for Hartmann6) and ``--seeds``
seeds.

Columns:

* ``to target`` -- median over seeds of the number of trials until the best value is within the target
  (``>N`` when fewer than half of the seeds reached it); ``hit`` -- seeds that reached it.
* ``regret@N`` -- median simple regret (best found minus optimum) after N trials.
* ``log-eff`` -- log-efficiency versus random search, after Vizier's benchmarks: with ``v`` the best value an
  algorithm found in N trials and ``R(v)`` the number of trials random search (a separate long run of
  ``--random-factor * N`` trials, same seed) needs to reach ``v``, ``log-eff = ln(R(v) / N)``, median over
  seeds. 0 means as efficient as random; 1 means random needs e ~ 2.7 times more trials. When random never
  reaches ``v`` R is capped at its run length, so the value is a lower bound (marked ``>=``).
* ``s/suggest`` -- mean seconds per suggestion over the run; ``s@100`` -- median over 3 seeds of the
  seconds for one suggestion from a fresh designer told 100 completed Hartmann6 trials.

The goals of the default algorithm are checked below the table: Branin to target in <= 35 trials (median),
log-efficiency >= 0.5 on every function, trials to target <= TPE's on every function, s@100 <= 0.5.

Run: ``python benchmarks/tuners.py [--seeds 10] [--budget N] [--functions branin,hartmann6]``; a quick look:
``--seeds 2 --budget 30 --functions branin``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuners import Algorithm, MetricSpec, ParameterSpec, StudySpec, Trial, TrialStatus, make_designer  # noqa: E402


def branin(p: dict) -> float:
    x1, x2 = p["x1"], p["x2"]
    return ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8],
               [17, 8, 0.05, 10, 0.1, 14]])
_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                      [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(p: dict) -> float:
    x = np.array([p[f"x{i}"] for i in range(6)])
    return float(-np.sum(_ALPHA * np.exp(-np.sum(_A * (x - _P) ** 2, axis=1))))


#: name -> (function, bounds, optimum, tolerance of the target, default budget)
FUNCTIONS = {
    "branin": (branin, [("x1", -5.0, 10.0), ("x2", 0.0, 15.0)], 0.397887, 0.01, 60),
    "hartmann6": (hartmann6, [(f"x{i}", 0.0, 1.0) for i in range(6)], -3.32237, 0.05, 100),
}
DEFAULT = "gp (default)"
TPE = "tpe (optuna)"
ALGORITHMS = {DEFAULT: Algorithm.ALGORITHM_UNSPECIFIED, "random": Algorithm.RANDOM_SEARCH,
              TPE: Algorithm.TPE}
GOAL_BRANIN_TRIALS = 35
GOAL_LOG_EFF = 0.5
GOAL_SECONDS_AT_100 = 0.5


def make_spec(function: str, algorithm: Algorithm, budget: int) -> StudySpec:
    bounds = FUNCTIONS[function][1]
    params = tuple(ParameterSpec(n, "DOUBLE", lo, hi, config_key=n) for n, lo, hi in bounds)
    return StudySpec(MetricSpec("f", "MINIMIZE"), params, max_trials=budget, algorithm=algorithm)


def run(function: str, algorithm: Algorithm, budget: int, seed: int) -> tuple[list[float], float]:
    """Best-so-far curve and mean seconds per suggestion."""
    f = FUNCTIONS[function][0]
    designer = make_designer(make_spec(function, algorithm, budget), seed)
    best, curve, spent = math.inf, [], 0.0
    for i in range(budget):
        start = time.perf_counter()
        (values,) = designer.suggest(1)
        spent += time.perf_counter() - start
        value = f(values)
        designer.update([Trial(i, values, TrialStatus.COMPLETED, objective=value)], [])
        best = min(best, value)
        curve.append(best)
    return curve, spent / budget


def seconds_at_100(algorithm: Algorithm, seed: int) -> float:
    """Seconds for one suggestion from a fresh designer told 100 random Hartmann6 trials."""
    spec = make_spec("hartmann6", algorithm, 200)
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(100):
        values = {f"x{j}": float(v) for j, v in enumerate(rng.random(6))}
        trials.append(Trial(i, values, TrialStatus.COMPLETED, objective=hartmann6(values)))
    designer = make_designer(spec, seed)
    designer.update(trials, [])
    start = time.perf_counter()
    designer.suggest(1)
    return time.perf_counter() - start


def first_reaching(curve: list[float], value: float) -> int | None:
    for i, v in enumerate(curve):
        if v <= value + 1e-12:
            return i + 1
    return None


def _verdict(ok: bool | None) -> str:
    return {True: "HOLDS", False: "FAILS", None: "UNDECIDED"}[ok]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--budget", type=int, default=None,
                        help="trials per run for every function (default: 60 Branin, 100 Hartmann6)")
    parser.add_argument("--functions", default="branin,hartmann6",
                        help=f"comma-separated, from {sorted(FUNCTIONS)}")
    parser.add_argument("--random-factor", type=int, default=20,
                        help="length of the random reference run, in budgets (default 20)")
    args = parser.parse_args()
    functions = [f.strip() for f in args.functions.split(",") if f.strip()]
    unknown = sorted(set(functions) - set(FUNCTIONS))
    if unknown:
        parser.error(f"unknown functions {unknown}; choose from {sorted(FUNCTIONS)}.")
    if args.seeds < 1 or (args.budget is not None and args.budget < 1):
        parser.error(f"--seeds and --budget must be >= 1, but got seeds={args.seeds}, budget={args.budget}.")

    rows, hits_by = [], {}
    effs_by: dict[str, tuple[float, bool]] = {}
    budgets = {f: args.budget or FUNCTIONS[f][4] for f in functions}
    for function in functions:
        _, _, optimum, tol, _ = FUNCTIONS[function]
        budget = budgets[function]
        long_random = {s: run(function, Algorithm.RANDOM_SEARCH, budget * args.random_factor, s)[0]
                       for s in range(args.seeds)}
        for name, algorithm in ALGORITHMS.items():
            hits, regrets, effs, secs, capped = [], [], [], [], False
            for seed in range(args.seeds):
                curve, sec = run(function, algorithm, budget, seed)
                hit = first_reaching(curve, optimum + tol)
                hits.append(hit if hit is not None else math.inf)
                regrets.append(curve[-1] - optimum)
                needed = first_reaching(long_random[seed], curve[-1])
                if needed is None:
                    needed, capped = len(long_random[seed]), True
                effs.append(math.log(needed / budget))
                secs.append(sec)
                print(f"  {function} {name} seed {seed}: to target {hit}, regret {curve[-1] - optimum:.4g}, "
                      f"{sec:.3f} s/suggest", file=sys.stderr, flush=True)
            median_hits = statistics.median(hits)
            hits_by[function, name] = median_hits
            effs_by[function, name] = (statistics.median(effs), capped)
            rows.append([function, name, f">{budget}" if math.isinf(median_hits) else f"{median_hits:g}",
                         f"{sum(not math.isinf(h) for h in hits)}/{args.seeds}",
                         f"{statistics.median(regrets):.3g}",
                         (">=" if capped else "") + f"{statistics.median(effs):.2f}",
                         f"{statistics.mean(secs):.3f}"])
    at100 = {name: statistics.median(seconds_at_100(a, s) for s in range(3)) for name, a in ALGORITHMS.items()}
    header = ["function", "algorithm", "to target", "hit", "regret@N", "log-eff", "s/suggest", "s@100"]
    table = [header] + [r + [f"{at100[r[1]]:.3f}"] for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    print(f"seeds={args.seeds} budgets={budgets} random reference={args.random_factor}x budget")
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())

    print("\ngoals of the default algorithm:")
    if "branin" in functions:
        h = hits_by["branin", DEFAULT]
        print(f"  Branin within 0.01 in <= {GOAL_BRANIN_TRIALS} trials (median): "
              f"{'>' + str(budgets['branin']) if math.isinf(h) else f'{h:g}'} -> "
              f"{_verdict(h <= GOAL_BRANIN_TRIALS)}")
    for function in functions:
        eff, _ = effs_by[function, DEFAULT]
        print(f"  {function}: log-efficiency vs random >= {GOAL_LOG_EFF}: {eff:.2f} -> "
              f"{_verdict(eff >= GOAL_LOG_EFF)}")
    for function in functions:
        gp, tpe = hits_by[function, DEFAULT], hits_by[function, TPE]
        # Neither reaching the target within the budget says nothing about which would get there first.
        ok = None if math.isinf(gp) and math.isinf(tpe) else gp <= tpe
        print(f"  {function}: trials to target <= TPE's: {gp:g} vs {tpe:g} -> {_verdict(ok)}")
    print(f"  seconds per suggestion at 100 trials <= {GOAL_SECONDS_AT_100}: {at100[DEFAULT]:.3f} -> "
          f"{_verdict(at100[DEFAULT] <= GOAL_SECONDS_AT_100)}")


if __name__ == "__main__":
    main()
