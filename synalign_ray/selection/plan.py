"""What a selection will do, decided before any GP state exists: the length scale (τ auto), groups per label, the
inputs it refuses, where a label stops, the density weights of the density_weighted rule, and which engine fits
the state budget (with the arithmetic when none does). Pure numpy."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from synalign_ray.config import SelectionConfig
from synalign_ray.errors import ConfigError, InputError
from synalign_ray.metrics import median_pairwise_distance
from synalign_ray.selection.gp import VARIANCE_CHUNK, kernel_from_sq_dist

log = logging.getLogger(__name__)

# tau: auto = AUTO_TAU_FACTOR × median pairwise distance of AUTO_TAU_SAMPLE seeded rows (see jobs/studies/measure_coverage.py).
AUTO_TAU_FACTOR = 0.5
AUTO_TAU_SAMPLE = 2_000
# rule: density_weighted (see raw_density; constants chosen by jobs/benchmarks/benchmark_selection_scale.py).
DENSITY_SAMPLE = 1000
DENSITY_BANDWIDTH = 0.5
DENSITY_POWER = 1.0
# A partition's V starts with room for its share of the unit's planned rows and grows by this factor when its region
# draws more: allocation stays within this factor of the rows used (state_bytes_needed counts it).
PARTITION_GROWTH = 1.25


def auto_tau(unit_embeddings: np.ndarray, seed: int) -> float:
    """The `tau: auto` rule: half the median pairwise distance between L2-normalised embeddings."""
    return AUTO_TAU_FACTOR * median_pairwise_distance(unit_embeddings, AUTO_TAU_SAMPLE, seed)


def plan_quotas(label_counts: dict[Any, int], max_groups: int, budget: str, k: int) -> dict[Any, int]:
    """Groups per label: equal shares (average) or shares ∝ label frequency (proportional, largest remainder).

    Leftover groups go to labels in sorted order (largest remainder first for proportional). Each quota is then
    clamped to n_label // (k + 1), the most disjoint groups a label can give: a documented clamp, not an error.
    """
    labels = list(label_counts)
    if budget == "average":
        shares = np.full(len(labels), max_groups / len(labels))
    else:
        counts = np.array([label_counts[l] for l in labels], dtype=np.float64)
        shares = max_groups * counts / counts.sum()
    quotas = np.floor(shares).astype(np.int64)
    # stable sort on -remainder: ties keep the sorted label order
    for i in np.argsort(-(shares - quotas), kind="stable")[: max_groups - int(quotas.sum())]:
        quotas[i] += 1
    return {l: int(min(q, label_counts[l] // (k + 1))) for l, q in zip(labels, quotas)}


def check_points(embeddings: np.ndarray, first_row: int = 0) -> None:
    """Raise on embeddings no GP can use: not a 2-D float array, NaN, infinite or all-zero rows (named counting
    from `first_row`, the rows' position in the whole input)."""
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2:
        raise InputError(f"embeddings must be a 2-D array (rows × dim), got shape {getattr(embeddings, 'shape', None)}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise InputError(f"embeddings must be floating point, got dtype {embeddings.dtype}")
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        raise InputError(f"embeddings hold NaN or infinite values (first at row {first_row + int(np.argmin(finite))})")
    norms = np.linalg.norm(embeddings, axis=1)
    if (norms == 0).any():
        raise InputError(f"embedding of row {first_row + int(np.argmax(norms == 0))} is all zeros: it has no "
                         "direction")


def check_inputs(embeddings: np.ndarray, labels: list[str] | None, row_ids: np.ndarray,
                 cfg: SelectionConfig) -> dict[str, int]:
    """Raise on input no selection can use; return the labels too small for one group (label → rows), skipped."""
    if not isinstance(cfg, SelectionConfig):
        raise ConfigError(f"selection config must be a SelectionConfig, got {type(cfg).__name__}")
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2 or embeddings.shape[0] == 0:
        shape = getattr(embeddings, "shape", None)
        raise InputError(f"embeddings must be a non-empty 2-D array (rows × dim), got shape {shape}")
    check_points(embeddings)
    return check_rows(embeddings.shape[0], labels, row_ids, cfg)


def check_rows(n: int, labels: list[str] | None, row_ids: np.ndarray, cfg: SelectionConfig) -> dict[str, int]:
    """check_inputs without the embeddings themselves (n rows), for rows that blocks hold and check as they load."""
    if not isinstance(cfg, SelectionConfig):
        raise ConfigError(f"selection config must be a SelectionConfig, got {type(cfg).__name__}")
    if n == 0:
        raise InputError("no rows to select from")
    if len(row_ids) != n:
        raise InputError(f"row_ids has {len(row_ids)} entries for {n} embeddings")
    if len(np.unique(np.asarray(row_ids))) != n:
        raise InputError("row_ids are not unique")
    groups_need = cfg.k + 1
    if labels is None:
        if n < groups_need:
            raise InputError(f"{n} rows cannot form one group of selection.k+1 = {groups_need} rows")
        return {}
    if len(labels) != n:
        raise InputError(f"labels has {len(labels)} entries for {n} embeddings")
    for i, label in enumerate(labels):
        if label is None or str(label).strip() == "":
            raise InputError(f"empty label at row {i}")
    values, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    too_small = {str(label): int(count) for label, count in zip(values, counts) if count < groups_need}
    if len(too_small) == len(values):
        label, count = next(iter(too_small.items()))
        raise InputError(f"no label can form one group: label {label!r} has {count} rows; selection.k={cfg.k} needs "
                         f"at least {groups_need} (and so does every other label)")
    for label, count in too_small.items():
        log.warning("selection: label %r has %d rows, fewer than selection.k+1 = %d: skipped", label, count,
                    groups_need)
    return too_small


def stop_variance(cfg: SelectionConfig) -> float:
    """The variance below which a label stops: floor + threshold·(1 − floor), floor = σ_n²/(1+σ_n²).

    floor is the variance of a row observed once, the level the largest variance decays to as a label's rows run
    out (MiniLM embeddings, σ_n² = 1: 0.60 after 200 of AG News dev's 1,000 possible groups, 0.50 after 6,000 of
    SST-2 train's 6,061). An absolute threshold below it never fires: the old default 0.05 did not. `threshold` is the
    share of the prior variance above that floor the least-covered row may keep (jobs/benchmarks/benchmark_selection_scale.py
    --thresholds prints where each value stops).
    """
    floor = cfg.noise / (1.0 + cfg.noise)
    return floor + cfg.threshold * (1.0 - floor)


def density_sample(rows: np.ndarray, seed: int) -> np.ndarray:
    """The density_weighted rule's reference rows for a label: a seeded sorted sample of DENSITY_SAMPLE of `rows`."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=min(DENSITY_SAMPLE, rows.shape[0]), replace=False))


def raw_density(unit: np.ndarray, rows: np.ndarray, sample: np.ndarray, kernel: str, tau: float) -> np.ndarray:
    """Local density of each of `unit[rows]`: the mean kernel value κ_d to the `sample` rows (density_sample), κ_d
    the GP's kernel at DENSITY_BANDWIDTH × τ. Cost len(rows) × DENSITY_SAMPLE × d: whoever holds the rows computes it
    from the sample alone."""
    sample_sq = np.einsum("ij,ij->i", sample, sample)
    density = np.empty(rows.shape[0])
    # float32 distances: a density estimate needs no better, and this is the one N-sized product of the rule
    for start in range(0, rows.shape[0], VARIANCE_CHUNK):
        block = unit[rows[start:start + VARIANCE_CHUNK]]
        sq = np.einsum("ij,ij->i", block, block)[:, None] + sample_sq[None, :] - 2.0 * (block @ sample.T)
        np.maximum(sq, 0.0, out=sq)
        density[start:start + block.shape[0]] = kernel_from_sq_dist(sq, kernel, DENSITY_BANDWIDTH * tau,
                                                                    overwrite=True).mean(axis=1)
    return density


def density_weights(density: np.ndarray) -> np.ndarray:
    """A label's weights from its rows' raw_density: scaled to a largest value of 1, raised to DENSITY_POWER."""
    return (density / density.max()) ** DENSITY_POWER


def state_bytes_needed(unit_rows: list[int], unit_selected: list[int], engine: str, partition_rows: int,
                       inducing_rows: int = 0) -> int:
    """Bytes of float32 state for these scope units (rows, planned selected rows each): exact n·|S| per unit;
    partitioned Σ_p n_p·|S_p| ≤ min(n, partition_rows)·|S| of V (each partition holds ≤ partition_rows rows,
    Σ_p |S_p| = |S|), times PARTITION_GROWTH for the room a growing partition allocates ahead; for a unit cut into
    partitions also n·M float32 inducing features and |S|·M float64 of h (M = min(inducing_rows, n))."""
    if engine == "exact":
        return 4 * sum(n * m for n, m in zip(unit_rows, unit_selected))
    v = math.ceil(4 * PARTITION_GROWTH * sum(min(n, partition_rows) * m for n, m in zip(unit_rows, unit_selected)))
    return v + sum((4 * n + 8 * m) * min(inducing_rows, n) for n, m in zip(unit_rows, unit_selected)
                   if n > partition_rows)


def resolve_engine(cfg: SelectionConfig, unit_rows: list[int], unit_selected: list[int]) -> str:
    """exact or partitioned, as `selection.engine` says or (auto) exact when its state fits `max_state_gib`; a
    ConfigError with the arithmetic when the chosen engine's state does not fit, before anything is allocated."""
    budget = int(cfg.max_state_gib * 2**30)
    exact = state_bytes_needed(unit_rows, unit_selected, "exact", cfg.partition_rows)
    engine = cfg.engine if cfg.engine != "auto" else ("exact" if exact <= budget else "partitioned")
    needed = state_bytes_needed(unit_rows, unit_selected, engine, cfg.partition_rows, cfg.inducing_rows)
    if needed > budget:
        scope = f"{len(unit_rows)} GP scope unit(s), {sum(unit_rows):,} rows, {sum(unit_selected):,} rows selected"
        formula = ("4 B × Σ n·|S|" if engine == "exact"
                   else f"{PARTITION_GROWTH} × 4 B × Σ min(n, partition_rows={cfg.partition_rows})·|S| + 4 B × Σ "
                        f"(n + 2·|S|)·min(inducing_rows={cfg.inducing_rows}, n)")
        raise ConfigError(f"selection.engine={engine} needs {needed:,} B = {needed / 2**30:.2f} GiB of GP state "
                          f"({formula}; {scope}) but selection.max_state_gib is {cfg.max_state_gib:g} GiB = "
                          f"{budget:,} B: raise it, lower "
                          f"selection.max_groups, selection.partition_rows or selection.inducing_rows, or use engine "
                          f"partitioned")
    return engine


def place_partitions(units: list[int], loads: list[float], num_shards: int) -> list[int]:
    """The shard of each partition (`units[pid]` its scope unit, `loads` each unit's planned selected rows).

    With at least `num_shards` units, whole units go to shards, the largest load first onto the least loaded shard
    (ties: the lower unit, the lower shard): a unit's groups never depend on another unit's, so the tracker runs
    different shards' units at once. With fewer units than shards, partitions go round robin (pid % num_shards):
    the shards then divide a unit's memory, and its groups stay sequential."""
    n_units = len(loads)
    if n_units < num_shards:
        return [pid % num_shards for pid in range(len(units))]
    shard_load = [0.0] * num_shards
    unit_shard = [0] * n_units
    for u in sorted(range(n_units), key=lambda u: (-loads[u], u)):
        unit_shard[u] = min(range(num_shards), key=lambda s: (shard_load[s], s))
        shard_load[unit_shard[u]] += loads[u]
    return [unit_shard[u] for u in units]
