"""`synalign align`: fit alignment weights on shard actors (λ searched to a diversity target), resample ζ rows, write
Parquet parts (local or s3://), compare all / uniform / aligned rows with the fit's real rows and with held-out real
rows the fit never saw, and write the manifest last.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from synalign_ray import metrics, runtime
from synalign_ray.alignment.distributed import (SOURCE_REAL, SOURCE_SYNTHETIC, call_all, draw_distributed,
                                                 ray_spawn, search_distributed, start_shards)
from synalign_ray.alignment.importance import importance_weights
from synalign_ray.alignment.mmd import DiversityTarget, FitParams, SearchSettings, fit_fixed, make_feature_map
from synalign_ray.alignment.plan import FitPlan, check_inputs
from synalign_ray.alignment.resample import STREAM_UNIFORM_BASELINE, distinct_fraction, output_schema, rng_for
from synalign_ray.config import StorageConfig, SynAlignConfig
from synalign_ray.errors import ConfigError
from synalign_ray.io import Location
from synalign_ray.run_folder import RunFolder, settings_for

IMPORTANCE_COLUMN = "importance_weight"
# Distances are computed on seeded samples of at most this many rows per side: exact W1 is cubic in it.
METRIC_ROWS = 2000


def _progress(message: str) -> None:
    print(f"[align] {message}", flush=True)


def _distances(name: str, emb: np.ndarray, real_sample: np.ndarray, texts: list[str], seed: int,
               bandwidth: float, reference: str) -> dict[str, Any]:
    """Distances of `emb` (a seeded sample of it) to `real_sample`: in_sample (the fit's rows) or held_out."""
    rng = rng_for(seed, STREAM_UNIFORM_BASELINE, 1)
    m = min(len(real_sample), len(emb))
    sample = emb[rng.choice(len(emb), size=m, replace=False)]
    real = real_sample[:m]
    out = {"reference": reference, "rows": len(emb), "mmd2_rbf": metrics.mmd2_rbf(sample, real, bandwidth=bandwidth),
           "wasserstein1": metrics.wasserstein1(sample, real),
           "sliced_wasserstein": metrics.sliced_wasserstein(sample, real, seed=seed),
           "vocabulary_size": metrics.vocabulary_size(texts), "duplicate_rate": metrics.duplicate_rate(texts)}
    _progress(f"{reference:>9} {name:>8}: rows={out['rows']} MMD²={out['mmd2_rbf']:.5f} W1={out['wasserstein1']:.4f} "
              f"SW={out['sliced_wasserstein']:.4f} vocab={out['vocabulary_size']} "
              f"dup={out['duplicate_rate']:.3f}")
    return out


def align(cfg: SynAlignConfig, real: pa.Table, real_emb: np.ndarray, synthetic: pa.Table, syn_emb: np.ndarray,
          output: Location | RunFolder, storage: StorageConfig | None = None) -> dict[str, Any]:
    """Fit (λ searched or set) → resample → write parts → in-sample and held-out metrics → manifest.

    `output`: a RunFolder the caller opened, or a Location, opened here under the usual rule (the rows are the
    caller's, so its fingerprint holds the data and alignment settings only). Inputs are checked before either.
    """
    real_emb = np.asarray(real_emb, dtype=np.float32)
    syn_emb = np.asarray(syn_emb, dtype=np.float32)
    plan = check_inputs(cfg, real, real_emb, synthetic, syn_emb)
    if isinstance(output, RunFolder):
        return _align(cfg, plan, real, real_emb, synthetic, syn_emb, output)
    with RunFolder(output, storage).open(settings_for(cfg, ("data", "alignment")), cfg.output.overwrite) as folder:
        return folder.reused if folder.reused is not None else _align(cfg, plan, real, real_emb, synthetic, syn_emb,
                                                                        folder)


def _align(cfg: SynAlignConfig, plan: FitPlan, real: pa.Table, real_emb: np.ndarray, synthetic: pa.Table,
           syn_emb: np.ndarray, folder: RunFolder) -> dict[str, Any]:
    started = time.perf_counter()
    a = cfg.alignment
    output, storage = folder.loc, folder.storage
    text_col, label_col = cfg.data.text_column, cfg.data.label_column
    has_labels = plan.real_labels is not None and plan.syn_labels is not None
    group_names, syn_groups, size = plan.group_names, plan.syn_groups, plan.size
    if plan.missing:
        _progress(f"real labels {plan.missing} have no synthetic rows: their share goes to the other labels")
    _progress(f"{synthetic.num_rows} synthetic rows, {real.num_rows} real rows ({int(plan.fitted.sum())} fitted, "
              f"{int(plan.held_out.sum())} held out), d={syn_emb.shape[1]}, weighting={a.weighting}, "
              f"groups={group_names}, size={size}")

    syn_rows = synthetic
    if a.weighting in ("importance", "both"):
        t = time.perf_counter()
        seen = ~plan.held_out
        imp = importance_weights(real_emb[seen], plan.real_labels[seen], syn_emb, plan.syn_labels, seed=a.seed)
        syn_rows = synthetic.append_column(IMPORTANCE_COLUMN, pa.array(imp, type=pa.float64())) \
            if IMPORTANCE_COLUMN not in synthetic.column_names else \
            synthetic.set_column(synthetic.column_names.index(IMPORTANCE_COLUMN), IMPORTANCE_COLUMN, pa.array(imp))
        _progress(f"importance weights: mean={imp.mean():.3f} min={imp.min():.3f} max={imp.max():.3f} "
                  f"({time.perf_counter() - t:.1f}s)")

    fit_rows = real_emb[plan.fitted]
    feature_map = make_feature_map(a.features, a.projections, fit_rows, a.seed) \
        if a.weighting in ("mmd", "both") else None
    import ray

    cpus = ray.available_resources().get("CPU", 1.0) if ray.is_initialized() else 1.0
    spawn = ray_spawn(num_cpus=min(1.0, max(cpus, 0.01) / a.num_shards))
    handles = start_shards(spawn, a.num_shards, syn_emb, syn_groups, real_emb, plan.fit_groups, feature_map,
                           len(group_names), syn_rows=syn_rows, real_rows=real)
    shard_sizes = np.stack(ray.get([h.group_sizes.remote() for h in handles]))
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
                  f"{fit_report['mmd_after']:.5f}, ESS {fit_report['ess']:.0f} of {synthetic.num_rows}")

    positions = draw_distributed(handles, counts, shard_shares, log_norm, group_sizes, a.seed)
    fixed = [pa.field("text", pa.string())]
    if has_labels:
        fixed.append(pa.field("label", pa.string()))
    fixed += [pa.field("source", pa.string()), pa.field("weight", pa.float64()), pa.field("row_index", pa.int64())]
    if a.weighting in ("importance", "both"):
        fixed.append(pa.field(IMPORTANCE_COLUMN, pa.float64()))
    drop = {text_col, label_col}
    schema = output_schema(fixed, *[pa.schema([f for f in t.schema if f.name not in drop]) for t in (syn_rows, real)])
    label_out = label_col if has_labels else None
    parts: list[str] = []
    for i, h in enumerate(handles):
        parts += ray.get(h.write_synthetic.remote(positions[i], log_norm, group_sizes, shares, output.url, storage,
                                                  schema, text_col, label_out, cfg.output.rows_per_part))
    if a.mix_real:
        for h in handles:
            parts += ray.get(h.write_real.remote(output.url, storage, schema, text_col, label_out,
                                                 cfg.output.rows_per_part))
    shard_starts = np.cumsum([0] + shard_sizes.sum(1).tolist())
    chosen = np.concatenate([p + shard_starts[i] for i, p in enumerate(positions)])
    distinct = distinct_fraction(chosen)
    _progress(f"resampled {len(chosen)} rows ({distinct:.1%} distinct) into {len(parts)} parts at {output.url}")

    rng = rng_for(a.seed, STREAM_UNIFORM_BASELINE)
    uniform = rng.choice(len(syn_emb), size=size, replace=True)
    fitted_rows, held_rows = np.flatnonzero(plan.fitted), np.flatnonzero(plan.held_out)
    in_sample = real_emb[rng.choice(fitted_rows, size=min(METRIC_ROWS, len(fitted_rows)), replace=False)]
    syn_texts = np.asarray(synthetic.column(text_col).to_pylist(), dtype=object)
    # One bandwidth, from the fit rows, puts in-sample and held-out MMD² on the same scale.
    bandwidth = metrics.median_pairwise_distance(in_sample, seed=a.seed)
    draws = (("all", np.arange(len(syn_emb))), ("random", uniform), ("aligned", chosen))
    report = {name: _distances(name, syn_emb[idx], in_sample, syn_texts[idx].tolist(), a.seed, bandwidth,
                               "in_sample") for name, idx in draws}
    held_report = None
    if len(held_rows):
        held = real_emb[rng.choice(held_rows, size=min(METRIC_ROWS, len(held_rows)), replace=False)]
        held_report = {name: _distances(name, syn_emb[idx], held, syn_texts[idx].tolist(), a.seed, bandwidth,
                                        "held_out") for name, idx in draws}

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
        "counts": {"synthetic_input": synthetic.num_rows, "real_input": real.num_rows, "resampled": int(len(chosen)),
                   "real_mixed": real.num_rows if a.mix_real else 0,
                   "rows": int(len(chosen)) + (real.num_rows if a.mix_real else 0),
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
