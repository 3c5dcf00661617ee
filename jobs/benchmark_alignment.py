"""Benchmark the weight fit: 50k synthetic × 60k real MiniLM rows, d = 384, single process against shard actors.
Prints wall time, peak memory and the largest weight difference; asserts nothing.

Run: python jobs/benchmark_alignment.py [--cache /tmp/synalign_bench] [--shards 2] [--projections 1000]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np

from synalign_ray.alignment.distributed import AlignmentShard, fit_distributed, ray_spawn, start_shards
from synalign_ray.alignment.mmd import FitParams, fit_weights, make_feature_map
from synalign_ray.config import AlignmentConfig

SYNTHETIC_ROWS = 50_000


class MeasuredShard(AlignmentShard):
    """An AlignmentShard that also reports its process's peak resident memory."""

    def peak_rss_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real: all SST-2 train rows. Synthetic: AG News dev + SST-2 dev + the first SST-2 train rows, 50k in all."""
    train = np.load(cache / "sst2_train_emb.npy")
    parts = [np.load(cache / "agnews_dev_emb.npy"), np.load(cache / "sst2_dev_emb.npy")]
    parts.append(train[: SYNTHETIC_ROWS - sum(len(p) for p in parts)])
    return train, np.vstack(parts)


def main() -> None:
    defaults = AlignmentConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/tmp/synalign_bench", help="holds *_emb.npy from measure_alignment.py")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--projections", type=int, default=1000)
    ap.add_argument("--features", default=defaults.features)
    ap.add_argument("--steps", type=int, default=defaults.steps)
    ap.add_argument("--threads", type=int, default=1, help="in-process shards of the single-process fit")
    args = ap.parse_args()
    real, syn = load(Path(args.cache))
    params = FitParams(steps=args.steps, learning_rate=defaults.learning_rate, entropy=defaults.entropy,
                       momentum=defaults.momentum)
    real_groups, syn_groups = np.zeros(len(real), np.int64), np.zeros(len(syn), np.int64)
    # Other jobs on the machine inflate wall times; print the load so readers can judge a table.
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{len(syn)} synthetic × {len(real)} real rows, d={real.shape[1]}, {args.features} |Θ|={args.projections}, "
          f"steps={params.steps}, lr={params.learning_rate}, λ={params.entropy}, momentum={params.momentum}")

    threads = args.threads
    t = time.perf_counter()
    fmap = make_feature_map(args.features, args.projections, real, seed=0)
    single_w, single = fit_weights(real, real_groups, syn, syn_groups, fmap, params, threads=threads)
    single_s = time.perf_counter() - t
    single_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    import ray

    ray.init(num_cpus=args.shards, include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    spawn = ray_spawn(num_cpus=1)
    handles = start_shards(lambda _cls, *a: spawn(MeasuredShard, *a), args.shards, syn, syn_groups, real,
                           real_groups, fmap, 1)
    ray.get([h.group_sizes.remote() for h in handles])
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    dist = fit_distributed(handles, params)
    fit_s = time.perf_counter() - t
    dist_w = np.concatenate(ray.get([h.row_weights.remote(dist.totals.log_norm, None) for h in handles]))
    shard_mb = ray.get([h.peak_rss_mb.remote() for h in handles])
    ray.shutdown()

    print(f"{'run':<28}{'wall s':>9}{'ratio':>8}{'peak MiB':>10}  notes")
    print(f"{f'single process, {threads} threads':<28}{single_s:>9.2f}{1.0:>8.2f}{single_mb:>10.0f}  "
          "features + fit; peak RSS includes the loaded embeddings")
    print(f"{f'{args.shards} shard actors (fit)':<28}{fit_s:>9.2f}{fit_s / single_s:>8.2f}{max(shard_mb):>10.0f}  "
          f"+ {start_s:.1f}s actor start and feature transform; peak RSS per actor "
          f"{', '.join(f'{m:.0f}' for m in shard_mb)} MiB")
    print(f"MMD² (feature space) {single.summary()['mmd_before']:.5f} -> {single.summary()['mmd_after']:.5f}, "
          f"ESS {single.ess.sum():.0f}; distributed − single: max |Δω| = {np.abs(dist_w - single_w).max():.2e}, "
          f"max |Δω|/max ω = {np.abs(dist_w - single_w).max() / single_w.max():.2e}")


if __name__ == "__main__":
    main()
