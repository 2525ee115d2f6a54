"""GAUSSIAN_PROCESS_BANDIT: Bayesian optimisation with a scikit-learn Gaussian process (the default)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from tuners.algorithms.base import Designer
from tuners.algorithms.random_search import QuasiRandomDesigner
from tuners.search_space import UnitCodec, point_key
from tuners.study_spec import StudySpec

__all__ = ["GaussianProcessBandit"]


def _expected_improvement(mu: np.ndarray, sd: np.ndarray, best: float, xi: float) -> np.ndarray:
    from scipy.special import ndtr

    sd = np.maximum(sd, 1e-12)
    z = (mu - best - xi) / sd
    return (mu - best - xi) * ndtr(z) + sd * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


class _Posterior:
    """GP posterior with fixed hyperparameters, computed with plain numpy.

    scikit-learn fits the hyperparameters; predicting through it costs milliseconds of checks per call,
    which dominates when the acquisition optimiser needs hundreds of small predictions.
    """

    def __init__(self, fitted_kernel, x: np.ndarray, y: np.ndarray):
        from scipy.linalg import cho_factor, cho_solve

        self.amplitude = float(fitted_kernel.k1.k1.constant_value)
        self.length_scale = np.asarray(fitted_kernel.k1.k2.length_scale, dtype=float)
        noise = float(fitted_kernel.k2.noise_level)
        self.x = x
        self.mean, self.std = float(y.mean()), float(y.std() or 1.0)
        k = self._k(x, x) + (noise + 1e-9) * np.eye(len(x))
        factor = cho_factor(k, lower=True)
        self.alpha = cho_solve(factor, (y - self.mean) / self.std)
        self.k_inv = cho_solve(factor, np.eye(len(x)))

    def _k(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a[:, None, :] - b[None, :, :]) / self.length_scale
        r = np.sqrt(np.maximum((d * d).sum(-1), 0.0)) * math.sqrt(5.0)
        return self.amplitude * (1.0 + r + r * r / 3.0) * np.exp(-r)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at the rows of ``x``."""
        k = self._k(x, self.x)
        mu = k @ self.alpha
        var = self.amplitude - np.einsum("ij,jk,ik->i", k, self.k_inv, k)
        return self.mean + self.std * mu, self.std * np.sqrt(np.maximum(var, 1e-12))


