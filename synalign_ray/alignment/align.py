"""`synalign align`: fit alignment weights on shard actors (λ searched to a diversity target), resample ζ rows, write
Parquet parts (local or s3://), compare all / uniform / aligned rows with the fit's real rows and with held-out real
rows the fit never saw, and write the manifest last.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from synalign_ray import io, metrics, runtime
from synalign_ray.alignment.distributed import (SOURCE_REAL, SOURCE_SYNTHETIC, ShardSet, call_all, draw_distributed,
                                                 ray_spawn, search_distributed, spawn_shards, start_shards)
from synalign_ray.alignment.importance import checker_sample, fit_checkers
from synalign_ray.alignment.mmd import (DiversityTarget, FitParams, SearchSettings, fit_fixed, make_feature_map,
                                        split_ranges)
from synalign_ray.alignment.plan import FitPlan, check_inputs, check_tables
from synalign_ray.alignment.rows import FolderRows, id_ranges
from synalign_ray.alignment.resample import STREAM_UNIFORM_BASELINE, distinct_fraction, output_schema, rng_for
from synalign_ray.config import StorageConfig, SynAlignConfig
from synalign_ray.errors import ConfigError, InputError
from synalign_ray.io import Location
from synalign_ray.run_folder import RunFolder, settings_for

IMPORTANCE_COLUMN = "importance_weight"
# Distances are computed on seeded samples of at most this many rows per side: exact W1 is cubic in it.
METRIC_ROWS = 2000


def _progress(message: str) -> None:
    print(f"[align] {message}", flush=True)


def _distances(name: str, shards: ShardSet, positions: np.ndarray, real_sample: np.ndarray, text_column: str,
               seed: int, bandwidth: float, reference: str) -> dict[str, Any]:
    """Distances of the synthetic rows at `positions` (a seeded sample of them, gathered from the shards) to
    `real_sample`: in_sample (the fit's rows) or held_out; vocabulary and duplicates over all of them."""
    rng = rng_for(seed, STREAM_UNIFORM_BASELINE, 1)
    m = min(len(real_sample), len(positions))
    sample = shards.gather(SOURCE_SYNTHETIC, positions[rng.choice(len(positions), size=m, replace=False)])
    real = real_sample[:m]
    vocabulary, duplicates = shards.text_stats(positions, text_column)
    out = {"reference": reference, "rows": len(positions),
           "mmd2_rbf": metrics.mmd2_rbf(sample, real, bandwidth=bandwidth),
           "wasserstein1": metrics.wasserstein1(sample, real),
           "sliced_wasserstein": metrics.sliced_wasserstein(sample, real, seed=seed),
           "vocabulary_size": vocabulary, "duplicate_rate": duplicates}
    _progress(f"{reference:>9} {name:>8}: rows={out['rows']} MMD²={out['mmd2_rbf']:.5f} W1={out['wasserstein1']:.4f} "
              f"SW={out['sliced_wasserstein']:.4f} vocab={out['vocabulary_size']} "
              f"dup={out['duplicate_rate']:.3f}")
    return out


def align(cfg: SynAlignConfig, real: pa.Table, real_emb: np.ndarray, synthetic: pa.Table, syn_emb: np.ndarray,
          output: Location | RunFolder, storage: StorageConfig | None = None) -> dict[str, Any]:
    """Fit (λ searched or set) → resample → write parts → in-sample and held-out metrics → manifest, for rows the
    caller holds (the shards get slices of them).

    `output`: a RunFolder the caller opened, or a Location, opened here under the usual rule (the rows are the
    caller's, so its fingerprint holds the data and alignment settings only). Inputs are checked before either.
    """
    real_emb = np.asarray(real_emb, dtype=np.float32)
    syn_emb = np.asarray(syn_emb, dtype=np.float32)
    plan = check_inputs(cfg, real, real_emb, synthetic, syn_emb)

    def shards() -> ShardSet:
        return ShardSet(start_shards(_spawn(cfg), cfg.alignment.num_shards, syn_emb, plan.syn_groups, real_emb,
                                     plan.fit_groups, None, len(plan.group_names), syn_rows=synthetic,
                                     real_rows=real))

    if isinstance(output, RunFolder):
        return _align(cfg, plan, shards, output)
    with RunFolder(output, storage).open(settings_for(cfg, ("data", "alignment")), cfg.output.overwrite) as folder:
        return folder.reused if folder.reused is not None else _align(cfg, plan, shards, folder)


def scan_folder(cfg: SynAlignConfig, rows: FolderRows, name: str) -> pa.Table:
    """A folder's row ids and labels (when it has the label column) under the alignment's names: what the plan
    checks read."""
    stored_as = {rows.rename.get(c, c): c for c in rows.schema().names}  # the alignment's name -> stored name
    if cfg.data.text_column not in stored_as:
        raise InputError(f"text column '{cfg.data.text_column}' not found in the {name} set ({rows.url})")
    label = stored_as.get(cfg.data.label_column) if cfg.data.label_column else None
    return rows.scan([label] if label else [])


def align_folders(cfg: SynAlignConfig, real: FolderRows, synthetic: FolderRows, folder: RunFolder) -> dict[str, Any]:
    """`align` for rows in completed folders (a run's embeddings and its kept generated rows): the driver scans
    their ids and labels for the plan, and each shard reads its own row-id range of the parts."""
    scans = {"real": scan_folder(cfg, real, "real"), "synthetic": scan_folder(cfg, synthetic, "synthetic")}
    plan = check_tables(cfg, scans["real"], scans["synthetic"])

    def shards() -> ShardSet:
        def slices(rows: FolderRows, ids: np.ndarray):
            ranges = split_ranges(len(ids), cfg.alignment.num_shards)
            return ranges, [rows.slice(*span) for span in id_ranges(ids, ranges)]

        return ShardSet(spawn_shards(_spawn(cfg), slices(synthetic, scans["synthetic"].column(io.ROW_ID).to_numpy()),
                                     plan.syn_groups, slices(real, scans["real"].column(io.ROW_ID).to_numpy()),
                                     plan.fit_groups, None, len(plan.group_names)))

    return _align(cfg, plan, shards, folder)


def _spawn(cfg: SynAlignConfig):
    import ray

    cpus = ray.available_resources().get("CPU", 1.0) if ray.is_initialized() else 1.0
    return ray_spawn(num_cpus=min(1.0, max(cpus, 0.01) / cfg.alignment.num_shards))


def _align(cfg: SynAlignConfig, plan: FitPlan, start: Callable[[], ShardSet], folder: RunFolder) -> dict[str, Any]:
    started = time.perf_counter()
    a = cfg.alignment
    output, storage = folder.loc, folder.storage
    text_col, label_col = cfg.data.text_column, cfg.data.label_column
    has_labels = plan.real_labels is not None and plan.syn_labels is not None
    group_names, syn_groups, size = plan.group_names, plan.syn_groups, plan.size
    n_syn, n_real = len(syn_groups), len(plan.real_groups)
    shards = start()
    syn_dim, real_dim = shards.dims
    if syn_dim != real_dim:
        raise InputError(f"embedding dimensions differ: real {real_dim}, synthetic {syn_dim} "
                         "(embed both sets with the same model)")
    if plan.missing:
        _progress(f"real labels {plan.missing} have no synthetic rows: their share goes to the other labels")
    _progress(f"{n_syn} synthetic rows, {n_real} real rows ({int(plan.fitted.sum())} fitted, "
              f"{int(plan.held_out.sum())} held out) on {len(shards.handles)} shard(s), d={syn_dim}, "
              f"weighting={a.weighting}, groups={group_names}, size={size}")

    if a.weighting in ("importance", "both"):
        # The two checkers train here on seeded samples of at most CHECKER_ROWS rows a side, gathered from the
        # shards; each shard then weighs its own rows.
        t = time.perf_counter()
        seen = np.flatnonzero(~plan.held_out)
        seen = seen[checker_sample(len(seen), a.seed)]
        syn_sample = checker_sample(n_syn, a.seed)
        checkers = fit_checkers(shards.gather(SOURCE_REAL, seen), plan.real_labels[seen],
                                shards.gather(SOURCE_SYNTHETIC, syn_sample), plan.syn_labels[syn_sample], seed=a.seed)
        mean, low, high = shards.set_importance(IMPORTANCE_COLUMN, checkers, np.asarray(plan.syn_labels))
        _progress(f"importance weights: mean={mean:.3f} min={low:.3f} max={high:.3f} (checkers on {len(seen)} real "
                  f"and {len(syn_sample)} synthetic rows, {time.perf_counter() - t:.1f}s)")

    fitted_rows, held_rows = np.flatnonzero(plan.fitted), np.flatnonzero(plan.held_out)
    feature_map = None
    if a.weighting in ("mmd", "both"):
        # The feature map's bandwidth needs only the rows median_pairwise_distance samples of the fitted rows.
        sample = shards.gather(SOURCE_REAL, fitted_rows[metrics.median_sample(len(fitted_rows), seed=a.seed)])
        feature_map = make_feature_map(a.features, a.projections, sample, a.seed)
        shards.call("use_features", feature_map)
    handles = shards.handles
    import ray

    shard_sizes = np.stack(shards.call("group_sizes"))
    shard_nodes = runtime.node_ids(handles)
    group_sizes = shard_sizes.sum(0)
    real_counts = np.bincount(plan.real_groups[plan.real_groups >= 0], minlength=len(group_names))
    fitted_counts = np.bincount(plan.real_groups[plan.fitted], minlength=len(group_names))
    shares, counts = plan.shares, plan.counts

    fit_report: dict[str, Any] = {}
    log_norm = None
    shard_shares = shard_sizes / group_sizes
    if feature_map is not None:
        t = time.perf_counter()
        target = DiversityTarget(counts, a.min_distinct, a.min_ess)
        try:
            if a.entropy == "auto":
                search = search_distributed(handles, SearchSettings(
                    steps=a.steps, warm_steps=a.search_steps, max_fits=a.search_fits,
                    learning_rate=a.learning_rate, momentum=a.momentum), target)
            else:
                search = fit_fixed(call_all(handles), FitParams(steps=a.steps, learning_rate=a.learning_rate,
                                                                entropy=a.entropy, momentum=a.momentum), target)
        except ValueError as err:
            raise ConfigError(f"alignment fit: {err}") from None
        result = search.fit
        log_norm = result.totals.log_norm
        shard_shares = result.totals.shard_shares
        fit_report = {**result.summary(), "features": a.features, "projections": a.projections,
                      "bandwidth": feature_map.bandwidth, "entropy_search": search.summary(target),
                      "seconds": round(time.perf_counter() - t, 3)}
        _progress(f"fit {a.features} |Θ|={a.projections} in {fit_report['seconds']}s: λ={result.entropy:.3g} "
                  f"({search.mode}, {len(search.frontier)} fits: {search.reason}); expected distinct "
                  f"{search.expected_distinct:.1%}; MMD² (feature space, fit rows) {fit_report['mmd_before']:.5f} -> "
                  f"{fit_report['mmd_after']:.5f}, ESS {fit_report['ess']:.0f} of {n_syn}")

    positions = draw_distributed(handles, counts, shard_shares, log_norm, group_sizes, a.seed)
    fixed = [pa.field("text", pa.string())]
    if has_labels:
        fixed.append(pa.field("label", pa.string()))
    fixed += [pa.field("source", pa.string()), pa.field("weight", pa.float64()), pa.field("row_index", pa.int64())]
    if a.weighting in ("importance", "both"):
        fixed.append(pa.field(IMPORTANCE_COLUMN, pa.float64()))
    drop = {text_col, label_col}
    schema = output_schema(fixed, *[pa.schema([f for f in t if f.name not in drop]) for t in shards.call("schemas")[0]])
    label_out = label_col if has_labels else None
    parts: list[str] = []
    for i, h in enumerate(handles):
        parts += ray.get(h.write_synthetic.remote(positions[i], log_norm, group_sizes, shares, output.url, storage,
                                                  schema, text_col, label_out, cfg.output.rows_per_part))
    if a.mix_real:
        for h in handles:
            parts += ray.get(h.write_real.remote(output.url, storage, schema, text_col, label_out,
                                                 cfg.output.rows_per_part))
    chosen = np.concatenate([p + shards.starts[SOURCE_SYNTHETIC][i] for i, p in enumerate(positions)])
    distinct = distinct_fraction(chosen)
    _progress(f"resampled {len(chosen)} rows ({distinct:.1%} distinct) into {len(parts)} parts at {output.url}")

    rng = rng_for(a.seed, STREAM_UNIFORM_BASELINE)
    uniform = rng.choice(n_syn, size=size, replace=True)
    in_sample = shards.gather(SOURCE_REAL, rng.choice(fitted_rows, size=min(METRIC_ROWS, len(fitted_rows)),
                                                      replace=False))
    # One bandwidth, from the fit rows, puts in-sample and held-out MMD² on the same scale.
    bandwidth = metrics.median_pairwise_distance(in_sample, seed=a.seed)
    draws = (("all", np.arange(n_syn)), ("random", uniform), ("aligned", chosen))
    report = {name: _distances(name, shards, idx, in_sample, text_col, a.seed, bandwidth, "in_sample")
              for name, idx in draws}
    held_report = None
    if len(held_rows):
        held = shards.gather(SOURCE_REAL, rng.choice(held_rows, size=min(METRIC_ROWS, len(held_rows)),
                                                     replace=False))
        held_report = {name: _distances(name, shards, idx, held, text_col, a.seed, bandwidth, "held_out")
                       for name, idx in draws}

    per_label = {}
    chosen_groups = syn_groups[chosen]
    for g, name in enumerate(group_names):
        per_label[name] = {"real": int(real_counts[g]), "real_fitted": int(fitted_counts[g]),
                           "real_held_out": int(real_counts[g] - fitted_counts[g]), "synthetic": int(group_sizes[g]),
                           "resampled": int((chosen_groups == g).sum())}
    manifest = {
        "kind": "synalign.align",
        "output": output.url,
        "parts": parts,
        "columns": schema.names,
        "counts": {"synthetic_input": n_syn, "real_input": n_real, "resampled": int(len(chosen)),
                   "real_mixed": n_real if a.mix_real else 0,
                   "rows": int(len(chosen)) + (n_real if a.mix_real else 0),
                   "distinct_resampled": int(np.unique(chosen).size), "distinct_fraction": distinct,
                   "per_label": per_label, "labels_without_synthetic_rows": plan.missing},
        "seeds": {"alignment": a.seed},
        "shard_nodes": shard_nodes,
        "config": cfg.redacted(),
        "fit": fit_report,
        "metrics": report,
        "metrics_held_out": held_report,
        "metrics_real_rows": {"in_sample": int(plan.fitted.sum()), "held_out": int(plan.held_out.sum())},
        "sources": [SOURCE_SYNTHETIC] + ([SOURCE_REAL] if a.mix_real else []),
        "seconds": round(time.perf_counter() - started, 3),
    }
    folder.finish(manifest)
    _progress(f"manifest written to {output.url} ({manifest['seconds']}s)")
    return manifest
