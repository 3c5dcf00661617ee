"""Weighted resampling with replacement (the paper's D'_gen) split across shards, and assembly of output rows.

Sampling math and table building only: no Ray. Every draw takes a seed derived from (seed, stream, ...).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# Independent random streams derived from the one configured seed.
STREAM_SHARD_COUNTS = 1
STREAM_WITHIN_SHARD = 2
STREAM_UNIFORM_BASELINE = 3
STREAM_HOLDOUT = 4


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def allot(total: int, shares: np.ndarray) -> np.ndarray:
    """Split `total` into integer counts proportional to `shares` (largest remainder; ties to the lower index)."""
    shares = np.asarray(shares, dtype=np.float64)
    if total < 0 or shares.ndim != 1 or shares.size == 0 or np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError(f"cannot allot {total} rows by shares {shares}")
    exact = total * shares / shares.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def holdout_counts(label_sizes: np.ndarray, fraction: float) -> np.ndarray:
    """Rows held out per label: fraction·n rounded half up, so a label's share of the held-out rows matches its
    share of the real rows."""
    return np.floor(fraction * np.asarray(label_sizes, dtype=np.float64) + 0.5).astype(np.int64)


def holdout_mask(codes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded held-out rows (True), holdout_counts(...) of them drawn without replacement within each label code."""
    codes = np.asarray(codes)
    held = np.zeros(len(codes), dtype=bool)
    names, inverse = np.unique(codes, return_inverse=True)
    counts = holdout_counts(np.bincount(inverse, minlength=len(names)), fraction)
    rng = rng_for(seed, STREAM_HOLDOUT)
    for k, count in enumerate(counts):
        members = np.flatnonzero(inverse == k)
        held[rng.choice(members, size=int(count), replace=False)] = True
    return held


def shard_counts(count: int, shard_shares: np.ndarray, seed: int, group: int) -> np.ndarray:
    """How many of a group's `count` draws land in each shard: multinomial over the shards' weight totals."""
    shares = np.asarray(shard_shares, dtype=np.float64)
    return rng_for(seed, STREAM_SHARD_COUNTS, group).multinomial(count, shares / shares.sum())


def draw_within(weights: np.ndarray, count: int, seed: int, group: int, shard: int) -> np.ndarray:
    """`count` row positions drawn with replacement with probability ∝ weights (one shard, one group)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    return rng_for(seed, STREAM_WITHIN_SHARD, group, shard).choice(w.size, size=count, replace=True, p=w / w.sum())


def expected_distinct(probabilities: np.ndarray, count: int) -> float:
    """E[distinct rows among these] in `count` draws with replacement where row j has probability p_j per draw
    (p may be one shard's part of a distribution): Σ_j 1 − (1 − p_j)^count, as −expm1(count·log1p(−p_j)) so
    tiny probabilities keep their precision."""
    p = np.minimum(np.asarray(probabilities, dtype=np.float64), 1.0)
    with np.errstate(divide="ignore"):
        return float(-np.expm1(count * np.log1p(-p)).sum())


def distinct_fraction(indices: np.ndarray) -> float:
    return float(np.unique(indices).size / len(indices)) if len(indices) else 0.0


def output_schema(fixed: list[pa.Field], *carried: pa.Schema) -> pa.Schema:
    """Fixed output fields first, then every other input column (first table's type wins)."""
    names = {f.name for f in fixed}
    fields = list(fixed)
    for schema in carried:
        for f in schema:
            if f.name not in names:
                names.add(f.name)
                fields.append(f.with_nullable(True))
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder/cast `table` to `schema`, filling columns it lacks with nulls, so every part has one schema."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)
