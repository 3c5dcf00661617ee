"""Benchmark alignment. Speed: 50k synthetic × 60k real MiniLM rows, d = 384, one fit single-process against shard
actors (wall time, peak memory, largest weight difference). Diversity: `align` with its defaults (λ searched to
min_distinct) on a skewed SST-2 + AG News pool against SST-2 train, beside baselines from the same run.
Asserts nothing.

Run: python jobs/benchmarks/benchmark_alignment.py [--only speed,diversity] [--shards 2] [--projections 1000]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np
import pyarrow as pa
from bench_common import Row, cached_embeddings, compared, print_rows, write_json

from synalign_ray.alignment.distributed import AlignmentShard, fit_distributed, ray_spawn, start_shards
from synalign_ray.alignment.mmd import FitParams, fit_weights, make_feature_map
from synalign_ray.config import AlignmentConfig

SYNTHETIC_ROWS = 50_000
# The speed benchmark times one fit at a fixed λ (the former default); the λ search is timed by diversity().
SPEED_ENTROPY = 0.0005


class MeasuredShard(AlignmentShard):
    """An AlignmentShard that also reports its process's peak resident memory."""

    def peak_rss_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load() -> tuple[np.ndarray, np.ndarray]:
    """Real: all SST-2 train rows. Synthetic: AG News dev + SST-2 dev + the first SST-2 train rows, 50k in all."""
    train = cached_embeddings("sst2_train")[1]
    parts = [cached_embeddings("agnews_dev")[1], cached_embeddings("sst2_dev")[1]]
    parts.append(train[: SYNTHETIC_ROWS - sum(len(p) for p in parts)])
    return train, np.vstack(parts)


def speed(shards: int = 2, projections: int = 1000, features: str | None = None, steps: int | None = None,
          threads: int = 1) -> list[Row]:
    """Fit the same weights single-process and on shard actors; print the comparison, return table rows."""
    defaults = AlignmentConfig()
    features = features or defaults.features
    real, syn = load()
    params = FitParams(steps=steps or defaults.steps, learning_rate=defaults.learning_rate, entropy=SPEED_ENTROPY,
                       momentum=defaults.momentum)
    real_groups, syn_groups = np.zeros(len(real), np.int64), np.zeros(len(syn), np.int64)
    # Other jobs on the machine inflate wall times; print the load so readers can judge a table.
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{len(syn)} synthetic × {len(real)} real rows, d={real.shape[1]}, {features} |Θ|={projections}, "
          f"steps={params.steps}, lr={params.learning_rate}, λ={params.entropy}, momentum={params.momentum}")

    t = time.perf_counter()
    fmap = make_feature_map(features, projections, real, seed=0)
    single_w, single = fit_weights(real, real_groups, syn, syn_groups, fmap, params, threads=threads)
    single_s = time.perf_counter() - t
    single_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    import ray

    ray.init(num_cpus=shards, include_dashboard=False, log_to_driver=False)
    try:
        t = time.perf_counter()
        spawn = ray_spawn(num_cpus=1)
        handles = start_shards(lambda _cls, *a: spawn(MeasuredShard, *a), shards, syn, syn_groups, real,
                               real_groups, fmap, 1)
        ray.get([h.group_sizes.remote() for h in handles])
        start_s = time.perf_counter() - t
        t = time.perf_counter()
        dist = fit_distributed(handles, params)
        fit_s = time.perf_counter() - t
        dist_w = np.concatenate(ray.get([h.row_weights.remote(dist.totals.log_norm, None) for h in handles]))
        shard_mb = ray.get([h.peak_rss_mb.remote() for h in handles])
    finally:
        ray.shutdown()

    print(f"{'run':<28}{'wall s':>9}{'ratio':>8}{'peak MiB':>10}  notes")
    print(f"{f'single process, {threads} threads':<28}{single_s:>9.2f}{1.0:>8.2f}{single_mb:>10.0f}  "
          "features + fit; peak RSS includes the loaded embeddings")
    print(f"{f'{shards} shard actors (fit)':<28}{fit_s:>9.2f}{fit_s / single_s:>8.2f}{max(shard_mb):>10.0f}  "
          f"+ {start_s:.1f}s actor start and feature transform; peak RSS per actor "
          f"{', '.join(f'{m:.0f}' for m in shard_mb)} MiB")
    max_diff = float(np.abs(dist_w - single_w).max())
    print(f"MMD² (feature space) {single.summary()['mmd_before']:.5f} -> {single.summary()['mmd_after']:.5f}, "
          f"ESS {single.ess.sum():.0f}; distributed − single: max |Δω| = {max_diff:.2e}, "
          f"max |Δω|/max ω = {max_diff / single_w.max():.2e}")
    return [compared("alignment fit 50k x 60k (s)", single_s, 10.0,
                     single_s / 10.0, "<= 10 s (ratio <= 1)"),
            compared(f"alignment fit, {shards} shards vs single (s)", fit_s, single_s,
                     fit_s / single_s, f"identical result (max |Δω| {max_diff:.1e})")]


