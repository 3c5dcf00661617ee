"""`synalign align`: fit alignment weights on shard actors, resample ζ rows, write Parquet parts (local or s3://),
compare all / uniformly resampled / aligned rows against the real rows, and write the manifest last.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from synalign_ray import metrics
from synalign_ray.alignment.distributed import (SOURCE_REAL, SOURCE_SYNTHETIC, draw_distributed, fit_distributed,
                                                 ray_spawn, start_shards)
from synalign_ray.alignment.importance import importance_weights
from synalign_ray.alignment.mmd import FitParams, make_feature_map
from synalign_ray.alignment.resample import (STREAM_UNIFORM_BASELINE, allot, distinct_fraction, output_schema,
                                             rng_for)
from synalign_ray.config import StorageConfig, SynAlignConfig
from synalign_ray.errors import ConfigError, InputError
from synalign_ray.io import Location, prepare_output, write_manifest

IMPORTANCE_COLUMN = "importance_weight"
# Distances are computed on seeded samples of at most this many rows per side: exact W1 is cubic in it.
METRIC_ROWS = 2000


def _progress(message: str) -> None:
    print(f"[align] {message}", flush=True)


def _labels(table: pa.Table, column: str | None) -> np.ndarray | None:
    if column is None or column not in table.column_names:
        return None
    return np.asarray(table.column(column).cast(pa.string()).to_pylist(), dtype=object)


def check_inputs(cfg: SynAlignConfig, real: pa.Table, real_emb: np.ndarray, synthetic: pa.Table,
                 syn_emb: np.ndarray) -> None:
    """Every input problem as one clear error, before any fitting or writing."""
    a = cfg.alignment
    if a.size is not None and a.size <= 0:
        raise ConfigError(f"alignment.size must be positive, got {a.size}")
    if a.projections <= 0:
        raise ConfigError(f"alignment.projections must be positive, got {a.projections}")
    for name, table, emb in (("real", real, real_emb), ("synthetic", synthetic, syn_emb)):
        if table.num_rows == 0 or len(emb) == 0:
            raise InputError(f"the {name} set is empty")
        if np.ndim(emb) != 2:
            raise InputError(f"{name} embeddings must be a 2-D matrix, got shape {np.shape(emb)}")
        if len(emb) != table.num_rows:
            raise InputError(f"{name} set has {table.num_rows} rows but {len(emb)} embeddings")
        if not np.isfinite(emb).all():
            bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
            raise InputError(f"{name} embeddings hold NaN or infinite values (first at row {bad})")
        if cfg.data.text_column not in table.column_names:
            raise InputError(f"text column '{cfg.data.text_column}' not found in the {name} set")
    if real_emb.shape[1] != syn_emb.shape[1]:
        raise InputError(f"embedding dimensions differ: real {real_emb.shape[1]}, synthetic {syn_emb.shape[1]} "
                         "(embed both sets with the same model)")
    if a.weighting in ("importance", "both"):
        label = cfg.data.label_column
        for name, table in (("real", real), ("synthetic", synthetic)):
            if label is None or label not in table.column_names:
                raise InputError(f"alignment.weighting={a.weighting} needs labels, but the {name} set has no "
                                 f"label column '{label}'")
    if a.weighting in ("mmd", "both") and len(real_emb) < 2:
        raise InputError("the real set needs at least 2 rows to fit alignment weights")


def _groups(cfg: SynAlignConfig, real_labels: np.ndarray | None, syn_labels: np.ndarray | None):
    """Label -> group code when fitting by label (None: one group), the group names, and real labels that no
    synthetic row carries (dropped, so their share goes to the other labels)."""
    if not (cfg.alignment.by_label and real_labels is not None and syn_labels is not None):
        return None, ["all"], []
    names = sorted(set(real_labels.tolist()))
    unknown = sorted(set(syn_labels.tolist()) - set(names))
    if unknown:
        raise InputError(f"synthetic labels {unknown[:5]} do not occur in the real set; fit with "
                         "alignment.by_label=false or fix the labels")
    missing = sorted(set(names) - set(syn_labels.tolist()))
    names = [n for n in names if n not in missing]
    code = {n: i for i, n in enumerate(names)}
    return code, names, missing


def _distances(name: str, emb: np.ndarray, real_sample: np.ndarray, texts: list[str], seed: int,
               bandwidth: float) -> dict[str, float]:
    rng = rng_for(seed, STREAM_UNIFORM_BASELINE, 1)
    m = min(len(real_sample), len(emb))
    sample = emb[rng.choice(len(emb), size=m, replace=False)]
    reference = real_sample[:m]
    out = {"rows": len(emb), "mmd2_rbf": metrics.mmd2_rbf(sample, reference, bandwidth=bandwidth),
           "wasserstein1": metrics.wasserstein1(sample, reference),
           "sliced_wasserstein": metrics.sliced_wasserstein(sample, reference, seed=seed),
           "vocabulary_size": metrics.vocabulary_size(texts), "duplicate_rate": metrics.duplicate_rate(texts)}
    _progress(f"{name:>8}: rows={out['rows']} MMD²={out['mmd2_rbf']:.5f} W1={out['wasserstein1']:.4f} "
              f"SW={out['sliced_wasserstein']:.4f} vocab={out['vocabulary_size']} "
              f"dup={out['duplicate_rate']:.3f}")
    return out


def align(cfg: SynAlignConfig, real: pa.Table, real_emb: np.ndarray, synthetic: pa.Table, syn_emb: np.ndarray,
          output: Location, storage: StorageConfig | None) -> dict[str, Any]:
    """Fit → resample → write parts → metrics → manifest. Returns the manifest."""
    started = time.perf_counter()
    a = cfg.alignment
    real_emb = np.asarray(real_emb, dtype=np.float32)
    syn_emb = np.asarray(syn_emb, dtype=np.float32)
    check_inputs(cfg, real, real_emb, synthetic, syn_emb)
    text_col, label_col = cfg.data.text_column, cfg.data.label_column
    real_labels, syn_labels = _labels(real, label_col), _labels(synthetic, label_col)
    has_labels = real_labels is not None and syn_labels is not None
    code, group_names, missing = _groups(cfg, real_labels, syn_labels)
    if code is not None:
        keep = np.array([lab in code for lab in real_labels], dtype=bool)
        real_groups = np.array([code.get(lab, -1) for lab in real_labels], dtype=np.int64)
        syn_groups = np.array([code[lab] for lab in syn_labels], dtype=np.int64)
    else:
        keep = np.ones(len(real_emb), dtype=bool)
        real_groups = np.zeros(len(real_emb), np.int64)
        syn_groups = np.zeros(len(syn_emb), np.int64)
    if missing:
        _progress(f"real labels {missing} have no synthetic rows: their share goes to the other labels")
    size = a.size if a.size is not None else synthetic.num_rows
    prepare_output(output, cfg.output.overwrite, storage)
    _progress(f"{synthetic.num_rows} synthetic rows, {real.num_rows} real rows, d={syn_emb.shape[1]}, "
              f"weighting={a.weighting}, groups={group_names}, size={size}")

    syn_rows = synthetic
    if a.weighting in ("importance", "both"):
        t = time.perf_counter()
        imp = importance_weights(real_emb, real_labels, syn_emb, syn_labels, seed=a.seed)
        syn_rows = synthetic.append_column(IMPORTANCE_COLUMN, pa.array(imp, type=pa.float64())) \
            if IMPORTANCE_COLUMN not in synthetic.column_names else \
            synthetic.set_column(synthetic.column_names.index(IMPORTANCE_COLUMN), IMPORTANCE_COLUMN, pa.array(imp))
        _progress(f"importance weights: mean={imp.mean():.3f} min={imp.min():.3f} max={imp.max():.3f} "
                  f"({time.perf_counter() - t:.1f}s)")

    fit_rows = real_emb[keep]
    feature_map = make_feature_map(a.features, a.projections, fit_rows, a.seed) \
        if a.weighting in ("mmd", "both") else None
    import ray

    cpus = ray.available_resources().get("CPU", 1.0) if ray.is_initialized() else 1.0
    spawn = ray_spawn(num_cpus=min(1.0, max(cpus, 0.01) / a.num_shards))
    handles = start_shards(spawn, a.num_shards, syn_emb, syn_groups, real_emb, real_groups, feature_map,
                           len(group_names), syn_rows=syn_rows, real_rows=real)
    shard_sizes = np.stack(ray.get([h.group_sizes.remote() for h in handles]))
    group_sizes = shard_sizes.sum(0)
    real_counts = np.bincount(real_groups[keep], minlength=len(group_names))
    shares = real_counts / real_counts.sum()

    fit_report: dict[str, Any] = {}
    log_norm = None
    shard_shares = shard_sizes / group_sizes
    if feature_map is not None:
        t = time.perf_counter()
        params = FitParams(steps=a.steps, learning_rate=a.learning_rate, entropy=a.entropy, momentum=a.momentum)
        try:
            result = fit_distributed(handles, params)
        except ValueError as err:
            raise ConfigError(f"alignment fit: {err}") from None
        log_norm = result.totals.log_norm
        shard_shares = result.totals.shard_shares
        fit_report = {**result.summary(), "features": a.features, "projections": a.projections,
                      "bandwidth": feature_map.bandwidth, "seconds": round(time.perf_counter() - t, 3)}
        _progress(f"fit {a.features} |Θ|={a.projections} in {fit_report['seconds']}s: "
                  f"MMD² (feature space) {fit_report['mmd_before']:.5f} -> {fit_report['mmd_after']:.5f}, "
                  f"ESS {fit_report['ess']:.0f} of {synthetic.num_rows}")

    counts = allot(size, shares)
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
    real_sample = real_emb[rng.choice(len(real_emb), size=min(METRIC_ROWS, len(real_emb)), replace=False)]
    syn_texts = np.asarray(synthetic.column(text_col).to_pylist(), dtype=object)
    bandwidth = metrics.median_pairwise_distance(real_sample, seed=a.seed)
    report = {name: _distances(name, syn_emb[idx], real_sample, syn_texts[idx].tolist(), a.seed, bandwidth)
              for name, idx in (("all", np.arange(len(syn_emb))), ("random", uniform), ("aligned", chosen))}

    per_label = {}
    chosen_groups = syn_groups[chosen]
    for g, name in enumerate(group_names):
        per_label[name] = {"real": int(real_counts[g]), "synthetic": int(group_sizes[g]),
                           "resampled": int((chosen_groups == g).sum())}
    manifest = {
        "kind": "synalign.align",
        "parts": parts,
        "columns": schema.names,
        "counts": {"synthetic_input": synthetic.num_rows, "real_input": real.num_rows, "resampled": int(len(chosen)),
                   "real_mixed": real.num_rows if a.mix_real else 0,
                   "rows": int(len(chosen)) + (real.num_rows if a.mix_real else 0),
                   "distinct_resampled": int(np.unique(chosen).size), "distinct_fraction": distinct,
                   "per_label": per_label, "labels_without_synthetic_rows": missing},
        "seeds": {"alignment": a.seed},
        "config": cfg.redacted(),
        "fit": fit_report,
        "metrics": report,
        "sources": [SOURCE_SYNTHETIC] + ([SOURCE_REAL] if a.mix_real else []),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_manifest(output, manifest, storage)
    _progress(f"manifest written to {output.url} ({manifest['seconds']}s)")
    return manifest
