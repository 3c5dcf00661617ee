"""The incremental GP against gpytorch's ExactGP and against a from-scratch Cholesky, on real SST-2 embeddings."""

from __future__ import annotations

import gpytorch
import numpy as np
import pytest
import torch
from scipy.linalg import cho_factor, solve_triangular

from synalign_ray.metrics import median_pairwise_distance
from synalign_ray.selection.gp import TIE_TOLERANCE, IncrementalGP, cross_kernel, lengthscale

N_ROWS = 1500
GROUP = 10


@pytest.fixture(scope="module")
def sst2(real_embeddings):
    return real_embeddings("sst2_train.parquet", N_ROWS, 0)[1]


def knn_groups(points: np.ndarray, n_groups: int, seed: int) -> list[np.ndarray]:
    """Disjoint groups: a seeded anchor plus its GROUP-1 most cosine-similar unused rows (tight, near-duplicate-rich)."""
    rng = np.random.default_rng(seed)
    free = np.ones(points.shape[0], dtype=bool)
    groups = []
    for _ in range(n_groups):
        anchor = rng.choice(np.flatnonzero(free))
        others = np.flatnonzero(free & (np.arange(points.shape[0]) != anchor))
        near = others[np.argsort(-(points[others] @ points[anchor]), kind="stable")[: GROUP - 1]]
        group = np.concatenate([[anchor], near])
        free[group] = False
        groups.append(group)
    return groups


def gpytorch_kernel(kernel: str, tau: float):
    base = gpytorch.kernels.MaternKernel(nu=0.5) if kernel == "exponential" else gpytorch.kernels.RBFKernel()
    base.lengthscale = lengthscale(kernel, tau)
    return base.double()


def exact_gp_variance(points: np.ndarray, observed: np.ndarray, kernel: str, tau: float, noise: float) -> np.ndarray:
    """gpytorch ExactGP posterior variance of the latent function, fixed hyperparameters, targets 0."""

    class ZeroMeanGP(gpytorch.models.ExactGP):
        def __init__(self, x, y, likelihood):
            super().__init__(x, y, likelihood)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch_kernel(kernel, tau)

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    x_all = torch.from_numpy(points.astype(np.float64))
    x_train = x_all[torch.from_numpy(observed)]
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    likelihood.noise = noise
    model = ZeroMeanGP(x_train, torch.zeros(len(observed), dtype=torch.float64), likelihood).double()
    model.eval()
    likelihood.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False), gpytorch.settings.max_cholesky_size(10**6):
        return model(x_all).variance.numpy()


@pytest.mark.parametrize("kernel", ["exponential", "rbf"])
def test_kernel_block_equals_gpytorch(sst2, kernel):
    tau = 0.6
    ours = cross_kernel(sst2[:40], sst2, kernel, tau)
    x = torch.from_numpy(sst2.astype(np.float64))
    with torch.no_grad():
        ref = gpytorch_kernel(kernel, tau)(x[:40], x).to_dense().numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert np.allclose(np.diag(cross_kernel(sst2[:40], sst2[:40], kernel, tau)), 1.0)


@pytest.mark.parametrize("kernel,tau,noise", [("exponential", 0.6, 1.0), ("rbf", 0.5, 0.1)])
def test_variance_equals_exact_gp_after_1_5_50_groups(sst2, kernel, tau, noise):
    gp = IncrementalGP(sst2, kernel, tau, noise)
    groups = knn_groups(sst2, 50, seed=1)
    for n_done, group in enumerate(groups, start=1):
        gp.add(group)
        if n_done in (1, 5, 50):
            reference = exact_gp_variance(sst2, gp.observed, kernel, tau, noise)
            np.testing.assert_allclose(gp.variance, reference, atol=1e-4)
    # observing a row with noise σ² leaves at most σ²/(1+σ²), the single-observation posterior; more data only lowers it
    assert gp.variance[gp.observed].max() <= noise / (1.0 + noise) + 1e-6


def test_incremental_update_equals_full_recomputation(sst2):
    kernel, tau, noise = "exponential", 0.6, 1e-2
    gp = IncrementalGP(sst2, kernel, tau, noise)
    rng = np.random.default_rng(3)
    # groups of uneven size, mixing tight kNN groups with scattered random rows
    groups = knn_groups(sst2, 12, seed=2)
    groups += [g for g in np.split(rng.permutation(np.setdiff1d(np.arange(N_ROWS), np.concatenate(groups)))[:70],
                                   [1, 8, 30])]
    for group in groups:
        gp.add(group)
    observed = gp.observed
    k_ss = cross_kernel(sst2[observed], sst2[observed], kernel, tau) + noise * np.eye(len(observed))
    chol, _ = cho_factor(k_ss, lower=True)
    v = solve_triangular(np.tril(chol), cross_kernel(sst2[observed], sst2, kernel, tau), lower=True)
    np.testing.assert_allclose(gp.variance, 1.0 - (v * v).sum(axis=0), atol=1e-5)


