"""Distributed alignment: shard actors hold slices of the synthetic (and real) rows; the driver reduces their
per-iteration sums and broadcasts residuals (mmd.run_fit), then shards draw and write their resampled rows.
AlignmentShard is a plain class; callers turn it into an actor with the `spawn` function they pass in.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa

from synalign_ray.alignment.mmd import (DiversityTarget, FeatureMap, FitParams, FitResult, SearchResult, SearchSettings,
                                        WeightShard, run_fit, search_entropy, split_ranges)
from synalign_ray.alignment.resample import conform, draw_within, shard_counts
from synalign_ray.config import StorageConfig
from synalign_ray.io import resolve
from synalign_ray.run_folder import write_parts

SOURCE_SYNTHETIC = "synthetic"
SOURCE_REAL = "real"


class AlignmentShard:
    """Actor body: one slice of synthetic rows (weights, resampling, writing) and one slice of real rows."""

    def __init__(self, index: int, syn_range: tuple[int, int], syn_emb: np.ndarray, syn_groups: np.ndarray,
                 real_range: tuple[int, int], real_emb: np.ndarray, real_groups: np.ndarray,
                 feature_map: FeatureMap | None, num_groups: int,
                 syn_rows: pa.Table | None = None, real_rows: pa.Table | None = None):
        self.index = index
        self._syn_offset = syn_range[0]
        self._real_offset = real_range[0]
        self._syn_groups = np.asarray(syn_groups)
        self._num_groups = num_groups
        self._syn_rows = syn_rows
        self._real_rows = real_rows
        self._fit = WeightShard(syn_emb, syn_groups, real_emb, real_groups, feature_map, num_groups) \
            if feature_map is not None else None

    # ---- the WeightShard interface run_fit drives
    def real_sums(self):
        return self._fit.real_sums()

    def group_sizes(self) -> np.ndarray:
        return np.bincount(self._syn_groups, minlength=self._num_groups)

    def max_sq_norm(self) -> float:
        return self._fit.max_sq_norm()

    def begin(self):
        return self._fit.begin()

    def step(self, residual, eta, entropy, momentum, keep_current=False):
        return self._fit.step(residual, eta, entropy, momentum, keep_current)

    def save(self, slot: str) -> None:
        self._fit.save(slot)

    def restore(self, slot: str) -> None:
        self._fit.restore(slot)

    def expected_distinct(self, log_norm, draws):
        return self._fit.expected_distinct(log_norm, draws)

    # ---- resampling and output
    def row_weights(self, log_norm: np.ndarray | None, group_sizes: np.ndarray) -> np.ndarray:
        """ω per local row (each group sums to 1 over all shards); uniform 1/n_g without a fit."""
        if log_norm is not None:
            return self._fit.weights(log_norm)
        return 1.0 / group_sizes[self._syn_groups]

    def draw(self, counts: np.ndarray, log_norm: np.ndarray | None, group_sizes: np.ndarray,
             seed: int) -> np.ndarray:
        """Local row positions: counts[g] draws within group g by ω (uniform when log_norm is None)."""
        weights = self.row_weights(log_norm, group_sizes)
        picks = []
        for g in range(self._num_groups):
            members = np.flatnonzero(self._syn_groups == g)
            if counts[g]:
                picks.append(members[draw_within(weights[members], int(counts[g]), seed, g, self.index)])
        return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)

    def write_synthetic(self, positions: np.ndarray, log_norm: np.ndarray | None, group_sizes: np.ndarray,
                        group_shares: np.ndarray, out_url: str, storage: StorageConfig | None, schema: pa.Schema,
                        text_column: str, label_column: str | None, rows_per_part: int) -> list[str]:
        """Write the drawn rows with weight = ω_j·(label share), the row's probability per draw; returns the
        part names in order."""
        probability = self.row_weights(log_norm, group_sizes) * group_shares[self._syn_groups]
        rows = self._syn_rows.take(pa.array(positions, type=pa.int64()))
        fixed = _fixed_columns(rows, text_column, label_column, SOURCE_SYNTHETIC,
                               probability[positions], positions + self._syn_offset)
        return write_parts(conform(fixed, schema), resolve(out_url, storage), storage, f"synthetic-{self.index:04d}",
                           rows_per_part, allow_empty=False)

    def write_real(self, out_url: str, storage: StorageConfig | None, schema: pa.Schema, text_column: str,
                   label_column: str | None, rows_per_part: int) -> list[str]:
        """Write this shard's real rows (mix_real) with source=real, no weight and an importance weight of 1."""
        n = self._real_rows.num_rows
        fixed = _fixed_columns(self._real_rows, text_column, label_column, SOURCE_REAL,
                               np.full(n, np.nan), np.arange(n) + self._real_offset)
        if "importance_weight" in schema.names:
            fixed = fixed.append_column("importance_weight", pa.array(np.ones(n)))
        return write_parts(conform(fixed, schema), resolve(out_url, storage), storage, f"real-{self.index:04d}",
                           rows_per_part, allow_empty=False)


