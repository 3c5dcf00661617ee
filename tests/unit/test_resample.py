"""Weighted resampling: allotment, shard splitting, within-shard draws, output schema."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import chisquare

from synalign_ray.alignment.resample import (allot, conform, distinct_fraction, draw_within, output_schema,
                                             shard_counts)


def test_allot_sums_to_total_and_stays_within_one_of_the_exact_share():
    shares = np.array([0.558, 0.442, 0.0004])
    counts = allot(6001, shares)
    assert counts.sum() == 6001
    assert np.all(np.abs(counts - 6001 * shares / shares.sum()) < 1)
    with pytest.raises(ValueError):
        allot(10, np.array([0.0, 0.0]))


def _sharded_draw(weights: np.ndarray, bounds: list[int], count: int, seed: int) -> np.ndarray:
    """Draw `count` rows across shards [bounds[i], bounds[i+1]) the way the shard actors do."""
    totals = np.array([weights[lo:hi].sum() for lo, hi in zip(bounds[:-1], bounds[1:])])
    per_shard = shard_counts(count, totals, seed, group=0)
    picks = [lo + draw_within(weights[lo:hi], int(k), seed, 0, i)
             for i, (lo, hi, k) in enumerate(zip(bounds[:-1], bounds[1:], per_shard))]
    return np.concatenate(picks)


def test_sharded_draw_frequencies_converge_to_the_weights():
    weights = np.random.default_rng(0).dirichlet(np.full(30, 0.7))
    draws = 200_000
    picks = _sharded_draw(weights, [0, 7, 19, 30], draws, seed=11)
    observed = np.bincount(picks, minlength=30)
    expected = draws * weights
    keep = expected >= 5  # the chi-square approximation needs ≥ 5 expected per cell
    stat = chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum())
    assert stat.pvalue > 1e-3
    assert observed[~keep].sum() <= 5 * (~keep).sum() + 10


def test_same_seed_same_draw_and_another_seed_differs():
    weights = np.random.default_rng(1).dirichlet(np.ones(50))
    a = _sharded_draw(weights, [0, 25, 50], 500, seed=3)
    b = _sharded_draw(weights, [0, 25, 50], 500, seed=3)
    c = _sharded_draw(weights, [0, 25, 50], 500, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_distinct_fraction_counts_unique_rows():
    assert distinct_fraction(np.array([3, 3, 4, 9])) == 0.75


def test_conform_fills_missing_columns_with_nulls_and_keeps_order():
    fixed = [pa.field("text", pa.string()), pa.field("weight", pa.float64())]
    schema = output_schema(fixed, pa.schema([("group_id", pa.int64())]), pa.schema([("row_id", pa.int64())]))
    assert schema.names == ["text", "weight", "group_id", "row_id"]
    table = conform(pa.table({"row_id": [5, 6], "text": ["a", "b"], "weight": [0.5, 0.5]}), schema)
    assert table.schema == schema
    assert table.column("group_id").null_count == 2
    assert table.column("row_id").to_pylist() == [5, 6]
