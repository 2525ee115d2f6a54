"""Gaussian-process regression in numpy for the GP bandit: an ARD Matern 5/2 kernel with white noise, its
marginal-likelihood fit, the posterior, and expected improvement with gradients.

The model is the one scikit-learn builds from ``ConstantKernel * Matern(nu=2.5) + WhiteKernel`` with
``normalize_y=True`` (tests check the two agree). It is written out here because the acquisition optimiser
calls the posterior thousands of times on small inputs, and scikit-learn's per-call validation and its
``n x n x D`` gradient tensor made one suggestion cost seconds at a hundred trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Hyperparameters", "Posterior", "expected_improvement", "fit_hyperparameters",
           "log_marginal_likelihood", "log_prior",
           "pairwise_sq_diff"]

_SQRT5 = math.sqrt(5.0)
# scikit-learn's default ``alpha``: added to the diagonal on top of the fitted noise.
_JITTER = 1e-10


@dataclass(frozen=True)
class Hyperparameters:
    """Kernel ``amplitude * Matern52(length_scale) + noise * I``, on the normalised objective scale."""

    amplitude: float
    length_scale: np.ndarray
    noise: float

    @property
    def theta(self) -> np.ndarray:
        """Natural logarithms in scikit-learn's order: amplitude, length scales, noise."""
        return np.log(np.concatenate([[self.amplitude], self.length_scale, [self.noise]]))

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> Hyperparameters:
        """Inverse of :attr:`theta`."""
        values = np.exp(np.asarray(theta, dtype=float))
        return cls(float(values[0]), values[1:-1].copy(), float(values[-1]))

    @classmethod
    def from_sklearn(cls, kernel) -> Hyperparameters:
        """From a fitted ``ConstantKernel * Matern(nu=2.5) + WhiteKernel``."""
        length_scale = np.atleast_1d(np.asarray(kernel.k1.k2.length_scale, dtype=float))
        return cls(float(kernel.k1.k1.constant_value), length_scale, float(kernel.k2.noise_level))


def _scaled_sq_dist(a: np.ndarray, b: np.ndarray, length_scale: np.ndarray) -> np.ndarray:
    d = (a[:, None, :] - b[None, :, :]) / length_scale
    return (d * d).sum(-1)


def _matern52(sq_dist: np.ndarray, amplitude: float) -> np.ndarray:
    s = _SQRT5 * np.sqrt(np.maximum(sq_dist, 0.0))
    return amplitude * (1.0 + s + s * s / 3.0) * np.exp(-s)


def _cholesky(k: np.ndarray) -> np.ndarray:
    # Near-duplicate inputs with a tiny fitted noise can leave K numerically indefinite; grow the jitter
    # rather than fail the suggestion.
    jitter = 0.0
    for _ in range(8):
        try:
            return np.linalg.cholesky(k + jitter * np.eye(len(k)))
        except np.linalg.LinAlgError:
            jitter = max(jitter * 10.0, 1e-8 * float(np.mean(np.diag(k))))
    raise np.linalg.LinAlgError("kernel matrix is not positive definite even with added jitter")


def _normalise(y: np.ndarray) -> tuple[float, float]:
    std = float(np.std(y))
    return float(np.mean(y)), (std if std > 0.0 else 1.0)


def pairwise_sq_diff(x: np.ndarray) -> np.ndarray:
    """Squared coordinate differences of every pair of rows, ``(n * n, D)``: computed once per fit, so each
    likelihood evaluation only needs a matrix-vector product to rescale them."""
    d = x[:, None, :] - x[None, :, :]
    return (d * d).reshape(-1, x.shape[1])