class GaussianProcessBandit(Designer):
    """Bayesian optimisation: a GP surrogate and expected improvement.

    * The first ``num_initial`` trials come from a scrambled Halton sequence.
    * Inputs are the scaled unit cube (log scales in the logarithm), CATEGORICAL parameters one-hot encoded.
    * Objectives are turned into a maximisation and warped with ``-log(gap to the best + delta)``: this
      keeps a few very bad trials from flattening the surrogate near the optimum (objectives such as loss
      or error often span decades).
    * The GP is ``Constant * Matern(5/2, one lengthscale per dimension) + White noise``, hyperparameters fit
      by marginal likelihood, warm-started from the previous fit.
    * Expected improvement is maximised over random points plus perturbations of the best trials, and the
      most promising are refined with L-BFGS-B over the continuous dimensions.
    * A batch is made distinct with the kriging believer: each chosen point (and each running trial) is
      added to the GP with its predicted mean before choosing the next.
    * FAILED trials are never suggested again and count as the worst value seen, steering away from them.
    """

    def __init__(self, spec: StudySpec, seed: int = 0, *, num_initial: int | None = None,
                 num_candidates: int = 2000, num_refine: int = 4, xi: float = 0.001, warp_delta: float = 1e-3):
        super().__init__(spec, seed)
        self._codec = UnitCodec(spec, one_hot=True)
        self._initial = QuasiRandomDesigner(spec, seed)
        self._rng = np.random.default_rng(seed)
        dims = len(spec.all_parameters())
        self.num_initial = num_initial if num_initial is not None else max(4, dims + 2)
        self.num_candidates = num_candidates
        self.num_refine = num_refine
        self.xi = xi
        self.warp_delta = warp_delta
        self._theta: np.ndarray | None = None

    def update(self, completed, active=()) -> None:
        """Record finished and running trials (see :class:`~tuners.algorithms.Designer`)."""
        super().update(completed, active)
        self._initial.update(completed, active)

    # -- model ----------------------------------------------------------------------------------------
    def _warp(self, y: np.ndarray) -> np.ndarray:
        best, worst = float(y.max()), float(y.min())
        gap = (best - y) / (best - worst if best > worst else 1.0)
        return -np.log(gap + self.warp_delta)

    def _kernel(self, dim: int):
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        return (ConstantKernel(1.0, (1e-2, 1e2))
                * Matern(length_scale=np.full(dim, 0.5), length_scale_bounds=(1e-2, 2e1), nu=2.5)
                + WhiteKernel(1e-3, (1e-8, 1e-1)))

    def _fit(self, x: np.ndarray, y: np.ndarray, *, optimise: bool = True):
        from sklearn.gaussian_process import GaussianProcessRegressor

        kernel = self._kernel(x.shape[1])
        if self._theta is not None:
            kernel = kernel.clone_with_theta(self._theta)
        gp = GaussianProcessRegressor(
            kernel, normalize_y=True, optimizer="fmin_l_bfgs_b" if optimise else None,
            n_restarts_optimizer=1 if optimise else 0, random_state=int(self._rng.integers(2**31)))
        with warnings.catch_warnings():
            # Lengthscales at their bounds are expected on flat or tiny data sets.
            warnings.simplefilter("ignore")
            gp.fit(x, y)
        if optimise:
            self._theta = gp.kernel_.theta
        return gp

    # -- acquisition ----------------------------------------------------------------------------------
    def _candidates(self, x_obs: np.ndarray, y_obs: np.ndarray) -> np.ndarray:
        n_global = self.num_candidates // 2
        n_local = self.num_candidates - n_global
        top = x_obs[np.argsort(-y_obs)[: max(1, min(5, len(y_obs)))]]
        local = top[self._rng.integers(0, len(top), n_local)].copy()
        dims = self._codec.continuous_dims
        scales = self._rng.choice([0.01, 0.05, 0.15], size=(n_local, 1))
        local[:, dims] += self._rng.normal(size=(n_local, len(dims))) * scales
        # Re-draw some one-hot blocks so categorical neighbours are explored too.
        resample = self._codec.random(self._rng, n_local)
        mask = self._rng.random(n_local) < 0.2
        for p, s in zip(self._codec.params, self._codec.slices):
            if s.stop - s.start > 1:
                local[mask, s] = resample[mask, s]
        return np.clip(np.vstack([self._codec.random(self._rng, n_global), local]), 0.0, 1.0)

    def _refine(self, gp, start: np.ndarray, best: float, xi: float) -> tuple[np.ndarray, float]:
        from scipy.optimize import minimize

        dims = self._codec.continuous_dims
        if len(dims) == 0:
            return start, float("nan")
        step = 1e-5

        def negative_ei(z: np.ndarray) -> tuple[float, np.ndarray]:
            # Forward differences, all evaluated in one predict call: far cheaper than one call per point.
            pts = np.repeat(start[None, :], len(dims) + 1, axis=0)
            pts[:, dims] = z
            pts[np.arange(1, len(dims) + 1), dims] += step
            mu, sd = gp.predict(pts)
            ei = _expected_improvement(mu, sd, best, xi)
            return -float(ei[0]), -(ei[1:] - ei[0]) / step

        result = minimize(negative_ei, start[dims], jac=True, method="L-BFGS-B",
                          bounds=[(0.0, 1.0)] * len(dims), options={"maxiter": 40})
        refined = start.copy()
        refined[dims] = np.clip(result.x, 0.0, 1.0)
        return refined, -float(result.fun)

    def _choose(self, gp, x_obs: np.ndarray, y_obs: np.ndarray, seen: set) -> dict[str, Any] | None:
        best = float(y_obs.max())
        xi = self.xi * float(np.std(y_obs) or 1.0)
        cand = self._candidates(x_obs, y_obs)
        mu, sd = gp.predict(cand)
        ei = _expected_improvement(mu, sd, best, xi)
        order = np.argsort(-ei)
        ranked: list[tuple[float, np.ndarray]] = []
        for i in order[: self.num_refine]:
            refined, value = self._refine(gp, cand[i], best, xi)
            ranked.append((value if math.isfinite(value) else ei[i], refined))
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
        x = np.array([self._codec.encode(t.parameters) for t in observed])
        y = np.array([self._maximised(t) for t in observed])
        if self._failed:
            x = np.vstack([x, [self._codec.encode(t.parameters) for t in self._failed.values()]])
            y = np.concatenate([y, np.full(len(self._failed), y.min())])
        y_warped = self._warp(y)
        kernel = self._fit(x, y_warped).kernel_
        x_all, y_all = x, y_warped
        gp = _Posterior(kernel, x_all, y_all)
        if self._active:
            pending = np.array([self._codec.encode(t.parameters) for t in self._active])
            x_all = np.vstack([x_all, pending])
            y_all = np.concatenate([y_all, gp.predict(pending)[0]])
            gp = _Posterior(kernel, x_all, y_all)
        seen = self._seen_keys()
        out: list[dict[str, Any]] = []
        for _ in range(count):
            values = self._choose(gp, x, y_warped, seen)
            if values is None:
                values = next(iter(self._initial.suggest(1)), None)
                if values is None or point_key(values) in seen:
                    break
            out.append(values)
            seen.add(point_key(values))
            chosen = self._codec.encode(values)[None, :]
            x_all = np.vstack([x_all, chosen])
            y_all = np.concatenate([y_all, gp.predict(chosen)[0]])
            gp = _Posterior(kernel, x_all, y_all)
        return out
