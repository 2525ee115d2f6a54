import importlib.util

import pytest

from tuners.testing import MIXED, BasicDesignerTestCase, run, score
from tuners import (
    AlgorithmUnavailableError,
    GaussianProcessBandit,
    GridDesigner,
    QuasiRandomDesigner,
    RandomDesigner,
    StudySpec,
    TPEDesigner,
    VizierDesigner,
    make_designer,
)
from tuners.study_spec import Algorithm


class TestRandom(BasicDesignerTestCase):
    def make(self, spec, seed):
        return RandomDesigner(spec, seed)


class TestQuasiRandom(BasicDesignerTestCase):
    def make(self, spec, seed):
        return QuasiRandomDesigner(spec, seed)


class TestGrid(BasicDesignerTestCase):
    enumerates = True

    def make(self, spec, seed):
        return GridDesigner(spec, seed)


class TestGaussianProcessBandit(BasicDesignerTestCase):
    def make(self, spec, seed):
        return GaussianProcessBandit(spec, seed, num_candidates=200, num_refine=1, fit_restarts=0)


class TestTPE(BasicDesignerTestCase):
    def make(self, spec, seed):
        return TPEDesigner(spec, seed, n_startup_trials=5)


@pytest.mark.skipif(importlib.util.find_spec("vizier") is None, reason="OSS Vizier not installed")
class TestVizier(BasicDesignerTestCase):
    def make(self, spec, seed):
        return VizierDesigner(spec, seed)


def test_vizier_missing_names_the_install_command():
    if importlib.util.find_spec("vizier") is not None:
        pytest.skip("OSS Vizier is installed")
    with pytest.raises(AlgorithmUnavailableError, match=r"pip install google-vizier\[jax\]"):
        make_designer(StudySpec.from_dict({**MIXED, "algorithm": "VIZIER"}))


def test_unspecified_algorithm_is_the_gp_bandit():
    assert isinstance(make_designer(StudySpec.from_dict(MIXED)), GaussianProcessBandit)
    assert Algorithm.ALGORITHM_UNSPECIFIED.resolved() is Algorithm.GAUSSIAN_PROCESS_BANDIT


def test_grid_covers_every_categorical_value_and_both_bounds():
    spec = StudySpec.from_dict({"metric": {"tag": "y"}, "max_trials": 100, "parameters": [
        {"name": "x", "type": "DOUBLE", "min": 1e-3, "max": 10.0, "scale": "log"},
        {"name": "c", "type": "CATEGORICAL", "values": ["a", "b"]}]})
    points = GridDesigner(spec).suggest(1000)
    xs = sorted({p["x"] for p in points})
    assert {p["c"] for p in points} == {"a", "b"}
    assert xs[0] == pytest.approx(1e-3) and xs[-1] == pytest.approx(10.0)
    assert len(points) == len(xs) * 2


@pytest.mark.slow
def test_gp_bandit_beats_random_on_a_smooth_objective():
    spec = StudySpec.from_dict(MIXED)
    best = lambda trials: max(t.objective for t in trials if t.objective is not None)  # noqa: E731
    seeds = range(4)
    gp = [best(run(GaussianProcessBandit(spec, s, num_candidates=500), 20)) for s in seeds]
    rnd = [best(run(RandomDesigner(spec, s), 20)) for s in seeds]
    # One seed may settle on a worse categorical choice; most must not.
    assert sum(g > r for g, r in zip(gp, rnd)) >= 3, (gp, rnd)
    optimum = score({"lr": 0.01, "units": 40, "batch": 32, "optimizer": "adam"})
    assert sorted(gp)[len(gp) // 2] > optimum - 0.3, gp
