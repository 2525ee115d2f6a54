"""GAUSSIAN_PROCESS_BANDIT: Bayesian optimisation with a Gaussian process and expected improvement (the
default algorithm)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from tuners.algorithms.base import Designer
from tuners.algorithms.gaussian_process import Hyperparameters, Posterior, expected_improvement, fit_hyperparameters
from tuners.algorithms.random_search import QuasiRandomDesigner
from tuners.search_space import UnitCodec, point_key
from tuners.study_spec import StudySpec

__all__ = ["GaussianProcessBandit"]

# Trust-region radii (in the unit cube, before per-dimension length-scale shaping) of the local candidates:
# wide enough to hop between nearby basins, narrow enough to settle an optimum to a few digits.
_LOCAL_RADII = (0.2, 0.05, 0.01, 0.002)


def _single_threaded_blas():
    """BLAS limited to one thread: the matrices here are at most a few hundred wide, where threads cost
    more than they save, and much more when other processes share the cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class GaussianProcessBandit(Designer):
    """Bayesian optimisation: a GP surrogate and expected improvement.

    * The first ``num_initial`` trials come from a scrambled Halton sequence.
    * Inputs are the scaled unit cube (log scales in the logarithm), CATEGORICAL parameters one-hot encoded.
    * Objectives are turned into a maximisation and warped with ``-log(gap to the best + warp_delta)``
      (gap as a fraction of the observed range): this keeps a few very bad trials from flattening the
      surrogate near the optimum (objectives such as loss or error often span decades).
      ``warp_delta`` sets how hard: at 1e-3 the best trial becomes a spike the GP climbs in tiny steps
      (it got stuck on Hartmann6's local optimum and on categorical choices); 0.2 still resolves Branin's
      optimum to 0.01.
    * The GP is ``amplitude * Matern(5/2, one length scale per dimension) + white noise``; hyperparameters
      maximise the marginal likelihood under weak log-normal priors (no collapsed length scales) from the
      previous fit, a default, and ``fit_restarts`` random starts.
    * Expected improvement (latent posterior, margin ``xi`` in units of the warped objective's spread) is
      maximised over uniform random points of the whole space plus a trust region of Gaussian perturbations
      around the best trials, shaped by the fitted length scales; the ``num_refine`` best candidates and
      the incumbent are then polished with L-BFGS-B on the continuous dimensions using exact gradients.
    * A batch is made distinct with the kriging believer: each chosen point (and each running trial) is
      added to the GP with its predicted mean before choosing the next.
    * FAILED trials are never suggested again and count as the worst value seen, steering away from them.

    Args:
        spec: the study.
        seed: seeds every random choice.
        num_initial: quasi-random trials before the GP takes over (default ``max(4, dims + 2)``).
        num_candidates: points scored per suggestion before refinement (half global, half local).
        num_refine: candidates refined by gradient ascent.
        fit_restarts: random restarts of the hyperparameter fit.
        xi: expected-improvement margin, as a fraction of the standard deviation of the warped objective.
        warp_delta: offset of the output warping; smaller values magnify differences near the best.
    """

    def __init__(self, spec: StudySpec, seed: int = 0, *, num_initial: int | None = None,
                 num_candidates: int = 2000, num_refine: int = 5, fit_restarts: int = 2, xi: float = 0.001,
                 warp_delta: float = 0.2):
        super().__init__(spec, seed)
        for name, value, least in (("num_candidates", num_candidates, 1), ("num_refine", num_refine, 0),
                                   ("fit_restarts", fit_restarts, 0)):
            if value < least:
                raise ValueError(f"`{name}` must be >= {least}, but got {name}={value}.")
        if not warp_delta > 0:
            raise ValueError(f"`warp_delta` must be > 0, but got warp_delta={warp_delta}.")
        self._codec = UnitCodec(spec, one_hot=True)
        self._initial = QuasiRandomDesigner(spec, seed)
        self._rng = np.random.default_rng(seed)
        dims = len(spec.all_parameters())
        self.num_initial = num_initial if num_initial is not None else max(4, dims + 2)
        self.num_candidates = num_candidates
        self.num_refine = num_refine
        self.fit_restarts = fit_restarts
        self.xi = xi
        self.warp_delta = warp_delta
        self._hyperparameters: Hyperparameters | None = None

    def update(self, completed, active=()) -> None:
        """Record finished and running trials (see :class:`~tuners.algorithms.Designer`)."""
        super().update(completed, active)
        self._initial.update(completed, active)

    # -- model ----------------------------------------------------------------------------------------
    def _warp(self, y: np.ndarray) -> np.ndarray:
        best, worst = float(y.max()), float(y.min())
        gap = (best - y) / (best - worst if best > worst else 1.0)
        return -np.log(gap + self.warp_delta)

    # -- acquisition ----------------------------------------------------------------------------------
    def _candidates(self, post: Posterior, x_obs: np.ndarray, y_obs: np.ndarray) -> np.ndarray:
        n_global = self.num_candidates // 2
        n_local = self.num_candidates - n_global
        order = np.argsort(-y_obs)
        # Most local candidates surround the incumbent; the rest the runners-up, in case it is a narrow spike.
        top = x_obs[order[: max(1, min(5, len(y_obs)))]]
        centre = np.where(self._rng.random(n_local) < 0.7, 0, self._rng.integers(0, len(top), n_local))
        local = top[centre].copy()
        dims = self._codec.continuous_dims
        if len(dims):
            # Shape the region like the GP does: wider along dimensions the objective varies slowly in.
            ls = post.hp.length_scale[dims]
            shape = np.clip(ls / math.exp(float(np.mean(np.log(ls)))), 0.2, 5.0)
            radii = self._rng.choice(_LOCAL_RADII, size=(n_local, 1))
            local[:, dims] += self._rng.normal(size=(n_local, len(dims))) * radii * shape
        # Re-draw some one-hot blocks so categorical neighbours are explored too.
        resample = self._codec.random(self._rng, n_local)
        mask = self._rng.random(n_local) < 0.2
        for s in self._codec.slices:
            if s.stop - s.start > 1:
                local[mask, s] = resample[mask, s]
        return np.clip(np.vstack([self._codec.random(self._rng, n_global), local]), 0.0, 1.0)

    def _refine(self, post: Posterior, start: np.ndarray, best: float, xi: float) -> tuple[np.ndarray, float]:
        from scipy.optimize import minimize

        dims = self._codec.continuous_dims

        def negative_ei(z: np.ndarray) -> tuple[float, np.ndarray]:
            point = start.copy()
            point[dims] = z
            mean, sd, d_mean, d_sd = post.predict_with_gradient(point[None, :])
            ei, grad = expected_improvement(mean, sd, best, xi, d_mean, d_sd)
            return -float(ei[0]), -grad[0, dims]

        result = minimize(negative_ei, start[dims], jac=True, method="L-BFGS-B",
                          bounds=[(0.0, 1.0)] * len(dims), options={"maxiter": 50})
        refined = start.copy()
        refined[dims] = np.clip(result.x, 0.0, 1.0)
        return refined, -float(result.fun)

    def _choose(self, post: Posterior, x_obs: np.ndarray, y_obs: np.ndarray, seen: set) -> dict[str, Any] | None:
        # The incumbent is the best posterior mean at a tried point: with a noisy fit, the best raw value
        # is partly luck, and improving on it would look harder than it is.
        best = float(post.predict(x_obs)[0].max())
        xi = self.xi * float(np.std(y_obs) or 1.0)
        cand = self._candidates(post, x_obs, y_obs)
        ei = expected_improvement(*post.predict(cand), best, xi)
        order = np.argsort(-ei)
        ranked: list[tuple[float, np.ndarray]] = []
        if len(self._codec.continuous_dims):
            starts = [cand[i] for i in order[: self.num_refine]]
            if self.num_refine:
                starts.append(x_obs[int(np.argmax(y_obs))])
            ranked = [self._refine(post, s, best, xi)[::-1] for s in starts]
            ranked.sort(key=lambda item: -item[0])
        for x in [r[1] for r in ranked] + [cand[i] for i in order]:
            values = self._codec.decode(x)
            if point_key(values) not in seen:
                return values
        return None

    def suggest(self, count: int = 1) -> list[dict[str, Any]]:
        """Up to ``count`` distinct assignments maximising expected improvement."""
        observed = list(self._observed.values())
        if len(observed) < self.num_initial:
            return self._initial.suggest(count)
        with _single_threaded_blas():
            return self._suggest(observed, count)

    def _suggest(self, observed, count: int) -> list[dict[str, Any]]:
        x = np.array([self._codec.encode(t.parameters) for t in observed])
        y = np.array([self._maximised(t) for t in observed])
        if self._failed:
            x = np.vstack([x, [self._codec.encode(t.parameters) for t in self._failed.values()]])
            y = np.concatenate([y, np.full(len(self._failed), y.min())])
        y_warped = self._warp(y)
        self._hyperparameters = fit_hyperparameters(x, y_warped, self._rng, initial=self._hyperparameters,
                                                    restarts=self.fit_restarts)
        post = Posterior(x, y_warped, self._hyperparameters)
        if self._active:
            pending = np.array([self._codec.encode(t.parameters) for t in self._active])
            post = post.condition(pending, post.predict(pending)[0])
        seen = self._seen_keys()
        out: list[dict[str, Any]] = []
        for _ in range(count):
            values = self._choose(post, x, y_warped, seen)
            if values is None:
                values = next(iter(self._initial.suggest(1)), None)
                if values is None or point_key(values) in seen:
                    break
            out.append(values)
            seen.add(point_key(values))
            chosen = self._codec.encode(values)[None, :]
            post = post.condition(chosen, post.predict(chosen)[0])
        return out
