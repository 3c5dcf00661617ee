"""What the generators write, judged against real rows that were not in the input: modes x output formats on the
same demonstration groups and seeds, with the real-vs-real ceiling beside them.

Run: .venv/bin/python jobs/benchmarks/benchmark_quality.py [--preset sst2|agnews] [--groups 24]
     [--variants text:two_stage,...]
Prints one table (rows, share passing every check, kept rows, two-sample AUC, label agreement, MAUVE, distinct-2,
near-copies, output tokens/s) and a few rows of each variant; writes the same as JSON with --json PATH.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
import pyarrow as pa
from bench_common import cached_embeddings

from synalign_ray import quality
from synalign_ray.config import GenerationConfig, QualityConfig, SelectionConfig
from synalign_ray.generation.presets import load_preset
from synalign_ray.generation.worker import Generator, Group
from synalign_ray.selection.schedule import build_schedule

REFERENCE_ROWS = 2000
VARIANTS = ("text:two_stage", "text:one_stage", "text:simprompt", "json:two_stage", "json:one_stage",
            "json:simprompt")
# The input and the held-out reference per preset: (input file, reference file). AG News has one shared file, so its
# input is half of it and the reference comes from the other half.
DATA = {"sst2": ("sst2_dev", "sst2_train"), "agnews": ("agnews_dev", "agnews_dev")}


def split(preset: str, seed: int):
    """(input rows, input embeddings, reference rows, reference embeddings): the reference shares no row with the
    input."""
    input_name, reference_name = DATA[preset]
    rng = np.random.default_rng(seed)
    inp, inp_emb = cached_embeddings(input_name)
    if reference_name == input_name:
        order = rng.permutation(inp.num_rows)
        half = inp.num_rows // 2
        ref_idx, inp_idx = order[:REFERENCE_ROWS], order[half:]
        ref, ref_emb = inp.take(pa.array(ref_idx)), inp_emb[ref_idx]
        inp, inp_emb = inp.take(pa.array(np.sort(inp_idx))), inp_emb[np.sort(inp_idx)]
    else:
        full, full_emb = cached_embeddings(reference_name)
        order = rng.permutation(full.num_rows)
        ref_idx = order[:REFERENCE_ROWS]
        ref, ref_emb = full.take(pa.array(ref_idx)), full_emb[ref_idx]
    return inp, inp_emb, ref, ref_emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="sst2", choices=sorted(DATA))
    ap.add_argument("--groups", type=int, default=24)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--repetition-penalty", type=float, default=None)
    ap.add_argument("--max-tokens", type=int, default=None, help="json variants (default: the shipped config's)")
    ap.add_argument("--show", type=int, default=4, help="rows of each variant to print")
    ap.add_argument("--label-min-probability", type=float, default=None,
                    help="the run's label check (quality.label_min_probability; 0: off)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from synalign_ray.models import load_sentence_transformer

    inp, inp_emb, ref, ref_emb = split(args.preset, args.seed)
    labels = inp.column("label").to_pylist()
    texts = inp.column("text").to_pylist()
    schedule = build_schedule(SelectionConfig(k=9, max_groups=args.groups, seed=args.seed), inp_emb, labels,
                              np.arange(inp.num_rows, dtype=np.int64)).to_pylist()
    groups = [Group(g["group_id"], g["label"], g["demo_row_ids"], [texts[i] for i in g["demo_row_ids"]])
              for g in schedule]
    preset = load_preset(args.preset)
    defaults = GenerationConfig(preset=args.preset).sampling
    json_tokens = args.max_tokens or {"sst2": 1024, "agnews": 2304}[args.preset]
    sampling = defaults.model_copy(update={k: v for k, v in (("temperature", args.temperature),
                                                              ("repetition_penalty", args.repetition_penalty))
                                           if v is not None})
    encoder = load_sentence_transformer("all-MiniLM-L6-v2")
    ref_labels = ref.column("label").to_pylist()
    qcfg = QualityConfig(**({} if args.label_min_probability is None
                            else {"label_min_probability": args.label_min_probability}))
    bounds = quality.RowBounds.from_config(qcfg, preset.max_sample_chars)
    echo = (*qcfg.echo_terms, *quality.attribute_echo_terms(preset.attributes))

    def embed(rows: list[str]) -> np.ndarray:
        return encoder.encode(rows, batch_size=128, normalize_embeddings=True,
                              convert_to_numpy=True).astype(np.float32)

    t0 = time.monotonic()
    generator = Generator(GenerationConfig(preset=args.preset, sampling=sampling))
    engine_seconds = time.monotonic() - t0
    # The ceiling: what a generator that wrote new rows exactly like the input's would score, i.e. input rows that
    # were no demonstration, scored against the same reference on the same number of rows.
    unused = np.setdiff1d(np.arange(inp.num_rows), [i for g in schedule for i in g["demo_row_ids"]])
    ceiling = quality.real_ceiling(inp_emb[unused], [labels[i] for i in unused], [texts[i] for i in unused],
                                   ref_emb, ref_labels, args.groups * args.samples, args.seed)
    ceiling["check_pass"] = float(np.mean([r is None for r in quality.check_rows(
        [texts[i] for i in unused[:2000]], bounds, echo)]))
    results = {"real ceiling": ceiling}
    shown: dict[str, list[str]] = {}
    every_row: dict[str, list[dict]] = {}
    for variant in args.variants.split(","):
        fmt, mode = variant.split(":")
        cfg = GenerationConfig(preset=args.preset, mode=mode, output_format=fmt, samples_per_summary=args.samples,
                               sampling=sampling.model_copy(update={"max_tokens": json_tokens}))
        t0 = time.monotonic()
        result = generator.generate(groups, cfg, preset)
        seconds = time.monotonic() - t0
        rows = [r["text"] for r in result.rows]
        reasons = quality.check_rows(rows, bounds, echo, texts)
        kept = [i for i, r in enumerate(reasons) if r is None]
        entry = {"generated": len(rows), "check_pass": len(kept) / max(len(rows), 1), "kept": len(kept),
                 "drop_reasons": dict(Counter(r for r in reasons if r)),
                 "failed_groups": len({f["group_id"] for f in result.failures}),
                 "output_tokens_per_s": sum(t["completion"] for t in result.tokens.values()) / seconds}
        own = {}
        if kept:
            # The run's label check: a classifier fit on the input rows (never the reference) must give a kept
            # row's own label at least label_min_probability.
            own = dict(zip(kept, quality.own_label_probability(inp_emb, labels, embed([rows[i] for i in kept]),
                                                               [result.rows[i]["label"] for i in kept], args.seed)))
            for i, p in own.items():
                if p < qcfg.label_min_probability:
                    reasons[i] = "label_mismatch"
            entry["drop_reasons"] = dict(Counter(r for r in reasons if r))
            kept = [i for i in kept if reasons[i] is None]
            entry.update(check_pass=len(kept) / max(len(rows), 1), kept=len(kept))
        if kept:
            emb = embed([rows[i] for i in kept])
            entry.update(quality.score_set(emb, [result.rows[i]["label"] for i in kept], [rows[i] for i in kept],
                                           ref_emb, ref_labels, args.seed,
                                           group_ids=[result.rows[i]["group_id"] for i in kept], input_cosine=quality.near_copy_max_cosine(emb, inp_emb),
                                           near_copy_cosine=qcfg.near_copy_cosine))
        results[variant] = entry
        every_row[variant] = [{"label": r["label"], "text": r["text"], "reason": reasons[i],
                               "own_label_probability": own.get(i)} for i, r in enumerate(result.rows)]
        shown[variant] = [f"[{reasons[i] or 'kept'}] {rows[i]}" for i in range(min(args.show, len(rows)))]
        print(f"{variant}: {len(rows)} rows in {seconds:.1f} s", flush=True)

    print(f"\nquality: {args.preset}, {args.groups} groups x {args.samples} samples, SmolLM2-135M-Instruct "
          f"(engine start {engine_seconds:.0f} s), temperature {sampling.temperature}, repetition penalty "
          f"{sampling.repetition_penalty}, label check {qcfg.label_min_probability}; scored against {REFERENCE_ROWS} held-out real rows")
    print("| variant | rows | pass checks | kept | two-sample AUC | label agreement | MAUVE | distinct-2 | "
          "near-copies | nearest-real cos | out tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    for name, r in results.items():
        print(f"| {name} | {r.get('generated', r['rows'])} | {f(r.get('check_pass'))} | {r.get('kept', r['rows'])} | "
              f"{f(r.get('two_sample_auc'))} | {f(r.get('label_agreement'))} | {f(r.get('mauve'))} | "
              f"{f(r.get('distinct_2'))} | {f(r.get('near_copy_rate'))} | {f(r.get('nearest_real_cosine_median'))} | "
              f"{f(r.get('output_tokens_per_s'), '.0f')} |")
    for name, rows in shown.items():
        print(f"\n{name}: drops {results[name]['drop_reasons']}")
        for row in rows:
            print("   ", row[:160])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"preset": args.preset, "results": results, "samples": shown, "rows": every_row}, fh, indent=1)


if __name__ == "__main__":
    main()
