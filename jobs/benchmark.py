"""Every benchmark in one process, one table: stage, our figure, the baseline measured in the same run, ratio,
target. Nothing is asserted: these machines are noisy, so only same-run ratios mean anything.

Run: .venv/bin/python jobs/benchmark.py [--only embedding,selection,generation,alignment,load,demo] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time

import benchmark_alignment
import benchmark_embedding
import benchmark_generation
import benchmark_selection
import load_test


def demo(_quick: bool) -> list[dict]:
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
    rows = [{"stage": f"demo: {k} (s)", "ours": v, "baseline": total, "ratio": v / total, "target": "share of run"}
            for k, v in gen.items()]
    rows.append({"stage": "demo: total (s)", "ours": total, "baseline": 300.0, "ratio": total / 300.0,
                 "target": "< 5 min (ratio < 1)"})
    rows.append({"stage": "demo: generator busy", "ours": manifest["generator_busy_fraction"], "baseline": 1.0,
                 "ratio": manifest["generator_busy_fraction"], "target": ">= 0.9"})
    return rows


BENCHMARKS = {
    "embedding": lambda quick: benchmark_embedding.run(rows=10_000 if quick else None),
    "selection": lambda quick: benchmark_selection.run(),
    "generation": lambda quick: benchmark_generation.run(n_groups=8 if quick else 16),
    "alignment": lambda quick: benchmark_alignment.run(),
    "load": lambda quick: load_test.run(synthetic=50_000 if quick else 200_000),
    "demo": demo,
}


def _fmt(x) -> str:
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHMARKS))
    p.add_argument("--quick", action="store_true", help="smaller inputs where a benchmark allows it")
    a = p.parse_args()
    rows: list[dict] = []
    for name in a.only.split(","):
        print(f"\n=== {name} ===", flush=True)
        rows += BENCHMARKS[name](a.quick)
    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {os.cpu_count()} CPUs ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} "
          f"GiB RAM, Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    print(f"| {'stage':<44} | {'ours':>10} | {'baseline':>10} | {'ratio':>7} | target |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 12}|{'-' * 9}|--------|")
    for r in rows:
        print(f"| {r['stage']:<44} | {_fmt(r['ours']):>10} | {_fmt(r['baseline']):>10} | {_fmt(r['ratio']):>7} | "
              f"{r['target']} |")


if __name__ == "__main__":
    main()