@pytest.mark.parametrize("kernel", ["exponential", "rbf"])
def test_duplicate_and_near_duplicate_rows_match_float64(sst2, kernel):
    # float32 ‖a‖² + ‖b‖² − 2ab would put exact duplicates at d ≈ 3e-4, i.e. κ ≈ 1 − 2.5e-4 for the exponential kernel
    points = np.concatenate([sst2[:300], sst2[:10], sst2[:10] + np.float32(1e-4)])
    tau, noise = 0.6, 1e-2
    group = np.arange(10)
    gp = IncrementalGP(points, kernel, tau, noise)
    gp.add(group)
    k_ga = cross_kernel(points[group], points, kernel, tau)
    v = solve_triangular(np.linalg.cholesky(k_ga[:, group] + noise * np.eye(10)), k_ga, lower=True)
    np.testing.assert_allclose(gp.variance, 1.0 - (v * v).sum(axis=0), atol=1e-6)


def test_variance_never_increases_and_starts_at_prior(sst2):
    gp = IncrementalGP(sst2, "rbf", 0.5, 1.0)
    assert np.array_equal(gp.variance, np.ones(N_ROWS))
    previous = gp.variance.copy()
    for group in knn_groups(sst2, 5, seed=4):
        gp.add(group)
        assert (gp.variance <= previous + 1e-7).all()
        previous = gp.variance.copy()


def test_median_pairwise_distance_equals_brute_force(sst2):
    sample = 300
    pick = np.sort(np.random.default_rng(5).choice(N_ROWS, size=sample, replace=False))
    x = sst2[pick].astype(np.float64)
    brute = [np.linalg.norm(x[i] - x[j]) for i in range(sample) for j in range(i + 1, sample)]
    assert median_pairwise_distance(sst2, sample, seed=5) == pytest.approx(np.median(brute), abs=1e-9)


@pytest.mark.parametrize("kernel,noise", [("exponential", 1.0), ("rbf", 1e-2)])
def test_deferred_top_variance_equals_the_eager_argmax_at_every_step(sst2, kernel, noise):
    # Reference: sync_rows=1 writes V for every row after every group, so its variance is the plain running sum.
    eager = IncrementalGP(sst2, kernel, 0.6, noise, sync_rows=1)
    lazy = IncrementalGP(sst2, kernel, 0.6, noise, sync_rows=64)  # 400 rows: 5 syncs of 70, 50 pending
    rng = np.random.default_rng(7)
    free = np.ones(N_ROWS, dtype=bool)
    for group in knn_groups(sst2, 40, seed=5):
        free[group] = False
        candidates = np.flatnonzero(free & (rng.random(N_ROWS) < 0.6))
        best, tops = lazy.top_variance(candidates)
        reference = eager.variance[candidates]
        assert best == pytest.approx(reference.max(), abs=1e-6)
        # every candidate within the tie tolerance of the maximum (all of them before any data)
        assert sorted(tops.tolist()) == candidates[reference >= reference.max() - TIE_TOLERANCE].tolist()
        eager.add(group)
        lazy.add(group)
    assert lazy._n_observed > lazy._n_synced > 0, "the run must end with groups pending after at least one sync"
    np.testing.assert_allclose(lazy.variance, eager.variance, atol=1e-6)


@pytest.mark.parametrize("sync_rows", [1, 64])  # every group synced / the last groups pending
def test_rows_within_the_tie_tolerance_tie_and_rows_beyond_it_do_not(sst2, sync_rows):
    gp = IncrementalGP(sst2, "exponential", 0.6, 1.0, sync_rows=sync_rows)
    for group in knn_groups(sst2, 3, seed=8):
        gp.add(group)
    variance = gp.variance
    order = np.argsort(variance)
    gaps = np.diff(variance[order])
    # real neighbours in variance: one pair closer than the tolerance (a tie), one pair farther apart (no tie)
    close = int(np.flatnonzero((gaps > 0) & (gaps < TIE_TOLERANCE / 2))[0])
    apart = int(np.flatnonzero(gaps > 2 * TIE_TOLERANCE)[0])
    best, tops = gp.top_variance(order[[close, close + 1]])
    assert sorted(tops.tolist()) == sorted(order[[close, close + 1]].tolist())
    assert best == pytest.approx(variance[order[close + 1]], abs=1e-9)
    _, tops = gp.top_variance(order[[apart, apart + 1]])
    assert tops.tolist() == [order[apart + 1]]


def test_reading_variances_never_changes_later_results(sst2):
    quiet = IncrementalGP(sst2, "exponential", 0.6, 1.0, sync_rows=32)
    watched = IncrementalGP(sst2, "exponential", 0.6, 1.0, sync_rows=32)
    candidates = np.arange(0, N_ROWS, 3)
    for group in knn_groups(sst2, 12, seed=6):
        quiet.add(group)
        watched.add(group)
        watched.variance
        watched.top_variance(np.arange(N_ROWS))
        best, tops = quiet.top_variance(candidates)
        best_w, tops_w = watched.top_variance(candidates)
        assert best == best_w and tops.tolist() == tops_w.tolist()
    assert np.array_equal(quiet.variance, watched.variance)