DIVERSITY_SIZE = 6000


def diversity_pool(seed: int = 0, short_only: bool = False) -> tuple[pa.Table, np.ndarray, pa.Table, np.ndarray]:
    """(real rows, embeddings, pool rows, embeddings). Real: a seeded 40% of SST-2 train (24,245 rows). Pool (26,598
    rows), as a generator that writes mostly short phrases, some whole reviews and off-task text might: the other 60%
    of SST-2 train, each row kept with probability min(1, (2 / words)²) (median 2 words against the real rows' 7),
    all of SST-2 dev (whole sentences), and all AG News dev rows with seeded random SST-2 labels (junk in both).
    short_only: a harder pool below the 20,000-row size: real is half of SST-2 train, the pool its other half's short
    phrases and the AG News junk, without SST-2 dev (18,268 rows)."""
    table, emb = cached_embeddings("sst2_train")
    dev_table, dev_emb = cached_embeddings("sst2_dev")
    news_table, news_emb = cached_embeddings("agnews_dev")
    rng = np.random.default_rng(seed)
    real = np.zeros(table.num_rows, bool)
    real[rng.choice(table.num_rows, size=int((0.5 if short_only else 0.4) * table.num_rows), replace=False)] = True
    words = np.array([len(t.split()) for t in table.column("text").to_pylist()])
    rest = np.flatnonzero(~real)
    kept = rest[rng.random(len(rest)) < np.minimum(1.0, (2.0 / words[rest]) ** 2)]
    news = pa.table({"text": news_table.column("text"),
                     "label": pa.array(rng.choice(["negative", "positive"], size=news_table.num_rows))})
    dev = dev_table.slice(0, 0 if short_only else dev_table.num_rows)
    pool_rows = pa.concat_tables([table.take(pa.array(kept)).select(["text", "label"]), dev.select(["text", "label"]),
                                  news])
    pool_rows = pool_rows.append_column("is_junk", pa.array(np.r_[np.zeros(len(kept) + dev.num_rows, bool),
                                                                    np.ones(news.num_rows, bool)]))
    real_idx = np.flatnonzero(real)
    return (table.take(pa.array(real_idx)).select(["text", "label"]), emb[real_idx], pool_rows,
            np.vstack([emb[kept], dev_emb[:dev.num_rows], news_emb]))


def _accuracy(train_emb: np.ndarray, train_labels: np.ndarray, test_emb: np.ndarray, test_labels: np.ndarray,
              seed: int) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(train_emb, train_labels)
    return float((clf.predict(test_emb) == test_labels).mean())


