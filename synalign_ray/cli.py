"""`synalign` command line: one subcommand per stage, `run` for the whole job, `report` and `evaluate` for a run.

Usage: synalign <command> [--config FILE] [flags] [section.key=value ...]; `synalign <command> -h` for flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from synalign_ray import api
from synalign_ray.config import SynAlignConfig, load_config
from synalign_ray.errors import InputError, SynAlignError

log = logging.getLogger("synalign_ray")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (sections: data, embedding, selection, generation, "
                                    "alignment, quality, storage, output, resources)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. embedding.batch_size=128")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", help="output folder or s3://bucket/prefix (sets output.path)")
    p.add_argument("--overwrite", action="store_true", help="replace a completed result at --output")
    _add_config(p)


def _add_embeddings(p: argparse.ArgumentParser) -> None:
    # Checked in `_embeddings`, not by argparse: the old spelling `--input emb/` gets an error that names the flag.
    p.add_argument("--embeddings", help="a `synalign embed` output folder (required)")
    p.add_argument("--input", help=argparse.SUPPRESS)


def _config(args: argparse.Namespace) -> SynAlignConfig:
    """The --config file with the dotted overrides; paths from flags are set on it as values by `api` (never
    re-parsed as YAML, where `--output 2024` would become a number)."""
    return load_config(args.config, list(args.overrides))


def _paths(args: argparse.Namespace) -> dict:
    return {"output": args.output, "overwrite": True if args.overwrite else None}


def _embeddings(args: argparse.Namespace) -> str:
    if args.input is not None:
        raise InputError(f"`synalign {args.command}` reads a `synalign embed` output folder: pass it as "
                         f"--embeddings {args.input} (--input names a data file, for embed and generate)")
    if args.embeddings is None:
        raise InputError(f"`synalign {args.command}` needs --embeddings, a `synalign embed` output folder")
    return args.embeddings


def _cmd_embed(args: argparse.Namespace) -> None:
    manifest = api.embed(_config(args), input=args.input, **_paths(args))
    print(f"embedded {manifest['rows']} rows (dim {manifest['dim']}, {manifest['rows_per_second']} rows/s) "
          f"-> {manifest['output']}")


def _cmd_select(args: argparse.Namespace) -> None:
    manifest = api.select(_config(args), embeddings=_embeddings(args), **_paths(args))
    print(f"selected {manifest['groups']} demonstration groups from {manifest['real_rows']} rows "
          f"-> {manifest['output']}")


def _cmd_generate(args: argparse.Namespace) -> None:
    from synalign_ray.generation.modes import STAGES

    manifest = api.generate(_config(args), input=args.input, schedule=args.schedule, **_paths(args))
    tokens = ", ".join(f"{stage} {manifest['tokens'][stage]['completion']}" for stage in STAGES)
    print(f"generated {manifest['rows']} rows for {manifest['groups_done']}/{manifest['groups_total']} groups "
          f"({len(manifest['failed_groups'])} failed, {manifest['duplicates_removed']} duplicates removed; "
          f"output tokens {tokens}) -> {manifest['output']}")


def _cmd_align(args: argparse.Namespace) -> None:
    manifest = api.align(_config(args), real=args.real, synthetic=args.synthetic, size=args.size, **_paths(args))
    c, m = manifest["counts"], manifest["metrics"]
    print(f"aligned {c['synthetic_input']} synthetic rows -> {c['rows']} rows ({c['distinct_fraction']:.1%} distinct); "
          f"MMD² to real: all {m['all']['mmd2_rbf']:.4g}, random {m['random']['mmd2_rbf']:.4g}, "
          f"aligned {m['aligned']['mmd2_rbf']:.4g} -> {manifest['output']}")


def _cmd_run(args: argparse.Namespace) -> None:
    from synalign_ray.config import DEFAULT_RUN_CONFIG

    if args.config is None:
        args.config = str(DEFAULT_RUN_CONFIG)
    manifest = api.run(_config(args), **_paths(args))
    c = manifest["counts"]
    m = manifest["metrics"]
    print(f"run complete: {c['real_rows']} real rows, {c['groups']} groups -> {c['generated_rows']} generated -> "
          f"{c['kept_rows']} kept -> {c['aligned_rows']} aligned rows ({c['distinct_fraction']:.1%} distinct); MMD² to real: random "
          f"{m['random']['mmd2_rbf']:.4g}, aligned {m['aligned']['mmd2_rbf']:.4g}\n"
          f"output: {manifest['output']}\nreport: {manifest.get('report', '')}")


def _cmd_report(args: argparse.Namespace) -> None:
    from synalign_ray import io
    from synalign_ray.config import build_config
    from synalign_ray.errors import InputError
    from synalign_ray.report import write_report

    loc = io.resolve(args.run_dir, _config(args).storage)
    manifest = io.read_manifest(loc)
    if manifest is None or manifest.get("kind") != "run":
        raise InputError(f"{loc.url} is not a completed `synalign run` directory (no run manifest)")
    print(write_report(loc, build_config(manifest["config"]), manifest))


def _cmd_coverage(args: argparse.Namespace) -> None:
    r = api.coverage(_config(args), embeddings=_embeddings(args), schedule=args.schedule, seeds=args.seeds)
    print(f"{r['groups']} groups (k={r['k']}) on a {r['map_rows']}-row t-SNE map:")
    print(f"  hull coverage       schedule {r['hull_coverage']:.4f}   random {r['hull_coverage_random']:.4f} "
          f"(x{r['hull_coverage'] / max(r['hull_coverage_random'], 1e-12):.2f}, mean of {r['random_seeds']} seeds)")
    print(f"  kNN-radius coverage schedule {r['knn_radius_coverage']:.4f}   random {r['knn_radius_coverage_random']:.4f}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from synalign_ray.evaluation import evaluate, format_results

    res = evaluate(args.run_dir, args.test, loss=args.loss, classifier=args.classifier, seed=args.seed,
                   model=args.model, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                   weight_decay=args.weight_decay, warmup=args.warmup, max_train_rows=args.max_train_rows,
                   config=_config(args))
    print(format_results(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], None]]]:
    parser = argparse.ArgumentParser(prog="synalign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable[[argparse.Namespace], None]] = {}

    p = sub.add_parser("embed", help="embed real rows with the sentence-transformers actor pool")
    p.add_argument("--input", help="Parquet/JSONL/CSV file or folder, local or s3:// (sets data.path)")
    _add_common(p)
    handlers["embed"] = _cmd_embed

    p = sub.add_parser("select", help="GP exploration-aware selection of demonstration groups")
    _add_embeddings(p)
    _add_common(p)
    handlers["select"] = _cmd_select

    p = sub.add_parser("generate", help="two-stage LLM generation on the vLLM generator pool (resumable)")
    p.add_argument("--input", help="real rows: Parquet/JSONL/CSV, local or s3:// (sets data.path)")
    p.add_argument("--schedule", help="a `synalign select` output; without it the real rows are embedded and "
                                      "the central tracker selects groups as generators ask for them")
    _add_common(p)
    handlers["generate"] = _cmd_generate

    p = sub.add_parser("align", help="MMD weights + weighted resampling of synthetic rows toward real rows")
    p.add_argument("--real", required=True, help="real rows (raw text, or a `synalign embed` output)")
    p.add_argument("--synthetic", required=True, help="synthetic rows (raw text, or a `synalign generate` output)")
    p.add_argument("--size", type=int, help="rows to draw (sets alignment.size)")
    _add_common(p)
    handlers["align"] = _cmd_align

    p = sub.add_parser("coverage", help="coverage of the real rows by a schedule's groups vs random selection")
    _add_embeddings(p)
    p.add_argument("--schedule", required=True, help="a `synalign select` output")
    p.add_argument("--seeds", type=int, default=5, help="random baselines to average")
    _add_config(p)
    handlers["coverage"] = _cmd_coverage

    p = sub.add_parser("run", help="the whole job: embed, select, generate, align, report (resumable)")
    _add_common(p)
    handlers["run"] = _cmd_run

    p = sub.add_parser("report", help="(re)write the HTML report of a completed run directory")
    p.add_argument("run_dir", help="a `synalign run` output folder (local or s3://)")
    _add_config(p)
    handlers["report"] = _cmd_report

    p = sub.add_parser("evaluate", help="downstream check: classifiers trained on real, +random, +aligned rows")
    p.add_argument("run_dir", help="a `synalign run` output folder (local or s3://)")
    p.add_argument("--test", required=True, help="labelled rows held out of the run (Parquet/JSONL/CSV); rows "
                                                 "that are among the run's input rows are dropped and counted")
    p.add_argument("--loss", choices=["ce", "imp", "dimp"], default="ce")
    p.add_argument("--classifier", choices=["logreg", "finetune"], default="logreg")
    p.add_argument("--model", default="distilbert-base-uncased", help="finetune: HF model id or folder")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.06)
    p.add_argument("--max-train-rows", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results as JSON to this file")
    _add_config(p)
    handlers["evaluate"] = _cmd_evaluate
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        handlers[args.command](args)
    except SynAlignError as err:
        print(f"synalign {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synalign {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    """Console-script entry: run `main`, then leave without interpreter finalisation.

    pyarrow's Parquet reader threads can still be joinable when finalisation destroys Arrow's pools, and the process
    then aborts ("terminate called without an active exception", exit 134) after its work is done and its one-line
    error printed (apache/arrow#34314). By the time `main` returns every output is written and closed and Ray is
    shut down, so the exit code is taken from `main` and finalisation is skipped.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