@pytest.mark.parametrize("sync_rows", [1, 64])  # every group synced / groups pending
def test_weighted_top_and_variance_at_equal_the_eager_variances(sst2, sync_rows):
    eager = IncrementalGP(sst2, "exponential", 0.6, 1.0, sync_rows=1)
    gp = IncrementalGP(sst2, "exponential", 0.6, 1.0, sync_rows=sync_rows)
    weights = np.random.default_rng(9).uniform(0.1, 1.0, N_ROWS)
    candidates = np.arange(1, N_ROWS, 2)
    for group in knn_groups(sst2, 5, seed=10):
        eager.add(group)
        gp.add(group)
        score = eager.variance[candidates] * weights[candidates]
        best, tops = gp.top_variance(candidates, weights[candidates])
        assert best == pytest.approx(score.max(), abs=1e-6)
        assert sorted(tops.tolist()) == candidates[score >= score.max() - TIE_TOLERANCE].tolist()
        np.testing.assert_allclose(gp.variance_at(candidates[:50]), eager.variance[candidates[:50]], atol=1e-6)
    assert (gp._n_observed > gp._n_synced) == (sync_rows == 64)


@pytest.mark.parametrize("sync_rows", [1, 64])
def test_variance_at_the_noise_floor_stays_positive_and_matches_float64(sst2, sync_rows):
    # selection.noise's lower bound 1e-4 (config.py): tight groups drive observed rows to σ²/(1+σ²) ≈ 1e-4, where
    # the float32 state's rounding (≈ 2.5e-6) must stay small against the true variance; below it, it did not.
    kernel, tau, noise = "exponential", 0.6, 1e-4
    gp = IncrementalGP(sst2, kernel, tau, noise, sync_rows=sync_rows)
    for group in knn_groups(sst2, 60, seed=5):
        gp.add(group)
    observed = gp.observed
    k_ss = cross_kernel(sst2[observed], sst2[observed], kernel, tau) + noise * np.eye(len(observed))
    chol, _ = cho_factor(k_ss, lower=True)
    v = solve_triangular(np.tril(chol), cross_kernel(sst2[observed], sst2, kernel, tau), lower=True)
    reference = 1.0 - (v * v).sum(axis=0)
    variance = gp.variance
    assert reference.min() > 0 and variance.min() > 0
    np.testing.assert_allclose(variance, reference, atol=5e-6)
    # the observed rows sit near the floor, and their relative error is bounded there too
    assert reference[observed].max() < 10 * noise
    assert np.abs(variance[observed] - reference[observed]).max() < 0.05 * reference[observed].min()


@pytest.mark.parametrize("mode", ["synced", "pending", "deferred"])
def test_last_blocks_and_v_columns_equal_a_from_scratch_cholesky(sst2, mode):
    # The partitioned engine's GP (residual kernel κ − φ·φ of Nyström features): the rows of h = L⁻¹Φ_S that
    # solve_last returns group by group, and V's columns at any rows (variance_and_v), against L from one Cholesky of
    # the observed rows' kernel. Modes: V written after every group; groups pending (sync_rows 64); and add(sync=False)
    # with sync() before the next call, as a shard does, which must leave the state bit for bit as the first mode.
    from synalign_ray.selection.partitions import inducing_features

    kernel, tau, noise = "exponential", 0.6, 1.0
    points = sst2[:600]
    features = inducing_features(points, points[np.random.default_rng(3).choice(600, 40, replace=False)], kernel, tau)
    gp = IncrementalGP(points, kernel, tau, noise, sync_rows=64 if mode == "pending" else 1, features=features)
    eager = IncrementalGP(points, kernel, tau, noise, sync_rows=1, features=features)
    h = np.zeros((0, features.shape[1]))
    for group in knn_groups(points, 12, seed=4):
        gp.add(group, sync=mode != "deferred")
        h = np.concatenate([h, gp.solve_last(features[group], h)])
        if mode == "deferred":
            gp.sync()
            eager.add(group)
            np.testing.assert_array_equal(gp._v_t, eager._v_t)
    observed = gp.observed
    phi = features.astype(np.float32).astype(np.float64)  # the GP holds its features in float32
    residual = cross_kernel(points[observed], points, kernel, tau) - phi[observed] @ phi.T
    chol = np.linalg.cholesky(residual[:, observed] + noise * np.eye(len(observed)))
    np.testing.assert_allclose(h, solve_triangular(chol, phi[observed], lower=True), atol=1e-5)
    rows = np.random.default_rng(1).choice(600, 80, replace=False)
    v_ref = solve_triangular(chol, residual[:, rows], lower=True)
    variance, v = gp.variance_and_v(rows)
    assert v.shape == (80, len(observed)) and (gp._n_observed > gp._n_synced) == (mode == "pending")
    np.testing.assert_allclose(v, v_ref.T, atol=1e-5)
    np.testing.assert_allclose(variance, 1.0 - np.einsum("ij,ij->j", phi[rows].T, phi[rows].T)
                               - np.einsum("ij,ij->j", v_ref, v_ref), atol=1e-5)
    np.testing.assert_allclose(variance, gp.variance_at(rows), rtol=0, atol=1e-12)
