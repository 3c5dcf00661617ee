"""Benchmark: the generator pool's output tokens/s against bare `vllm.LLM.generate` on the same prompts (the
default output format's two stages) and engine settings. What the rows are worth: jobs/benchmarks/benchmark_quality.py.

Run: .venv/bin/python jobs/benchmarks/benchmark_generation.py [--groups 16] [--samples 5]   (prints; asserts nothing)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench_common import Row, compared, print_rows, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SST2_DEV = REPO.parent / "shared" / "data" / "sst2_dev.parquet"


class BareEngine:
    """Baseline actor body: the same Engine settings, prompts sent straight to `vllm.LLM.generate`."""

    def __init__(self, cfg):
        from synalign_ray.generation.engine import Engine

        self.engine = Engine(cfg)

    def run(self, prompts, seeds, sampling) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        inputs = [TokensPrompt(prompt_token_ids=self.engine.prompt_ids(p.messages, p.answer_prefix)) for p in prompts]
        params = [SamplingParams(n=p.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 repetition_penalty=sampling.repetition_penalty,
                                 max_tokens=p.max_tokens or sampling.max_tokens, seed=s, stop=list(p.stop) or None,
                                 structured_outputs=StructuredOutputsParams(json=p.schema) if p.schema else None)
                  for p, s in zip(prompts, seeds)]
        t0 = time.perf_counter()
        outs = self.engine.llm.generate(inputs, params, use_tqdm=False)
        return {"seconds": time.perf_counter() - t0,
                "answers": [([o.text for o in out.outputs], [o.finish_reason for o in out.outputs]) for out in outs],
                "completion_tokens": sum(len(o.token_ids) for out in outs for o in out.outputs)}


def _groups(n_groups: int, group_size: int, seed: int):
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(SST2_DEV)
    rng = np.random.default_rng(seed)
    labels = table.column("label").to_pylist()
    groups = []
    for gid in range(n_groups):
        label = ("negative", "positive")[gid % 2]
        pool = [i for i, lab in enumerate(labels) if lab == label]
        ids = sorted(int(i) for i in rng.choice(pool, size=group_size, replace=False))
        groups.append({"group_id": gid, "label": label, "anchor_row_id": ids[0], "demo_row_ids": ids,
                       "variance_at_selection": 1.0, "tau": 0.0})
    return table, groups


def run(n_groups: int = 16, samples: int = 5, group_size: int = 8, seed: int = 0) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from synalign_ray.config import build_config
    from synalign_ray.generation import modes as M, parsing, presets, prompts as P
    from synalign_ray.generation.worker import request_seed
    from synalign_ray.stages.generate import generate_stage

    table, groups = _groups(n_groups, group_size, seed)
    texts = table.column("text").to_pylist()
    work = Path(tempfile.mkdtemp(prefix="synalign-bench-gen-"))
    pq.write_table(table, work / "real.parquet")
    pq.write_table(pa.Table.from_pylist(groups), work / "schedule.parquet")
    # One batch of all groups: the pool gets the same concurrency as the bare baseline, so the ratio measures
    # what the pool adds (Ray dispatch, parsing, retries, Parquet parts, ledger).
    cfg = build_config({}, [f"data.path={work / 'real.parquet'}", f"output.path={work / 'pool'}",
                            f"generation.samples_per_summary={samples}", f"generation.groups_per_batch={n_groups}"])
    g = cfg.generation
    preset = presets.load_preset(g.preset)
    budgets = P.char_budgets(preset, samples, g.sampling.max_tokens)
    n_cpus = os.cpu_count() or 1
    ray.init(num_cpus=n_cpus, include_dashboard=False, log_to_driver=False)
    try:
        bare = ray.remote(BareEngine).options(num_cpus=g.num_cpus_per_generator).remote(g)
        fmt = g.output_format
        stage1 = [M.stage1_prompt(preset, [texts[i] for i in grp["demo_row_ids"]], grp["label"], fmt, budgets)
                  for grp in groups]
        seeds1 = [request_seed(g.sampling.seed, grp["group_id"], "stage1", 0) for grp in groups]
        first = ray.get(bare.run.remote(stage1, seeds1, g.sampling))
        summaries = []
        for answers, finishes in first["answers"]:
            try:
                summaries.append(M.parse_stage1(preset, fmt, answers, finishes))
            except parsing.ParseFailure:
                summaries.append({presets.attribute_key(a): "unknown" for a in preset.attributes})
        stage2 = [M.stage2_prompt(preset, g.mode, fmt, samples, budgets, [texts[i] for i in grp["demo_row_ids"]],
                                  grp["label"], s) for s, grp in zip(summaries, groups)]
        seeds2 = [request_seed(g.sampling.seed, grp["group_id"], "stage2", 0) for grp in groups]
        second = ray.get(bare.run.remote(stage2, seeds2, g.sampling))
        ray.kill(bare)
        bare_tokens = first["completion_tokens"] + second["completion_tokens"]
        bare_tps = bare_tokens / (first["seconds"] + second["seconds"])

        manifest = generate_stage(cfg, str(work / "schedule.parquet"))
    finally:
        ray.shutdown()
    pool_tps = manifest["pool"]["output_tokens_per_second"]
    print(f"\ngeneration: {n_groups} SST-2 groups of {group_size}, {samples} samples per summary, {g.model}, "
          f"{g.mode}, {g.output_format} format")
    print(f"  bare vllm.LLM.generate: {bare_tokens} output tokens, {bare_tps:7.1f} tokens/s")
    print(f"  generator pool:         {sum(t['completion'] for t in manifest['tokens'].values())} output tokens, "
          f"{pool_tps:7.1f} tokens/s (busy {manifest['pool']['busy_fraction']:.0%}, "
          f"{len(manifest['failed_groups'])} failed groups, retries included)")
    print(f"  ratio (pool / bare): {pool_tps / bare_tps:.2f}x  (target >= 0.9x)")
    return [compared("generation (output tokens/s)", pool_tps, bare_tps,
                     pool_tps / bare_tps, ">= 0.9x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--json", help="also write the result rows as JSON to this file")
    args = parser.parse_args()
    rows = run(args.groups, args.samples, args.group_size)
    print_rows(rows)
    write_json(args.json, rows, args)


if __name__ == "__main__":
    main()
