"""The λ search and what it stands on: the closed-form expected distinct share, the best-iterate fit, the search
meeting its target on a pool whose mixture weights are known, and the MMD–diversity frontier it reports."""

from __future__ import annotations

import numpy as np
import pytest

from synalign_ray.alignment.mmd import (DiversityTarget, FitParams, FitProblem, SearchSettings, fit_weights,
                                        local_shards, make_feature_map, objective, run_fit, search_weights)
from synalign_ray.alignment.resample import distinct_fraction, draw_within, expected_distinct

SETTINGS = SearchSettings(steps=150, warm_steps=50, max_fits=6, learning_rate=4.0, momentum=0.9)


def test_expected_distinct_closed_form_on_exact_cases():
    # Uniform over n rows: n·(1 − (1 − 1/n)^c); one row holding all the weight: exactly 1 distinct row.
    assert expected_distinct(np.full(50, 1 / 50), 80) == pytest.approx(50 * (1 - (1 - 1 / 50) ** 80), rel=1e-12)
    assert expected_distinct(np.r_[1.0, np.zeros(9)], 40) == pytest.approx(1.0)
    # Tiny weights keep their first-order contribution c·p instead of rounding to zero.
    assert expected_distinct(np.array([1e-18]), 1000) == pytest.approx(1e-15, rel=1e-9)


def test_expected_distinct_matches_the_draws_it_predicts():
    weights = np.random.default_rng(0).dirichlet(np.full(300, 0.3))
    count = 200
    measured = np.array([np.unique(draw_within(weights, count, seed, 0, 0)).size for seed in range(400)])
    # The mean of 400 draws lies within 4 standard errors of the expectation.
    assert abs(measured.mean() - expected_distinct(weights, count)) < 4 * measured.std() / np.sqrt(len(measured))


@pytest.fixture(scope="module")
def known_mixture(real_embeddings):
    """Real rows are 300 SST-2 rows; the pool is the same 300 rows plus 300 AG News rows, so the mixture
    weights are known: uniform on the SST-2 half (ω* = 1/300), nothing on the AG News half (rows 300..599)."""
    _, sst = real_embeddings("sst2_train.parquet", 300, 2)
    _, news = real_embeddings("agnews_dev.parquet", 300, 0)
    pool = np.vstack([sst, news])
    return sst, np.zeros(len(sst), np.int64), pool, np.zeros(len(pool), np.int64)


@pytest.mark.parametrize("min_distinct", [0.5, 0.7])
def test_search_meets_its_target_on_a_known_mixture(known_mixture, min_distinct):
    real, real_groups, pool, pool_groups = known_mixture
    draws = np.array([300])
    fmap = make_feature_map("rff", 200, real, seed=0)
    weights, search = search_weights(real, real_groups, pool, pool_groups, fmap, SETTINGS,
                                     DiversityTarget(draws, min_distinct=min_distinct))
    assert search.met and search.expected_distinct >= min_distinct
    assert search.expected_distinct == pytest.approx(expected_distinct(weights, 300) / 300, rel=1e-9)
    # The chosen λ is the smallest tried that meets the target; every smaller λ tried missed it.
    assert all(not p["meets_target"] for p in search.frontier if p["entropy"] < search.fit.entropy)
    assert len(search.frontier) <= SETTINGS.max_fits
    # The known mixture puts ω* on the SST-2 half: it keeps 1 − (1 − 1/300)^300 = 63.4% distinct, so a 0.5 target
    # is met with the AG News rows mostly dropped; 0.7 needs more rows than ω* uses, so some junk comes back.
    optimum = expected_distinct(np.full(300, 1 / 300), 300) / 300
    junk = weights[300:].sum()
    if min_distinct < optimum:
        assert junk < 0.25
    else:
        assert junk > 0.05
    # The expectation is what draws deliver.
    measured = np.mean([distinct_fraction(draw_within(weights, 300, seed, 0, 0)) for seed in range(100)])
    assert measured == pytest.approx(search.expected_distinct, abs=0.02)


def test_frontier_is_monotone(known_mixture):
    real, real_groups, pool, pool_groups = known_mixture
    fmap = make_feature_map("rff", 200, real, seed=0)
    _, search = search_weights(real, real_groups, pool, pool_groups, fmap, SETTINGS,
                               DiversityTarget(np.array([300]), min_distinct=0.7))
    points = search.frontier
    assert len(points) >= 3
    lam = [p["entropy"] for p in points]
    assert lam == sorted(lam)
    # More λ: more distinct rows, a higher MMD² and a larger ESS.
    for key in ("expected_distinct", "mmd2_features", "ess"):
        values = [p[key] for p in points]
        assert all(b >= a for a, b in zip(values, values[1:])), (key, values)


def test_fit_keeps_the_best_iterate(known_mixture):
    real, real_groups, pool, pool_groups = known_mixture
    fmap = make_feature_map("rff", 200, real, seed=0)
    # A long step with heavy momentum overshoots: the objective goes back up after its lowest point.
    params = FitParams(steps=80, learning_rate=8.0, entropy=1e-3, momentum=0.95)
    weights, result = fit_weights(real, real_groups, pool, pool_groups, fmap, params)
    history = result.objective_history
    assert result.best_step == int(np.argmin(history)) < len(history) - 1
    assert history[-1] > min(history)
    # The returned weights are that iterate: the reference objective of them is the lowest seen, and a fit stopped
    # at best_step returns the same weights.
    features = fmap.transform(pool).astype(np.float64)
    target = fmap.transform(real).astype(np.float64).mean(0)
    assert objective(weights, features, target, params.entropy) == pytest.approx(min(history), rel=1e-5)
    stopped, _ = fit_weights(real, real_groups, pool, pool_groups, fmap,
                             FitParams(result.best_step, params.learning_rate, params.entropy, params.momentum))
    np.testing.assert_allclose(weights, stopped, rtol=1e-9, atol=0)


def test_sharded_expected_distinct_equals_the_whole(known_mixture):
    real, real_groups, pool, pool_groups = known_mixture
    fmap = make_feature_map("rff", 100, real, seed=1)
    params = FitParams(steps=30, learning_rate=4.0, entropy=1e-3, momentum=0.9)
    for threads in (1, 3):
        with local_shards(real, real_groups, pool, pool_groups, fmap, threads) as (call, shards):
            problem = FitProblem.gather(call)
            result = run_fit(call, params, problem)
            share = problem.expected_distinct(result.totals, np.array([250]))
            weights = np.concatenate([s.weights(result.totals.log_norm) for s in shards])
        assert share == pytest.approx(expected_distinct(weights, 250) / 250, rel=1e-9)


def test_report_draws_the_frontier_of_a_search(known_mixture):
    import base64

    from synalign_ray.report import frontier_figure

    real, real_groups, pool, pool_groups = known_mixture
    target = DiversityTarget(np.array([300]), min_distinct=0.7)
    _, search = search_weights(real, real_groups, pool, pool_groups, make_feature_map("rff", 100, real, seed=0),
                               SETTINGS, target)
    png = frontier_figure({"fit": {"entropy_search": search.summary(target)}})
    assert base64.b64decode(png).startswith(b"\x89PNG")
    assert frontier_figure({"fit": {}}) is None
