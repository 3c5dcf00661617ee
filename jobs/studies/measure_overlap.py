"""Measurement for `synalign run`: embed the generated rows as their batches land (one encoder actor next to the
generators), or in one Ray Data pass after generation (what the pipeline does). Which gives the rows sooner?

Run: .venv/bin/python jobs/studies/measure_overlap.py [--groups 12] [--rounds 2]   (prints; asserts nothing)
The demo's settings (synalign_ray/configs/local.yaml); the same seeded groups in both variants, so the generated
rows are the same, and one generator pool (engine start-up excluded) for every round. Variants alternate per round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# bench_common (the row type, data and caches) lives beside the benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_common import Row, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the result rows as JSON to this file")
    args = parser.parse_args()

    import numpy as np
    import pyarrow as pa
    import ray

    from synalign_ray import io, real_input
    from synalign_ray.config import DEFAULT_RUN_CONFIG, load_config
    from synalign_ray.embedding import Encoder
    from synalign_ray.generation.pool import GeneratorPool
    from synalign_ray.generation.presets import load_preset
    from synalign_ray.runtime import ray_session
    from synalign_ray.selection.schedule import build_schedule
    from synalign_ray.stages.embed import embed_rows
    from synalign_ray.stages.generate import groups_of, with_texts

    cfg = load_config(DEFAULT_RUN_CONFIG, [f"selection.max_groups={args.groups}"])
    g = cfg.generation
    real = real_input.read_real_rows(cfg.data)
    texts = dict(zip(real.column(io.ROW_ID).to_pylist(), real.column(cfg.data.text_column).to_pylist()))
    with ray_session(cfg.resources):
        embedded = embed_rows(real, cfg, cfg.data.text_column)
        schedule = build_schedule(cfg.selection, io.embeddings_from_arrow(embedded.column(io.EMBEDDING)),
                                  embedded.column(cfg.data.label_column).to_pylist(),
                                  embedded.column(io.ROW_ID).to_numpy()).to_pylist()
        groups = groups_of(with_texts(schedule, texts), set())
        batches = [groups[i:i + g.groups_per_batch] for i in range(0, len(groups), g.groups_per_batch)]
        preset = load_preset(g.preset, g.presets_file)
        pool = GeneratorPool(g, cfg.resources.cache_dir)

        def after() -> tuple[float, float, int]:
            rows: list[dict] = []
            t0 = time.monotonic()
            pool.run(iter(batches), lambda result: rows.extend(result.rows), g, preset)
            generated = time.monotonic() - t0
            table = pa.Table.from_pylist(rows).append_column(io.ROW_ID, pa.array(np.arange(len(rows))))
            embed_rows(table, cfg, "text")
            return generated, time.monotonic() - t0, len(rows)

        def as_they_land() -> tuple[float, float, int]:
            encoder = ray.remote(Encoder).options(num_cpus=cfg.embedding.num_cpus_per_actor).remote(
                cfg.embedding.model, "text", cfg.embedding.device, cfg.embedding.max_seq_length)
            pending, count = [], [0]

            def on_result(result) -> None:
                pending.append(encoder.encode.remote([r["text"] for r in result.rows]))
                count[0] += len(result.rows)

            t0 = time.monotonic()
            pool.run(iter(batches), on_result, g, preset)
            generated = time.monotonic() - t0
            ray.get(pending)
            total = time.monotonic() - t0
            ray.kill(encoder)
            return generated, total, count[0]

        print(f"\noverlap: {len(groups)} groups in {len(batches)} batches of {g.groups_per_batch}, "
              f"{g.samples_per_summary} samples each, {os.cpu_count()} CPUs, engine already up")
        print("| round | variant | generation s | rows embedded at s | rows |")
        print("| --- | --- | --- | --- | --- |")
        results: dict[str, list[float]] = {"one pass after": [], "as they land": []}
        table_rows: list[Row] = []
        for rnd in range(args.rounds):
            order = [("one pass after", after), ("as they land", as_they_land)]
            for name, variant in order if rnd % 2 == 0 else order[::-1]:
                generated, total, n_rows = variant()
                results[name].append(total)
                table_rows.append(Row(f"round {rnd}: {name}", {"generation_s": generated, "rows_embedded_at_s": total,
                                                               "rows": n_rows}))
                print(f"| {rnd} | {name} | {generated:.1f} | {total:.1f} | {n_rows} |", flush=True)
        pool.shutdown()
    means = {name: float(np.mean(v)) for name, v in results.items()}
    print("mean time to embedded rows: " + ", ".join(f"{k} {v:.1f} s" for k, v in means.items())
          + f"; as they land / one pass after = {means['as they land'] / means['one pass after']:.2f}")
    write_json(args.json, table_rows, args, mean_seconds_to_embedded_rows=means)


if __name__ == "__main__":
    main()
