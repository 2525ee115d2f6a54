"""Benchmark tfscale's default tuner (GP bandit) against RANDOM_SEARCH and Optuna TPE.

Problems (minimised): Branin on [-5, 10] x [0, 15] (optimum 0.397887, target: within 0.01) and Hartmann6 on
[0, 1]^6 (optimum -3.32237, target: within 0.05). Each algorithm runs sequentially (one trial at a time) for
``--budget`` trials per problem and ``--seeds`` seeds.

Columns:

* ``to target`` -- median over seeds of the number of trials until the best value is within the target
  (``>N`` when fewer than half of the seeds reached it).
* ``regret@N`` -- median simple regret (best found minus optimum) after N trials.
* ``log-eff`` -- log-efficiency versus random search, after Vizier's benchmarks: with ``v`` the best value an
  algorithm found in N trials and ``R(v)`` the number of trials random search (a separate long run of
  ``--random-factor * N`` trials, same seed) needs to reach ``v``, ``log-eff = ln(R(v) / N)``, median over
  seeds. 0 means as efficient as random; 1 means random needs e ~ 2.7 times more trials. When random never
  reaches ``v`` R is capped at its run length, so the value is a lower bound (marked ``>=``).
* ``s/suggest`` -- mean seconds per suggestion over the run; ``s@100`` -- seconds for one suggestion after
  100 completed trials (Hartmann6).

Run: ``python benchmarks/tuners.py [--seeds 10] [--budget-branin 60] [--budget-hartmann 100]``.
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


PROBLEMS = {
    "branin": (branin, [("x1", -5.0, 10.0), ("x2", 0.0, 15.0)], 0.397887, 0.01),
    "hartmann6": (hartmann6, [(f"x{i}", 0.0, 1.0) for i in range(6)], -3.32237, 0.05),
}
ALGORITHMS = {"gp (default)": Algorithm.ALGORITHM_UNSPECIFIED, "random": Algorithm.RANDOM_SEARCH,
              "tpe (optuna)": Algorithm.TPE}


def make_spec(problem: str, algorithm: Algorithm, budget: int) -> StudySpec:
    _, bounds, _, _ = PROBLEMS[problem]
    params = tuple(ParameterSpec(n, "DOUBLE", lo, hi, config_key=n) for n, lo, hi in bounds)
    return StudySpec(MetricSpec("f", "MINIMIZE"), params, max_trials=budget, algorithm=algorithm)


def run(problem: str, algorithm: Algorithm, budget: int, seed: int) -> tuple[list[float], float]:
    """Best-so-far curve and mean seconds per suggestion."""
    f = PROBLEMS[problem][0]
    designer = make_designer(make_spec(problem, algorithm, budget), seed)
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


def seconds_at_100(algorithm: Algorithm) -> float:
    spec = make_spec("hartmann6", algorithm, 200)
    rng = np.random.default_rng(0)
    trials = []
    for i in range(100):
        values = {f"x{j}": float(v) for j, v in enumerate(rng.random(6))}
        trials.append(Trial(i, values, TrialStatus.COMPLETED, objective=hartmann6(values)))
    designer = make_designer(spec, 0)
    designer.update(trials, [])
    start = time.perf_counter()
    designer.suggest(1)
    return time.perf_counter() - start


def first_reaching(curve: list[float], value: float) -> int | None:
    for i, v in enumerate(curve):
        if v <= value + 1e-12:
            return i + 1
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget-branin", type=int, default=60)
    parser.add_argument("--budget-hartmann", type=int, default=100)
    parser.add_argument("--random-factor", type=int, default=20)
    parser.add_argument("--problems", default="branin,hartmann6")
    args = parser.parse_args()
    budgets = {"branin": args.budget_branin, "hartmann6": args.budget_hartmann}
    rows = []
    for problem in args.problems.split(","):
        _, _, optimum, tol = PROBLEMS[problem]
        budget = budgets[problem]
        long_random = {s: run(problem, Algorithm.RANDOM_SEARCH, budget * args.random_factor, s)[0]
                       for s in range(args.seeds)}
        for name, algorithm in ALGORITHMS.items():
            hits, regrets, effs, secs, capped = [], [], [], [], False
            for seed in range(args.seeds):
                curve, sec = run(problem, algorithm, budget, seed)
                hit = first_reaching(curve, optimum + tol)
                hits.append(hit if hit is not None else math.inf)
                regrets.append(curve[-1] - optimum)
                needed = first_reaching(long_random[seed], curve[-1])
                if needed is None:
                    needed, capped = len(long_random[seed]), True
                effs.append(math.log(needed / budget))
                secs.append(sec)
                print(f"  {problem} {name} seed {seed}: to target {hit}, regret {curve[-1] - optimum:.4g}",
                      file=sys.stderr, flush=True)
            median_hits = statistics.median(hits)
            rows.append((problem, name, f">{budget}" if math.isinf(median_hits) else f"{median_hits:g}",
                         f"{statistics.median(regrets):.3g}",
                         ("≥" if capped else "") + f"{statistics.median(effs):.2f}",
                         f"{statistics.mean(secs):.3f}"))
    at100 = {name: seconds_at_100(a) for name, a in ALGORITHMS.items()}
    header = ("problem", "algorithm", "to target", "regret@N", "log-eff", "s/suggest", "s@100")
    table = [header] + [r + (f"{at100[r[1]]:.3f}",) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    print(f"seeds={args.seeds} budgets={budgets}")
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
