"""The pure alignment core: orthogonal directions, feature maps, objective gradient and the weight fit."""

from __future__ import annotations

import numpy as np
import pytest

from synalign_ray.alignment.mmd import (FitParams, fit_weights, make_feature_map, objective, objective_gradient,
                                        orthogonal_directions)
from synalign_ray.metrics import median_pairwise_distance


def test_directions_are_orthonormal_within_each_block():
    dim, count = 16, 40
    theta = orthogonal_directions(dim, count, np.random.default_rng(3))
    assert theta.shape == (count, dim)
    for lo in range(0, count, dim):
        block = theta[lo:lo + dim]
        np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-12)
    # Independent blocks are not orthogonal to each other.
    assert np.abs(theta[:dim] @ theta[dim:2 * dim].T).max() > 0.1


def test_directions_reject_non_positive_counts():
    with pytest.raises(ValueError):
        orthogonal_directions(8, 0, np.random.default_rng(0))


def test_rff_inner_products_approximate_the_rbf_kernel(real_embeddings):
    _, emb = real_embeddings("sst2_train.parquet", 200, 1)
    fmap = make_feature_map("rff", 4000, emb, seed=0)
    phi = fmap.transform(emb[:50]).astype(np.float64)
    sq = ((emb[:50, None, :].astype(np.float64) - emb[None, :50, :]) ** 2).sum(-1)
    kernel = np.exp(-sq / (2 * fmap.bandwidth ** 2))
    # Random-feature error shrinks as 1/√D: with D = 4000 entries stay within a few hundredths.
    assert np.abs(phi @ phi.T - kernel).max() < 0.06
    assert fmap.bandwidth == pytest.approx(median_pairwise_distance(emb, seed=0))


def test_gradient_matches_finite_differences(real_embeddings):
    _, emb = real_embeddings("sst2_train.parquet", 200, 1)
    features = make_feature_map("rff", 64, emb, seed=1).transform(emb[:40]).astype(np.float64)
    target = features[40 // 2:].mean(0) * 0.9
    w = np.random.default_rng(2).dirichlet(np.ones(40))
    residual = features.T @ w - target
    grad = objective_gradient(features, residual, np.log(40 * w), entropy=0.3)
    h = 1e-6
    for j in (0, 7, 39):
        e = np.zeros(40)
        e[j] = h
        numeric = (objective(w + e, features, target, 0.3) - objective(w - e, features, target, 0.3)) / (2 * h)
        assert grad[j] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_mmd_of_a_sample_with_itself_is_zero(real_embeddings):
    _, emb = real_embeddings("sst2_train.parquet", 200, 1)
    groups = np.zeros(len(emb), np.int64)
    fmap = make_feature_map("rff", 100, emb, seed=0)
    weights, result = fit_weights(emb, groups, emb, groups, fmap, FitParams(steps=5))
    assert result.mmd_before[0] < 1e-12
    assert result.mmd_after[0] < 1e-12
    np.testing.assert_allclose(weights, 1 / len(emb), rtol=1e-6)


def test_fit_recovers_known_mixture_weights(real_embeddings):
    # Real rows are the pool rows repeated c_j times, so ω*_j = c_j / Σc matches the real mean exactly; with
    # fewer rows than dimensions and a full orthonormal basis that optimum is unique.
    _, emb = real_embeddings("sst2_train.parquet", 200, 1)
    pool = emb[:30]
    repeats = np.random.default_rng(5).integers(1, 5, size=len(pool))
    real = np.repeat(pool, repeats, axis=0)
    fmap = make_feature_map("linear", emb.shape[1], real, seed=0)
    weights, result = fit_weights(real, np.zeros(len(real), np.int64), pool, np.zeros(len(pool), np.int64), fmap,
                                  FitParams(steps=3000, learning_rate=1.0, momentum=0.9))
    np.testing.assert_allclose(weights, repeats / repeats.sum(), atol=2e-3)
    assert result.mmd_after[0] < 1e-3 * result.mmd_before[0]


def test_entropy_term_raises_the_effective_sample_size(real_embeddings):
    _, real = real_embeddings("sst2_train.parquet", 200, 1)
    _, pool = real_embeddings("agnews_dev.parquet", 200, 1)
    syn = np.vstack([pool, real[:100]])
    groups = np.zeros(len(syn), np.int64)
    fmap = make_feature_map("rff", 200, real, seed=0)
    free, r0 = fit_weights(real, np.zeros(len(real), np.int64), syn, groups, fmap, FitParams(steps=200))
    kept, r1 = fit_weights(real, np.zeros(len(real), np.int64), syn, groups, fmap,
                           FitParams(steps=200, entropy=0.01))
    assert r1.ess[0] > r0.ess[0]
    assert r1.kl_after[0] < r0.kl_after[0]
    # Both move weight off the off-distribution AG News rows (the first 200).
    assert free[:200].sum() < 0.5 and kept[:200].sum() < 0.5
    # The reported ESS is (Σω)²/Σω² of the returned weights.
    assert r0.ess[0] == pytest.approx(1.0 / (free ** 2).sum(), rel=1e-9)


def test_same_seed_same_weights_and_objective_decreases(real_embeddings):
    _, real = real_embeddings("sst2_train.parquet", 200, 1)
    _, pool = real_embeddings("agnews_dev.parquet", 200, 1)
    groups = np.zeros(len(pool), np.int64)
    runs = [fit_weights(real, np.zeros(len(real), np.int64), pool, groups,
                        make_feature_map("rff", 50, real, seed=7), FitParams(steps=50)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    history = runs[0][1].objective_history
    assert history[-1] < history[0]
    other = fit_weights(real, np.zeros(len(real), np.int64), pool, groups,
                        make_feature_map("rff", 50, real, seed=8), FitParams(steps=50))[0]
    assert not np.array_equal(other, runs[0][0])


def test_fit_params_reject_bad_values():
    with pytest.raises(ValueError):
        FitParams(learning_rate=0.0)
    with pytest.raises(ValueError):
        FitParams(momentum=1.0)


def test_in_process_shards_give_the_same_fit_as_one(real_embeddings):
    real_rows, real = real_embeddings("sst2_train.parquet", 200, 1)
    _, pool = real_embeddings("agnews_dev.parquet", 200, 1)
    syn = np.vstack([pool, real[:100]])
    real_groups = (np.asarray(real_rows.column("label").to_pylist()) == "positive").astype(np.int64)
    syn_groups = np.r_[np.random.default_rng(0).integers(0, 2, 200), real_groups[:100]]
    fmap = make_feature_map("rff", 120, real, seed=2)
    params = FitParams(steps=40, learning_rate=4.0, entropy=0.001, momentum=0.9)
    one, r1 = fit_weights(real, real_groups, syn, syn_groups, fmap, params, threads=1)
    three, r3 = fit_weights(real, real_groups, syn, syn_groups, fmap, params, threads=3)
    np.testing.assert_allclose(three, one, atol=1e-6, rtol=0)
    np.testing.assert_allclose(r3.objective_history, r1.objective_history, rtol=1e-6)
