"""Benchmark the weight fit: 50k synthetic × 60k real MiniLM rows, d = 384, single process against shard actors.
Prints wall time, peak memory and the largest weight difference; asserts nothing.

Run: python jobs/benchmark_alignment.py [--shards 2] [--projections 1000]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
from bench_common import cached_embeddings

from synalign_ray.alignment.distributed import AlignmentShard, fit_distributed, ray_spawn, start_shards
from synalign_ray.alignment.mmd import FitParams, fit_weights, make_feature_map
from synalign_ray.config import AlignmentConfig

SYNTHETIC_ROWS = 50_000


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


def run(shards: int = 2, projections: int = 1000, features: str | None = None, steps: int | None = None,
        threads: int = 1) -> list[dict]:
    """Fit the same weights single-process and on shard actors; print the comparison, return table rows."""
    defaults = AlignmentConfig()
    features = features or defaults.features
    real, syn = load()
    params = FitParams(steps=steps or defaults.steps, learning_rate=defaults.learning_rate, entropy=defaults.entropy,
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
    return [{"stage": "alignment fit 50k x 60k (s)", "ours": single_s, "baseline": 10.0,
             "ratio": single_s / 10.0, "target": "<= 10 s (ratio <= 1)"},
            {"stage": f"alignment fit, {shards} shards vs single (s)", "ours": fit_s, "baseline": single_s,
             "ratio": fit_s / single_s, "target": f"identical result (max |Δω| {max_diff:.1e})"}]


def main() -> None:
    defaults = AlignmentConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--projections", type=int, default=1000)
    ap.add_argument("--features", default=defaults.features)
    ap.add_argument("--steps", type=int, default=defaults.steps)
    ap.add_argument("--threads", type=int, default=1, help="in-process shards of the single-process fit")
    args = ap.parse_args()
    run(args.shards, args.projections, args.features, args.steps, args.threads)


if __name__ == "__main__":
    main()
