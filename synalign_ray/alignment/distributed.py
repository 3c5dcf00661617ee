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
from synalign_ray.alignment.rows import FolderSlice, TableSlice
from synalign_ray.config import StorageConfig
from synalign_ray.errors import InputError
from synalign_ray.io import resolve
from synalign_ray.metrics import text_keys, vocabulary
from synalign_ray.run_folder import write_parts

SOURCE_SYNTHETIC = "synthetic"
SOURCE_REAL = "real"


class AlignmentShard:
    """Actor body: one slice of synthetic rows (weights, resampling, writing) and one slice of real rows, each
    loaded here from its source (rows.TableSlice or rows.FolderSlice) and checked against the rows it should hold.
    `load` does that (not __init__, so that a bad row reaches the driver as the InputError itself)."""

    def __init__(self, index: int, syn_range: tuple[int, int], syn: TableSlice | FolderSlice, syn_groups: np.ndarray,
                 real_range: tuple[int, int], real: TableSlice | FolderSlice, real_groups: np.ndarray,
                 feature_map: FeatureMap | None, num_groups: int):
        self.index = index
        self._syn_offset = syn_range[0]
        self._real_offset = real_range[0]
        self._syn_groups = np.asarray(syn_groups)
        self._real_groups = np.asarray(real_groups)
        self._num_groups = num_groups
        self._sources = (syn_range, syn, real_range, real, feature_map)
        self._fit = None

    def load(self) -> None:
        syn_range, syn, real_range, real, feature_map = self._sources
        self._syn_rows, self._syn_emb = _loaded(syn.load(syn_range[0]), syn_range, "synthetic")
        self._real_rows, self._real_emb = _loaded(real.load(real_range[0]), real_range, "real")
        if feature_map is not None:
            self.use_features(feature_map)

    def use_features(self, feature_map: FeatureMap) -> None:
        """Project this shard's rows with the fit's feature map (the driver builds it from a sample of real rows)."""
        self._fit = WeightShard(self._syn_emb, self._syn_groups, self._real_emb, self._real_groups, feature_map,
                                self._num_groups)

    # ---- what the driver gathers: embeddings at a few positions, text statistics, schemas
    def dims(self) -> tuple[int, int]:
        return int(self._syn_emb.shape[1]), int(self._real_emb.shape[1])

    def sizes(self) -> tuple[int, int]:
        return len(self._syn_emb), len(self._real_emb)

    def embeddings_at(self, side: str, positions: np.ndarray) -> np.ndarray:
        return (self._syn_emb if side == SOURCE_SYNTHETIC else self._real_emb)[positions]

    def text_stats(self, positions: np.ndarray, text_column: str) -> tuple[set[str], np.ndarray]:
        """The vocabulary (metrics.vocabulary) and text keys (metrics.text_keys) of the synthetic rows at
        `positions` (repeats kept), which the driver merges over shards."""
        texts = self._syn_rows.column(text_column).take(pa.array(positions, type=pa.int64())).to_pylist()
        return vocabulary(texts), text_keys(texts)

    def set_importance(self, name: str, checkers: tuple, labels: np.ndarray) -> tuple[float, float, float]:
        """Add (or replace) the float column `name` of this shard's synthetic rows with their IMP-Loss weights under
        the fitted checkers (importance.checker_weights), `labels` the rows' labels; returns (sum, min, max)."""
        from synalign_ray.alignment.importance import checker_weights

        values = checker_weights(checkers, self._syn_emb, labels)
        column = pa.array(np.asarray(values, dtype=np.float64))
        rows = self._syn_rows
        self._syn_rows = rows.set_column(rows.column_names.index(name), name, column) if name in rows.column_names \
            else rows.append_column(name, column)
        return (float(values.sum()), float(values.min()), float(values.max())) if len(values) else (0.0, np.inf,
                                                                                                     -np.inf)

    def schemas(self) -> tuple[pa.Schema, pa.Schema]:
        return self._syn_rows.schema, self._real_rows.schema

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


def _loaded(loaded: tuple[pa.Table | None, np.ndarray], span: tuple[int, int], name: str
            ) -> tuple[pa.Table | None, np.ndarray]:
    """A slice as loaded, checked: as many rows and embeddings as the driver's plan gave it, all finite."""
    table, emb = loaded
    expected = span[1] - span[0]
    if np.ndim(emb) != 2:
        raise InputError(f"{name} embeddings must be a 2-D matrix, got shape {np.shape(emb)}")
    if len(emb) != expected or (table is not None and table.num_rows != expected):
        raise InputError(f"{name} rows {span[0]}..{span[1] - 1}: the shard found {len(emb)} rows, the plan has "
                         f"{expected} (did the folder change since it was scanned?)")
    if not np.isfinite(emb).all():
        bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
        raise InputError(f"{name} embeddings hold NaN or infinite values (first at row {span[0] + bad})")
    return table, emb


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
    """Split rows the caller holds into `num_shards` contiguous slices and start one AlignmentShard on each."""
    def table_slices(emb: np.ndarray, rows: pa.Table | None):
        ranges = split_ranges(len(emb), num_shards)
        return ranges, [TableSlice(rows.slice(lo, hi - lo) if rows is not None else None, emb[lo:hi])
                        for lo, hi in ranges]

    return spawn_shards(spawn, table_slices(syn_emb, syn_rows), syn_groups, table_slices(real_emb, real_rows),
                        real_groups, feature_map, num_groups)


