"""Benchmark: the Ray Data embedding stage against plain single-process SentenceTransformer.encode, same rows.

Run: .venv/bin/python jobs/benchmarks/benchmark_embedding.py [--rows 60614] [--actors 2] [--batch-size 256]
Prints rows/s of both and their ratio (target >= 0.95x), plus peak memory of each; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

from bench_common import DATA_DIR, PeakRSS, Row, compared, print_rows, write_json

SST2_TRAIN = DATA_DIR / "sst2_train.parquet"


def run(rows: int | None = None, actors: int = 2, batch_size: int = 256) -> list[Row]:
    """Measure both ways on the same rows; returns benchmark-table rows."""
    import numpy as np
    import ray

    from synalign_ray import io
    from synalign_ray.config import build_config
    from synalign_ray.models import load_sentence_transformer
    from synalign_ray.stages.embed import embed_rows

    overrides = [f"data.path={SST2_TRAIN}", f"embedding.num_actors={actors}", f"embedding.batch_size={batch_size}"]
    if rows:
        overrides.append(f"data.sample_rows={rows}")
    cfg = build_config({}, overrides)
    table = io.read_real_rows(cfg.data)
    texts = table.column("text").to_pylist()
    n = len(texts)

    with PeakRSS() as mem_base:
        t0 = time.perf_counter()
        model = load_sentence_transformer(cfg.embedding.model)
        base_emb = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        base_s = time.perf_counter() - t0
    del model

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        with PeakRSS() as mem_ray:
            t0 = time.perf_counter()
            out = embed_rows(table, cfg, "text")
            ray_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    ray_emb = io.embeddings_from_arrow(out.column(io.EMBEDDING))
    max_diff = float(np.abs(ray_emb - base_emb).max())
    ratio = (n / ray_s) / (n / base_s)
    print(f"\nembedding {n} SST-2 rows, {actors} encoder actor(s), Ray Data batch {batch_size}")
    print(f"  single-process encode: {base_s:8.1f} s  {n / base_s:8.1f} rows/s  peak RSS {mem_base.peak / 2**30:.2f} GiB")
    print(f"  Ray Data actor pool:   {ray_s:8.1f} s  {n / ray_s:8.1f} rows/s  peak RSS {mem_ray.peak / 2**30:.2f} GiB "
          "(driver + Ray processes)")
    print(f"  ratio (Ray / single): {ratio:.2f}x  (target >= 0.95x); max |difference| {max_diff:.2e}")
    return [compared("embedding (rows/s)", n / ray_s, n / base_s, ratio,
                     ">= 0.95x")]


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