def _fixed_columns(rows: pa.Table, text_column: str, label_column: str | None, source: str,
                   weight: np.ndarray, row_index: np.ndarray) -> pa.Table:
    table = rows.drop_columns([c for c in (text_column, label_column) if c is not None])
    extra = {"text": rows.column(text_column)}
    if label_column is not None:
        extra["label"] = rows.column(label_column).cast(pa.string())
    extra["source"] = pa.array([source] * rows.num_rows, type=pa.string())
    extra["weight"] = pa.array(weight, type=pa.float64(), from_pandas=True)
    extra["row_index"] = pa.array(row_index, type=pa.int64())
    for name, column in extra.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, column)
    return table


Spawn = Callable[..., Any]


def ray_spawn(num_cpus: float = 1.0) -> Spawn:
    """spawn(cls, *args) -> a Ray actor handle running cls(*args) with `num_cpus` reserved; shards spread over the
    cluster's nodes (each holds its slice of the rows: spreading divides memory per node)."""
    import ray

    def spawn(cls, *args):
        return ray.remote(cls).options(num_cpus=num_cpus, scheduling_strategy="SPREAD").remote(*args)

    return spawn


def start_shards(spawn: Spawn, num_shards: int, syn_emb: np.ndarray, syn_groups: np.ndarray,
                 real_emb: np.ndarray, real_groups: np.ndarray, feature_map: FeatureMap | None, num_groups: int,
                 syn_rows: pa.Table | None = None, real_rows: pa.Table | None = None) -> list:
    """Split both row sets into `num_shards` contiguous slices and start one AlignmentShard on each."""
    handles = []
    for i, (syn_r, real_r) in enumerate(zip(split_ranges(len(syn_emb), num_shards),
                                            split_ranges(len(real_emb), num_shards))):
        handles.append(spawn(
            AlignmentShard, i, syn_r, syn_emb[syn_r[0]:syn_r[1]], syn_groups[syn_r[0]:syn_r[1]],
            real_r, real_emb[real_r[0]:real_r[1]], real_groups[real_r[0]:real_r[1]], feature_map, num_groups,
            syn_rows.slice(syn_r[0], syn_r[1] - syn_r[0]) if syn_rows is not None else None,
            real_rows.slice(real_r[0], real_r[1] - real_r[0]) if real_rows is not None else None))
    return handles


def call_all(handles: list):
    """call(method, *args): run a method on every shard actor at once and gather the results in shard order."""
    import ray

    def call(method: str, *args):
        return ray.get([getattr(h, method).remote(*args) for h in handles])

    return call


def fit_distributed(handles: list, params: FitParams) -> FitResult:
    return run_fit(call_all(handles), params)


def search_distributed(handles: list, settings: SearchSettings, target: DiversityTarget) -> SearchResult:
    return search_entropy(call_all(handles), settings, target)


def draw_distributed(handles: list, group_counts: np.ndarray, shard_shares: np.ndarray,
                     log_norm: np.ndarray | None, group_sizes: np.ndarray, seed: int) -> list[np.ndarray]:
    """Per group, split its count over shards by a multinomial on the shards' weight shares (S, G); each shard
    then draws inside itself. Returns each shard's local positions."""
    per_shard = np.stack([shard_counts(int(group_counts[g]), shard_shares[:, g], seed, g)
                          for g in range(len(group_counts))], axis=1)
    import ray

    return ray.get([h.draw.remote(per_shard[i], log_norm, group_sizes, seed) for i, h in enumerate(handles)])
