"""The numpy GP behind the GP bandit agrees with scikit-learn and has correct gradients."""

import warnings

import numpy as np
import pytest

from tuners.algorithms.gaussian_process import (
    Hyperparameters,
    Posterior,
    expected_improvement,
    fit_hyperparameters,
    log_marginal_likelihood,
    log_prior,
)

sklearn_gp = pytest.importorskip("sklearn.gaussian_process")
kernels = pytest.importorskip("sklearn.gaussian_process.kernels")


def _data(seed: int, n: int = 25, dim: int = 3, noise: float = 0.0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, dim))
    # An offset and scale far from 0 and 1, so that forgetting to undo normalize_y would show.
    y = 40.0 + 7.0 * np.sin(4.0 * x).sum(1) + noise * rng.normal(size=n)
    return rng, x, y, rng.random((40, dim))


def _sklearn_fit(x, y, noise_bounds=(1e-8, 1e-1)):
    kernel = (kernels.ConstantKernel(1.0, (1e-2, 1e2))
              * kernels.Matern(np.full(x.shape[1], 0.5), (1e-2, 2e1), nu=2.5)
              + kernels.WhiteKernel(1e-3, noise_bounds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bounds reached on tiny data sets
        return sklearn_gp.GaussianProcessRegressor(kernel, normalize_y=True, random_state=0).fit(x, y)


@pytest.mark.parametrize("seed,noise", [(0, 0.0), (1, 2.0), (2, 5.0)])
def test_posterior_matches_sklearn_predict(seed, noise):
    _, x, y, x_test = _data(seed, noise=noise)
    gp = _sklearn_fit(x, y)
    hp = Hyperparameters.from_sklearn(gp.kernel_)
    if noise:
        assert hp.noise > 1e-4, "the data should need a fitted noise for this case to test anything"
    post = Posterior(x, y, hp)
    # With observation noise: exactly what scikit-learn's predict returns.
    mean, sd = gp.predict(x_test, return_std=True)
    our_mean, our_sd = post.predict(x_test, observation_noise=True)
    np.testing.assert_allclose(our_mean, mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(our_sd, sd, rtol=0, atol=1e-6)
    # Without it (what acquisition uses): the noiseless kernel with the noise as alpha, i.e. the latent
    # function; its spread at a training point must drop below the noise level.
    latent = sklearn_gp.GaussianProcessRegressor(gp.kernel_.k1, alpha=hp.noise + 1e-10, normalize_y=True,
                                                 optimizer=None).fit(x, y)
    mean, sd = latent.predict(x_test, return_std=True)
    our_mean, our_sd = post.predict(x_test)
    np.testing.assert_allclose(our_mean, mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(our_sd, sd, rtol=0, atol=1e-6)


def test_posterior_interpolates_noise_free_data():
    _, x, y, _ = _data(3)
    post = Posterior(x, y, Hyperparameters(1.0, np.full(3, 0.4), 1e-8))
    mean, sd = post.predict(x)
    np.testing.assert_allclose(mean, y, atol=1e-4)
    assert sd.max() < 1e-2 * y.std()


def test_log_marginal_likelihood_matches_sklearn():
    rng, x, y, _ = _data(4, noise=1.0)
    y_n = (y - y.mean()) / y.std()
    gp = _sklearn_fit(x, y_n)
    for _ in range(3):
        theta = gp.kernel_.theta + rng.normal(scale=0.5, size=len(gp.kernel_.theta))
        expected, expected_grad = gp.log_marginal_likelihood(theta, eval_gradient=True)
        value, grad = log_marginal_likelihood(theta, x, y_n)
        assert value == pytest.approx(expected, rel=1e-8)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-8)


def test_fit_is_at_least_as_good_as_sklearns_optimum():
    rng, x, y, _ = _data(5, noise=1.0)
    gp = _sklearn_fit(x, y)
    hp = fit_hyperparameters(x, y, rng)
    y_n = (y - y.mean()) / y.std()

    def posterior_density(theta):
        return log_marginal_likelihood(theta, x, y_n)[0] + log_prior(theta)[0]

    assert posterior_density(hp.theta) >= posterior_density(gp.kernel_.theta) - 1e-6
    # The priors are weak: the likelihood stays close to the unpenalised optimum.
    assert log_marginal_likelihood(hp.theta, x, y_n)[0] >= gp.log_marginal_likelihood_value_ - 1.0


def test_gradients_match_finite_differences():
    rng, x, y, x_test = _data(6, noise=0.5)
    post = Posterior(x, y, Hyperparameters(1.3, np.array([0.3, 0.6, 1.1]), 1e-3))
    points = x_test[:5]
    mean, sd, d_mean, d_sd = post.predict_with_gradient(points)
    best = float(y.max())
    ei, d_ei = expected_improvement(mean, sd, best, 0.01, d_mean, d_sd)
    np.testing.assert_allclose((mean, sd), post.predict(points), atol=1e-10)
    step = 1e-6
    for j in range(x.shape[1]):
        shifted = points.copy()
        shifted[:, j] += step
        mean2, sd2 = post.predict(shifted)
        np.testing.assert_allclose((mean2 - mean) / step, d_mean[:, j], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose((sd2 - sd) / step, d_sd[:, j], rtol=1e-3, atol=1e-4)
        ei2 = expected_improvement(mean2, sd2, best, 0.01)
        np.testing.assert_allclose((ei2 - ei) / step, d_ei[:, j], rtol=1e-3, atol=1e-4)


def test_condition_equals_fitting_on_all_points():
    _, x, y, x_test = _data(7)
    hp = Hyperparameters(1.0, np.full(3, 0.5), 1e-4)
    grown = Posterior(x[:15], y[:15], hp).condition(x[15:], y[15:])
    np.testing.assert_allclose(grown.predict(x_test), Posterior(x, y, hp).predict(x_test), atol=1e-10)