def log_marginal_likelihood(theta: np.ndarray, x: np.ndarray, y_normalised: np.ndarray, *,
                            sq_diff: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Log marginal likelihood of already-normalised targets and its gradient with respect to ``theta``.

    ``sq_diff`` is :func:`pairwise_sq_diff` of ``x``, when the caller evaluates many ``theta``.
    """
    from scipy.linalg import lapack

    hp = Hyperparameters.from_theta(theta)
    n = len(x)
    if sq_diff is None:
        sq_diff = pairwise_sq_diff(x)
    inv_sq_ls = 1.0 / (hp.length_scale * hp.length_scale)
    s = _SQRT5 * np.sqrt(np.maximum(sq_diff @ inv_sq_ls, 0.0)).reshape(n, n)
    e = np.exp(-s)
    k_matern = hp.amplitude * (1.0 + s + s * s / 3.0) * e
    k = k_matern + (hp.noise + _JITTER) * np.eye(n)
    chol, info = lapack.dpotrf(k, lower=True, clean=True)
    if info != 0:
        return -np.inf, np.zeros_like(theta)
    alpha, _ = lapack.dpotrs(chol, y_normalised, lower=True)
    lml = -0.5 * float(y_normalised @ alpha) - float(np.log(np.diag(chol)).sum()) - 0.5 * n * math.log(2 * math.pi)
    k_inv, _ = lapack.dpotri(chol, lower=True)
    # dpotri fills one triangle only.
    k_inv = np.tril(k_inv) + np.tril(k_inv, -1).T
    w = np.outer(alpha, alpha) - k_inv
    # dK/dlog(l_j) = amplitude * 5/3 * (1 + s) * exp(-s) * (x_j - x'_j)^2 / l_j^2, finite at s = 0.
    g = hp.amplitude * (5.0 / 3.0) * (1.0 + s) * e
    grad = np.empty(len(theta), dtype=float)
    grad[0] = 0.5 * float((w * k_matern).sum())
    grad[1:-1] = 0.5 * ((w * g).ravel() @ sq_diff) * inv_sq_ls
    grad[-1] = 0.5 * hp.noise * float(np.trace(w))
    return lml, grad


#: Bounds of ``theta`` (natural logarithms) for amplitude, each length scale and noise.
AMPLITUDE_BOUNDS = (1e-2, 1e2)
LENGTH_SCALE_BOUNDS = (1e-2, 2e1)
NOISE_BOUNDS = (1e-8, 1e-1)


# Log-normal priors (mean and standard deviation of the logarithm) that make the fit a MAP estimate. With
# a few dozen points, maximum likelihood alone often explains the best trial as a spike: a length scale at
# its lower bound or a huge amplitude, after which expected improvement creeps along in tiny steps.
_LENGTH_SCALE_PRIOR = (math.log(0.5), 1.5)
_AMPLITUDE_PRIOR_SD = 1.5


def log_prior(theta: np.ndarray) -> tuple[float, np.ndarray]:
    """Log density (up to a constant) of the priors at ``theta`` and its gradient; the noise is unpenalised."""
    dim = len(theta) - 2
    mean = np.concatenate([[0.0], np.full(dim, _LENGTH_SCALE_PRIOR[0]), [0.0]])
    precision = np.concatenate([[_AMPLITUDE_PRIOR_SD ** -2], np.full(dim, _LENGTH_SCALE_PRIOR[1] ** -2), [0.0]])
    offset = np.asarray(theta, dtype=float) - mean
    return -0.5 * float(precision @ (offset * offset)), -precision * offset


def fit_hyperparameters(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *,
                        initial: Hyperparameters | None = None, restarts: int = 2,
                        max_iterations: int = 200) -> Hyperparameters:
    """Hyperparameters for targets ``y`` (normalised here): maximum marginal likelihood under weak
    log-normal priors on the amplitude and the length scales.

    Starts from ``initial`` (the previous fit, when there is one), from a neutral default, and from
    ``restarts`` log-uniform random points within the bounds; the best optimum wins.
    """
    from scipy.optimize import minimize

    mean, std = _normalise(y)
    y_n = (y - mean) / std
    dim = x.shape[1]
    bounds = np.log([AMPLITUDE_BOUNDS] + [LENGTH_SCALE_BOUNDS] * dim + [NOISE_BOUNDS])
    starts = [Hyperparameters(1.0, np.full(dim, 0.5), 1e-4).theta]
    if initial is not None and len(initial.length_scale) == dim:
        starts.insert(0, np.clip(initial.theta, bounds[:, 0], bounds[:, 1]))
    for _ in range(restarts):
        # Random starts away from the length-scale extremes, where the likelihood surface is flat.
        lo, hi = bounds[:, 0].copy(), bounds[:, 1].copy()
        lo[1:-1], hi[1:-1] = math.log(0.05), math.log(2.0)
        starts.append(rng.uniform(lo, hi))

    sq_diff = pairwise_sq_diff(x)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        lml, grad = log_marginal_likelihood(theta, x, y_n, sq_diff=sq_diff)
        if not math.isfinite(lml):
            return 1e25, np.zeros_like(theta)
        prior, prior_grad = log_prior(theta)
        return -(lml + prior), -(grad + prior_grad)

    best_theta, best_value = starts[0], math.inf
    for theta0 in starts:
        result = minimize(objective, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": max_iterations})
        if result.fun < best_value:
            best_theta, best_value = result.x, float(result.fun)
    return Hyperparameters.from_theta(best_theta)


class Posterior:
    """GP posterior at fixed hyperparameters, targets normalised to zero mean and unit variance.

    ``predict`` gives the latent function by default: the fitted white noise describes how observations
    scatter, not how uncertain the function is, so acquisition functions must not see it (scikit-learn's
    ``predict(return_std=True)`` includes it; ``observation_noise=True`` reproduces that).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, hp: Hyperparameters):
        from scipy.linalg import cho_solve, solve_triangular

        self.x = np.asarray(x, dtype=float)
        self.y = np.asarray(y, dtype=float)
        self.hp = hp
        self.y_mean, self.y_std = _normalise(self.y)
        k = _matern52(_scaled_sq_dist(self.x, self.x, hp.length_scale), hp.amplitude)
        chol = _cholesky(k + (hp.noise + _JITTER) * np.eye(len(self.x)))
        self._alpha = cho_solve((chol, True), (self.y - self.y_mean) / self.y_std, check_finite=False)
        # Multiplying by L^-1 is cheaper per call than a triangular solve and as accurate here.
        self._chol_inv = solve_triangular(chol, np.eye(len(self.x)), lower=True, check_finite=False)

    def condition(self, x_new: np.ndarray, y_new: np.ndarray) -> Posterior:
        """The posterior with more observations, same hyperparameters."""
        return Posterior(np.vstack([self.x, x_new]), np.concatenate([self.y, y_new]), self.hp)

    def predict(self, x: np.ndarray, *, observation_noise: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at the rows of ``x``."""
        k = _matern52(_scaled_sq_dist(x, self.x, self.hp.length_scale), self.hp.amplitude)
        v = self._chol_inv @ k.T
        var = self.hp.amplitude - (v * v).sum(0)
        if observation_noise:
            var = var + self.hp.noise
        sd = np.sqrt(np.maximum(var, 1e-20))
        return self.y_mean + self.y_std * (k @ self._alpha), self.y_std * sd

    def predict_with_gradient(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Latent mean and standard deviation at the rows of ``x`` and their gradients (``(m, D)`` each)."""
        ls = self.hp.length_scale
        diff = x[:, None, :] - self.x[None, :, :]
        scaled = diff / ls
        s = _SQRT5 * np.sqrt(np.maximum((scaled * scaled).sum(-1), 0.0))
        e = np.exp(-s)
        k = self.hp.amplitude * (1.0 + s + s * s / 3.0) * e
        # dk/dx = -amplitude * 5/3 * (1 + s) * exp(-s) * (x - x_i) / l^2
        dk = -(self.hp.amplitude * (5.0 / 3.0) * (1.0 + s) * e)[:, :, None] * diff / (ls * ls)
        v = self._chol_inv @ k.T
        var = np.maximum(self.hp.amplitude - (v * v).sum(0), 1e-20)
        sd = np.sqrt(var)
        k_inv_k = self._chol_inv.T @ v
        d_mean = np.einsum("mnd,n->md", dk, self._alpha)
        d_var = -2.0 * np.einsum("nm,mnd->md", k_inv_k, dk)
        d_sd = d_var / (2.0 * sd[:, None])
        return (self.y_mean + self.y_std * (k @ self._alpha), self.y_std * sd,
                self.y_std * d_mean, self.y_std * d_sd)


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float, xi: float = 0.0,
                         d_mean: np.ndarray | None = None, d_sd: np.ndarray | None = None):
    """Expected improvement over ``best + xi`` of a maximised objective; with ``d_mean`` and ``d_sd``, also
    its gradient (``(m, D)``)."""
    from scipy.special import ndtr

    sd = np.maximum(sd, 1e-12)
    z = (mean - best - xi) / sd
    cdf, pdf = ndtr(z), np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    ei = (mean - best - xi) * cdf + sd * pdf
    if d_mean is None or d_sd is None:
        return ei
    return ei, cdf[:, None] * d_mean + pdf[:, None] * d_sd