def spawn_shards(spawn: Spawn, syn: tuple[list, list], syn_groups: np.ndarray, real: tuple[list, list],
                 real_groups: np.ndarray, feature_map: FeatureMap | None, num_groups: int) -> list:
    """One AlignmentShard per (synthetic, real) pair of (range, slice source), each given its rows' group codes and
    loaded; a problem a shard finds in its rows is raised here as itself, after every shard is stopped."""
    import ray

    from synalign_ray.runtime import raise_original

    handles = [spawn(AlignmentShard, i, syn_r, syn_src, syn_groups[syn_r[0]:syn_r[1]], real_r, real_src,
                     real_groups[real_r[0]:real_r[1]], feature_map, num_groups)
               for i, ((syn_r, syn_src), (real_r, real_src)) in enumerate(zip(zip(*syn), zip(*real)))]
    try:
        ray.get([h.load.remote() for h in handles])
    except Exception as err:
        for h in handles:
            ray.kill(h)
        raise_original(err)
        raise
    return handles


class ShardSet:
    """The driver's view of started shards: calls on all of them, and rows gathered by global position."""

    def __init__(self, handles: list):
        import ray

        self.handles = handles
        self._ray = ray
        sizes = np.array(self.call("sizes"))
        self.dims = self._ray.get(handles[0].dims.remote())
        self.starts = {SOURCE_SYNTHETIC: np.concatenate([[0], np.cumsum(sizes[:, 0])]),
                       SOURCE_REAL: np.concatenate([[0], np.cumsum(sizes[:, 1])])}

    def call(self, method: str, *args) -> list:
        return self._ray.get([getattr(h, method).remote(*args) for h in self.handles])

    def _split(self, side: str, positions: np.ndarray):
        positions = np.asarray(positions, dtype=np.int64)
        owner = np.searchsorted(self.starts[side], positions, side="right") - 1
        return positions, owner

    def gather(self, side: str, positions: np.ndarray) -> np.ndarray:
        """Embeddings of `side` at global `positions`, in that order (each shard sends only its own)."""
        positions, owner = self._split(side, positions)
        replies = {i: self.handles[i].embeddings_at.remote(side, positions[owner == i] - self.starts[side][i])
                   for i in np.unique(owner)}
        out = np.zeros((len(positions), self.dims[0 if side == SOURCE_SYNTHETIC else 1]), np.float32)
        for i, ref in replies.items():
            out[owner == i] = self._ray.get(ref)
        return out

    def text_stats(self, positions: np.ndarray, text_column: str) -> tuple[int, float]:
        """(vocabulary size, duplicate rate) of the synthetic texts at global `positions` (metrics' definitions)."""
        positions, owner = self._split(SOURCE_SYNTHETIC, positions)
        replies = self._ray.get([self.handles[i].text_stats.remote(
            positions[owner == i] - self.starts[SOURCE_SYNTHETIC][i], text_column) for i in np.unique(owner)])
        words = set().union(*(v for v, _ in replies)) if replies else set()
        keys = np.concatenate([k for _, k in replies]) if replies else np.zeros(0, np.uint64)
        return len(words), (1.0 - np.unique(keys).size / len(keys)) if len(keys) else 0.0

    def set_importance(self, name: str, checkers: tuple, syn_labels: np.ndarray) -> tuple[float, float, float]:
        """Each shard weighs its own synthetic rows with the fitted checkers (shard i gets its slice of the labels);
        (mean, min, max) over all rows, for the progress line."""
        starts = self.starts[SOURCE_SYNTHETIC]
        stats = self.call_each("set_importance", [(name, checkers, syn_labels[starts[i]:starts[i + 1]])
                                                  for i in range(len(self.handles))])
        return (sum(s for s, _, _ in stats) / starts[-1], min(lo for _, lo, _ in stats),
                max(hi for _, _, hi in stats))

    def call_each(self, method: str, args: list[tuple]) -> list:
        """Shard i runs method(*args[i]); results in shard order."""
        return self._ray.get([getattr(h, method).remote(*a) for h, a in zip(self.handles, args)])


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
