"""The distributed fit on shard actors equals the single-process core; sharded draws are seeded."""

from __future__ import annotations

import numpy as np
import pytest

from synalign_ray.alignment.distributed import (draw_distributed, fit_distributed, ray_spawn, search_distributed,
                                                 start_shards)
from synalign_ray.alignment.mmd import (DiversityTarget, FitParams, SearchSettings, fit_weights, make_feature_map,
                                        search_weights)


@pytest.fixture(scope="module")
def labelled_pool(real_embeddings):
    real_rows, real = real_embeddings("sst2_train.parquet", 300, 3)
    dev_rows, dev = real_embeddings("sst2_dev.parquet", 150, 3)
    _, news = real_embeddings("agnews_dev.parquet", 150, 3)
    code = {"negative": 0, "positive": 1}
    real_groups = np.array([code[x] for x in real_rows.column("label").to_pylist()])
    dev_groups = np.array([code[x] for x in dev_rows.column("label").to_pylist()])
    # AG News rows carry seeded random SST-2 labels: off-distribution rows inside both label groups.
    news_groups = np.random.default_rng(0).integers(0, 2, size=len(news))
    return real, real_groups, np.vstack([news, dev]), np.concatenate([news_groups, dev_groups])


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_distributed_fit_equals_single_process(ray_local, labelled_pool, num_shards):
    real, real_groups, syn, syn_groups = labelled_pool
    fmap = make_feature_map("rff", 100, real, seed=4)
    params = FitParams(steps=60, learning_rate=2.0, entropy=0.001, momentum=0.9)
    expected, reference = fit_weights(real, real_groups, syn, syn_groups, fmap, params)
    handles = start_shards(ray_spawn(num_cpus=0.5), num_shards, syn, syn_groups, real, real_groups, fmap, 2)
    result = fit_distributed(handles, params)
    weights = np.concatenate(ray_local.get([h.row_weights.remote(result.totals.log_norm, None) for h in handles]))
    np.testing.assert_allclose(weights, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.objective_history, reference.objective_history, rtol=1e-5)
    np.testing.assert_allclose(result.ess, reference.ess, rtol=1e-5)
    # Each label group's weights sum to one, and the fit moved weight off the AG News rows (the first 150).
    for g in (0, 1):
        assert weights[syn_groups == g].sum() == pytest.approx(1.0, abs=1e-9)
    assert weights[:150].sum() < 0.5 * 150 / len(syn) * 2


def test_distributed_search_equals_single_process(ray_local, labelled_pool):
    real, real_groups, syn, syn_groups = labelled_pool
    fmap = make_feature_map("rff", 100, real, seed=4)
    settings = SearchSettings(steps=60, warm_steps=20, max_fits=5, learning_rate=4.0, momentum=0.9)
    target = DiversityTarget(np.array([120, 180]), min_distinct=0.6)
    expected, reference = search_weights(real, real_groups, syn, syn_groups, fmap, settings, target)
    handles = start_shards(ray_spawn(num_cpus=0.5), 2, syn, syn_groups, real, real_groups, fmap, 2)
    search = search_distributed(handles, settings, target)
    weights = np.concatenate(ray_local.get([h.row_weights.remote(search.fit.totals.log_norm, None) for h in handles]))
    assert [p["entropy"] for p in search.frontier] == pytest.approx([p["entropy"] for p in reference.frontier])
    assert search.fit.entropy == pytest.approx(reference.fit.entropy) and search.met == reference.met
    np.testing.assert_allclose(weights, expected, atol=1e-5, rtol=0)
    assert search.expected_distinct == pytest.approx(reference.expected_distinct, rel=1e-5)


def test_sharded_draw_is_seeded_and_respects_group_counts(ray_local, labelled_pool):
    real, real_groups, syn, syn_groups = labelled_pool
    fmap = make_feature_map("linear", 50, real, seed=0)
    handles = start_shards(ray_spawn(num_cpus=0.5), 2, syn, syn_groups, real, real_groups, fmap, 2)
    result = fit_distributed(handles, FitParams(steps=20))
    sizes = np.bincount(syn_groups)
    counts = np.array([70, 130])
    draws = [draw_distributed(handles, counts, result.totals.shard_shares, result.totals.log_norm, sizes, seed)
             for seed in (5, 5, 6)]
    for a, b in zip(draws[0], draws[1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(draws[0], draws[2]))
    starts = [0, len(syn) // 2]
    picked = np.concatenate([p + s for p, s in zip(draws[0], starts)])
    np.testing.assert_array_equal(np.bincount(syn_groups[picked], minlength=2), counts)
