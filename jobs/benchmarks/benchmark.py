"""Every benchmark in one process, one table: stage, our figure, the baseline measured in the same run, ratio,
target. Nothing is asserted: these machines are noisy, so only same-run ratios mean anything.

Run: .venv/bin/python jobs/benchmarks/benchmark.py [--only embedding,selection,generation,alignment,load,demo] [--quick]
     [--json results.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import benchmark_alignment
import benchmark_embedding
import benchmark_generation
import benchmark_selection
import load_test
from bench_common import Row, compared, machine, print_rows, write_json


def demo(_quick: bool) -> list[Row]:
    """The local demo end to end: wall time per stage and how busy the generator was once its engine was up."""
    from synalign_ray.config import DEFAULT_RUN_CONFIG, load_config
    from synalign_ray.stages.run import run_stage

    out = tempfile.mkdtemp(prefix="synalign-demo-")
    t0 = time.perf_counter()
    manifest = run_stage(load_config(DEFAULT_RUN_CONFIG, [f"output.path={out}"]))
    total = time.perf_counter() - t0
    gen = manifest["timings_this_invocation"]
    print(f"\ndemo: {total:.1f} s in all; " + ", ".join(f"{k} {v:.1f} s" for k, v in gen.items())
          + f"; generator busy {manifest['generator_busy_fraction']:.0%} of generation wall time")
    rows = [compared(f"demo: {k} (s)", v, total, v / total, "share of run")
            for k, v in gen.items()]
    rows.append(compared("demo: total (s)", total, 300.0, total / 300.0,
                         "< 5 min (ratio < 1)"))
    rows.append(compared("demo: generator busy", manifest["generator_busy_fraction"], 1.0,
                         manifest["generator_busy_fraction"], ">= 0.9"))
    return rows


BENCHMARKS = {
    "embedding": lambda quick: benchmark_embedding.run(rows=10_000 if quick else None),
    "selection": lambda quick: benchmark_selection.run(),
    "generation": lambda quick: benchmark_generation.run(n_groups=8 if quick else 16),
    "alignment": lambda quick: benchmark_alignment.run(),
    "load": lambda quick: load_test.run(synthetic=50_000 if quick else 200_000),
    "demo": demo,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHMARKS))
    p.add_argument("--quick", action="store_true", help="smaller inputs where a benchmark allows it")
    p.add_argument("--json", help="also write the result rows as JSON to this file")
    a = p.parse_args()
    rows: list[Row] = []
    for name in a.only.split(","):
        print(f"\n=== {name} ===", flush=True)
        rows += BENCHMARKS[name](a.quick)
    m = machine()
    print(f"\nmachine: {m['cpus']} CPUs ({m['processor']}), {m['ram_gib']:.0f} GiB RAM, Python {m['python']}, "
          f"load average {m['load_average']:.1f}")
    print_rows(rows, first="stage")
    write_json(a.json, rows, a)


if __name__ == "__main__":
    main()