def diversity(size: int = DIVERSITY_SIZE, seed: int = 0, short_only: bool = False) -> list[Row]:
    """`align` with the default config (λ searched to min_distinct, 20% of real rows held out) against baselines
    from the same run: a uniform draw (MMD²), a uniform draw with the real label shares (accuracy), and one fit at
    the λ the search chose (fit time)."""
    import ray

    from synalign_ray.alignment.align import align
    from synalign_ray.alignment.plan import plan_fit
    from synalign_ray.alignment.resample import allot, draw_within
    from synalign_ray.config import build_config
    from synalign_ray.io import read_parts, resolve

    real, real_emb, pool, pool_emb = diversity_pool(seed, short_only)
    junk = np.asarray(pool.column("is_junk"))
    pool_labels = np.asarray(pool.column("label").to_pylist())
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"real {real.num_rows} SST-2 train rows; pool {pool.num_rows} rows ({junk.mean():.0%} AG News junk, "
          f"positive share {np.mean(pool_labels == 'positive'):.2f} vs real "
          f"{np.mean(np.asarray(real.column('label').to_pylist()) == 'positive'):.2f}); draw {size}")
    cfg = build_config({}, [f"alignment.size={size}", f"alignment.seed={seed}"])
    plan = plan_fit(cfg, real, pool)
    held_emb, held_labels = real_emb[plan.held_out], plan.real_labels[plan.held_out]
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        out = tempfile.mkdtemp(prefix="synalign-diversity-")
        auto = align(cfg, real, real_emb, pool, pool_emb, resolve(f"{out}/auto"), None)
        chosen = auto["fit"]["entropy"]
        one = align(build_config({}, [f"alignment.size={size}", f"alignment.seed={seed}",
                                      f"alignment.entropy={chosen!r}"]),
                    real, real_emb, pool, pool_emb, resolve(f"{out}/one"), None)
    finally:
        ray.shutdown()
    drawn = np.asarray(read_parts(resolve(f"{out}/auto")).column("row_index"))
    # The accuracy baseline: uniform within each label, the label counts the aligned draw uses.
    by_label = np.concatenate([np.flatnonzero(pool_labels == name)[draw_within(
        np.ones(int((pool_labels == name).sum())), int(count), seed, g, 0)]
        for g, (name, count) in enumerate(zip(plan.group_names, allot(size, plan.shares)))])
    acc_aligned = _accuracy(pool_emb[drawn], pool_labels[drawn], held_emb, held_labels, seed)
    acc_random = _accuracy(pool_emb[by_label], pool_labels[by_label], held_emb, held_labels, seed)
    search = auto["fit"]["entropy_search"]
    print(f"λ search: {search['fits']} fits, {search['total_steps']} steps, chose λ={chosen:.3g}: {search['reason']}")
    print(f"{'λ':>10}{'MMD² feat':>11}{'E distinct':>12}{'ESS':>9}{'steps':>7}  meets")
    for p in search["frontier"]:
        print(f"{p['entropy']:>10.3g}{p['mmd2_features']:>11.5f}{p['expected_distinct']:>12.3f}{p['ess']:>9.0f}"
              f"{p['steps']:>7}  {p['meets_target']}{'  <- chosen' if p['entropy'] == chosen else ''}")
    held, ins = auto["metrics_held_out"], auto["metrics"]
    print(f"{'draw':<10}{'MMD² held-out':>15}{'MMD² in-sample':>16}{'W1 held-out':>13}{'junk share':>12}")
    for name, idx in (("all", np.arange(pool.num_rows)), ("random", None), ("aligned", drawn)):
        share = f"{junk[idx].mean():>12.3f}" if idx is not None else f"{'':>12}"
        print(f"{name:<10}{held[name]['mmd2_rbf']:>15.5f}{ins[name]['mmd2_rbf']:>16.5f}"
              f"{held[name]['wasserstein1']:>13.4f}{share}")
    distinct = auto["counts"]["distinct_fraction"]
    mmd_ratio = held["aligned"]["mmd2_rbf"] / held["random"]["mmd2_rbf"]
    time_ratio = auto["fit"]["seconds"] / one["fit"]["seconds"]
    print(f"distinct {distinct:.1%} (expected {search['achieved']['expected_distinct']:.1%}); held-out MMD² aligned/"
          f"random {mmd_ratio:.3f}; accuracy on held-out real rows {acc_aligned:.4f} aligned vs {acc_random:.4f} "
          f"random with real label shares; fit {auto['fit']['seconds']:.1f} s searched vs "
          f"{one['fit']['seconds']:.1f} s one fit at λ={chosen:.3g} (ratio {time_ratio:.2f})")
    return [compared(f"alignment: distinct share of {size} drawn", distinct, 0.5,
                     distinct / 0.5, ">= 0.5 (ratio >= 1)"),
            compared("alignment: MMD² to held-out real rows", held["aligned"]["mmd2_rbf"],
                     held["random"]["mmd2_rbf"], mmd_ratio, "<= 0.1x uniform draw"),
            compared("alignment: accuracy on held-out real rows", acc_aligned, acc_random,
                     acc_aligned / acc_random, ">= random draw, real label shares (ratio >= 1)"),
            compared("alignment: λ search fit time (s)", auto["fit"]["seconds"],
                     one["fit"]["seconds"], time_ratio, "<= 3x one fit")]


def run(shards: int = 2, projections: int = 1000) -> list[Row]:
    """Both benchmarks, for jobs/benchmarks/benchmark.py's combined table."""
    return speed(shards, projections) + diversity()


def main() -> None:
    defaults = AlignmentConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="speed,diversity")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--projections", type=int, default=1000)
    ap.add_argument("--features", default=defaults.features)
    ap.add_argument("--steps", type=int, default=defaults.steps)
    ap.add_argument("--threads", type=int, default=1, help="in-process shards of the single-process fit")
    ap.add_argument("--size", type=int, default=DIVERSITY_SIZE, help="rows the diversity benchmark draws")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--short-only", action="store_true", help="the harder pool without SST-2 dev (18,268 rows)")
    ap.add_argument("--json", help="also write the result rows as JSON to this file")
    args = ap.parse_args()
    only = args.only.split(",")
    rows = []
    if "speed" in only:
        rows += speed(args.shards, args.projections, args.features, args.steps, args.threads)
    if "diversity" in only:
        rows += diversity(args.size, args.seed, args.short_only)
    print_rows(rows)
    write_json(args.json, rows, args)


if __name__ == "__main__":
    main()
