"""Benchmark: the `synalign embed` stage (Ray Data reads the file, encodes on the actor pool, writes the parts)
against plain single-process SentenceTransformer.encode of the same rows, and the driver's memory meanwhile.

Run: .venv/bin/python jobs/benchmarks/benchmark_embedding.py [--rows 60614] [--actors 2] [--batch-size 256]
Prints rows/s of both and their ratio (target >= 0.95x), peak memory of each and the driver's; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

from bench_common import DATA_DIR, PeakRSS, Row, compared, print_rows, write_json

SST2_TRAIN = DATA_DIR / "sst2_train.parquet"


def run(rows: int | None = None, actors: int = 2, batch_size: int = 256) -> list[Row]:
    """Measure both ways on the same rows; returns benchmark-table rows."""
    import tempfile

    import numpy as np
    import psutil
    import ray

    from synalign_ray import real_input
    from synalign_ray.config import build_config
    from synalign_ray.models import load_sentence_transformer
    from synalign_ray.stages.embed import embed_stage, read_embedded

    out = tempfile.mkdtemp(prefix="synalign_bench_embed_")
    overrides = [f"data.path={SST2_TRAIN}", f"embedding.num_actors={actors}", f"embedding.batch_size={batch_size}",
                 f"output.path={out}", "output.overwrite=true"]
    if rows:
        overrides.append(f"data.sample_rows={rows}")
    cfg = build_config({}, overrides)
    table = real_input.read_real_rows(cfg.data)
    texts = table.column("text").to_pylist()
    n = len(texts)
    table_mib = table.nbytes / 2**20
    del table

    with PeakRSS() as mem_base:
        t0 = time.perf_counter()
        model = load_sentence_transformer(cfg.embedding.model)
        base_emb = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        base_s = time.perf_counter() - t0
    del model

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        driver_before = psutil.Process().memory_info().rss
        with PeakRSS() as mem_ray, PeakRSS(driver_only=True) as mem_driver:
            t0 = time.perf_counter()
            embed_stage(cfg)  # the `synalign embed` path: Ray Data reads the file, encodes, writes the parts
            ray_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    ray_emb = read_embedded(out, cfg)[1]
    max_diff = float(np.abs(ray_emb - base_emb).max())
    ratio = (n / ray_s) / (n / base_s)
    driver_growth = (mem_driver.peak - driver_before) / 2**20
    print(f"\nembedding {n} SST-2 rows file to file, {actors} encoder actor(s), Ray Data batch {batch_size}")
    print(f"  single-process encode: {base_s:8.1f} s  {n / base_s:8.1f} rows/s  peak RSS {mem_base.peak / 2**30:.2f} GiB")
    print(f"  Ray Data pipeline:     {ray_s:8.1f} s  {n / ray_s:8.1f} rows/s  peak RSS {mem_ray.peak / 2**30:.2f} GiB "
          "(driver + Ray processes)")
    print(f"  driver RSS growth during the stage {driver_growth:.0f} MiB; the rows with their embeddings "
          f"{table_mib + n * 384 * 4 / 2**20:.0f} MiB (the rows never reach the driver)")
    print(f"  ratio (Ray / single): {ratio:.2f}x  (target >= 0.95x); max |difference| {max_diff:.2e}")
    return [compared("embedding (rows/s)", n / ray_s, n / base_s, ratio, ">= 0.95x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="seeded subsample (default: all 60,614 rows)")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", help="also write the result rows as JSON to this file")
    args = parser.parse_args()
    rows = run(args.rows, args.actors, args.batch_size)
    print_rows(rows)
    write_json(args.json, rows, args)


if __name__ == "__main__":
    main()
