"""Load test on this machine: 200k synthetic x 60k real rows through distributed alignment and weighted
resampling, and GP selection over 60k real rows with 2,000 selected. Prints wall time and peak RSS; asserts nothing.

Run: .venv/bin/python jobs/benchmarks/load_test.py [--synthetic 200000] [--size 50000] [--shards 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
from bench_common import PeakRSS, Row, cached_embeddings, compared, print_rows, write_json


def synthetic_pool(n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """n rows drawn from real SST-2 train and AG News dev (AG News with random SST-2 labels), embeddings jittered
    and renormalised so no two rows coincide: a large, skewed stand-in for an LLM-written pool."""
    sst, sst_emb = cached_embeddings("sst2_train")
    news, news_emb = cached_embeddings("agnews_dev")
    rng = np.random.default_rng(seed)
    texts = sst.column("text").to_pylist() + news.column("text").to_pylist()
    labels = sst.column("label").to_pylist() + list(rng.choice(["negative", "positive"], size=news.num_rows))
    emb = np.vstack([sst_emb, news_emb])
    pick = rng.integers(0, len(texts), size=n)
    out = emb[pick] + rng.normal(scale=0.02, size=(n, emb.shape[1])).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    table = pa.table({"text": [texts[i] for i in pick], "label": [labels[i] for i in pick],
                      "group_id": pa.array(pick // 10, pa.int64())})
    return table, out.astype(np.float32)


def run(synthetic: int = 200_000, size: int = 50_000, shards: int = 2, seed: int = 0) -> list[Row]:
    import ray

    from synalign_ray import io
    from synalign_ray.alignment.align import align
    from synalign_ray.config import SelectionConfig, build_config
    from synalign_ray.selection.schedule import build_schedule

    real, real_emb = cached_embeddings("sst2_train")
    syn, syn_emb = synthetic_pool(synthetic, seed)
    out = tempfile.mkdtemp(prefix="synalign-load-")
    cfg = build_config({}, [f"alignment.num_shards={shards}", f"alignment.size={size}", f"output.path={out}"])
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        with PeakRSS() as mem_align:
            t0 = time.perf_counter()
            manifest = align(cfg, real, real_emb, syn, syn_emb, io.resolve(out), cfg.storage)
            align_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    labels = real.column("label").to_pylist()
    with PeakRSS() as mem_select:
        t0 = time.perf_counter()
        schedule = build_schedule(SelectionConfig(k=9, max_groups=200), real_emb, labels, np.arange(len(labels)))
        select_s = time.perf_counter() - t0
    print(f"\nload test on {os.cpu_count()} CPUs")
    print(f"  alignment + resampling: {synthetic} synthetic x {len(real_emb)} real rows, {shards} shards, "
          f"{size} drawn: {align_s:.1f} s, peak RSS {mem_align.peak / 2**30:.2f} GiB (driver + Ray workers); "
          f"MMD² random {manifest['metrics']['random']['mmd2_rbf']:.5f} -> aligned "
          f"{manifest['metrics']['aligned']['mmd2_rbf']:.5f}, {manifest['counts']['distinct_fraction']:.1%} distinct")
    print(f"  selection: {len(real_emb)} real rows, {schedule.num_rows} groups x 10 = "
          f"{sum(len(x) for x in schedule.column('demo_row_ids').to_pylist())} rows selected: {select_s:.1f} s, "
          f"peak RSS {mem_select.peak / 2**30:.2f} GiB")
    return [compared(f"load: align {synthetic // 1000}k x {len(real_emb) // 1000}k", align_s,
                     float("nan"), float("nan"), f"fits in memory ({mem_align.peak / 2**30:.1f} GiB)"),
            compared(f"load: select 2k of {len(real_emb) // 1000}k", select_s, float("nan"),
                     float("nan"), f"fits in memory ({mem_select.peak / 2**30:.1f} GiB)")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", type=int, default=200_000)
    p.add_argument("--size", type=int, default=50_000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--json", help="also write the result rows as JSON to this file")
    a = p.parse_args()
    rows = run(a.synthetic, a.size, a.shards)
    print_rows(rows)
    write_json(a.json, rows, a)


if __name__ == "__main__":
    main()
