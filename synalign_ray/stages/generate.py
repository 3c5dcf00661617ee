"""`synalign generate`: demonstration groups (a schedule, or the central tracker over fresh embeddings) -> the
generator pool -> kept and dropped Parquet parts with a ledger entry per batch; resumable."""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from synalign_ray import io, real_input, runtime
from synalign_ray.config import GenerationConfig, SynAlignConfig
from synalign_ray.errors import InputError
from synalign_ray.run_folder import RunFolder, settings_for, write_parts
from synalign_ray.stages.common import stamp, top_reasons
from synalign_ray.stages.select import read_schedule, start_tracker

log = logging.getLogger(__name__)


def settings(cfg: SynAlignConfig, schedule_path: str | None) -> dict[str, Any]:
    """What a resumed generation must share with the one it continues; the tracker's groups depend on the encoder
    and the selection settings, a given schedule replaces both."""
    sections = ("data", "generation", "quality") + (() if schedule_path else ("selection", "embedding"))
    return settings_for(cfg, sections, schedule=schedule_path)


def row_bounds(cfg: SynAlignConfig, preset):
    """The quality checks' bounds for this preset; an impossible combination fails here, before any model."""
    from synalign_ray.quality import RowBounds

    return RowBounds.from_config(cfg.quality, preset.max_sample_chars)


def row_checker(cfg: SynAlignConfig, preset, bounds, input_keys: np.ndarray):
    """The per-row checks of a run: bounds, prompt and schema echoes of this preset, copies of the input rows (by
    their quality.copy_keys)."""
    from synalign_ray.quality import RowChecker, attribute_echo_terms

    return RowChecker(bounds, (*cfg.quality.echo_terms, *attribute_echo_terms(preset.attributes)), input_keys)


def _warn_budgets(g: GenerationConfig, preset) -> None:
    from synalign_ray.generation.prompts import char_budgets

    if g.output_format != "json":  # the text format sizes its answers itself (prompts.text_sample_tokens)
        return
    budgets = char_budgets(preset, g.samples_per_summary, g.sampling.max_tokens)
    if not budgets.fits:
        log.warning("generation.sampling.max_tokens=%d cannot hold a JSON answer of this preset; every request will "
                    "be cut off and its group reported as failed", g.sampling.max_tokens)
    elif budgets.sample < preset.max_sample_chars:
        log.warning("generation.sampling.max_tokens=%d caps each of %d samples at %d characters (preset %s allows %d); "
                    "set it to %d to let samples reach full length", g.sampling.max_tokens, g.samples_per_summary,
                    budgets.sample, preset.name, preset.max_sample_chars, budgets.sample_tokens_needed)


def schedule_texts(plan: real_input.RealInput, cfg: SynAlignConfig, schedule: pa.Table
                   ) -> tuple[dict[int, str], np.ndarray]:
    """One pass over the input, slice by slice: the texts of the rows the schedule's groups show and the copy keys
    of every row; a schedule row id the input lacks is an error that names it."""
    from synalign_ray.quality import copy_keys

    wanted = {int(i) for ids in schedule.column("demo_row_ids").to_pylist() for i in ids}
    texts: dict[int, str] = {}
    keys = []
    for rows in real_input.iter_real_rows(plan, cfg.data, cfg.storage):
        column = rows.column(cfg.data.text_column).to_pylist()
        keys.append(copy_keys(column))
        texts.update((rid, t) for rid, t in zip(rows.column(io.ROW_ID).to_pylist(), column) if rid in wanted)
    if unknown := wanted - texts.keys():
        raise InputError(f"schedule refers to {len(unknown)} row id(s) not in the input "
                         f"(e.g. {sorted(unknown)[:3]}): was it built from another input?")
    return texts, np.unique(np.concatenate(keys))


def with_texts(rows: list[dict[str, Any]], texts: dict[int, str]) -> list[dict[str, Any]]:
    """Schedule rows with their demonstration texts (`demo_texts`), as the tracker actor hands them out."""
    return [{**r, "demo_texts": [texts[int(i)] for i in r["demo_row_ids"]]} for r in rows]


def groups_of(rows: list[dict[str, Any]], done: set[int]) -> list:
    """Schedule rows with `demo_texts` -> Groups, without the groups already written."""
    from synalign_ray.generation.worker import Group

    return [Group(int(r["group_id"]), r.get("label"), [int(i) for i in r["demo_row_ids"]], list(r["demo_texts"]))
            for r in rows if r["group_id"] not in done]


def _groups(batches: Iterable[list[dict[str, Any]]], done: set[int]) -> Iterator[list]:
    for rows in batches:
        if groups := groups_of(rows, done):
            yield groups


def _schedule_batches(rows: list[dict[str, Any]], n: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), n):
        yield rows[start:start + n]


def _tracker_batches(ray, tracker, n: int) -> Iterator[list[dict[str, Any]]]:
    """Groups as the generators ask for them: the tracker selects each batch when it is taken."""
    while batch := ray.get(tracker.next_groups.remote(n, with_texts=True)):
        yield batch


def check_generated_rows(manifest: dict[str, Any]) -> None:
    """A generation result with no usable row is an error that says why; its rows stay on disk for inspection."""
    if manifest["rows"] > 0:
        return
    if manifest.get("dropped_rows"):
        raise InputError(f"every generated row failed a quality check (top reasons: "
                         f"{top_reasons(manifest['failed_checks'])}); the {manifest['dropped_rows']} rows are in "
                         f"{manifest['dropped_output']}. Loosen quality.* or set quality.filter=false to keep them")
    raise InputError(f"generation produced no usable rows (every group failed: "
                     f"{top_reasons(manifest.get('failure_reasons', {})) or 'no groups'}); see "
                     f"{manifest['output']}/{io.MANIFEST}")


def embed_for_tracker(cfg: SynAlignConfig, out: io.Location, plan: real_input.RealInput) -> str:
    """`generate` without a schedule: the checked input embedded file to file by the Ray Data pipeline into the
    output's `_embeddings` folder (reused when a resumed run finds it complete), as a run's embeddings step does;
    the tracker actor and its block actors read it there. Returns its location."""
    from synalign_ray.stages import embed

    target = out.join("_embeddings")
    embed.embed_stage(cfg.model_copy(update={"output": cfg.output.model_copy(
        update={"path": target.url, "overwrite": False})}), plan)
    return target.url


def generate_stage(cfg: SynAlignConfig, schedule_path: str | None = None, embeddings_path: str | None = None,
                   pool: Any = None) -> dict[str, Any]:
    """`synalign generate`: groups -> generator pool -> parts. The groups come from a schedule (its demonstration
    texts read from the input in one pass), or from the tracker actor over `embeddings_path` (a completed embeddings
    folder of cfg.data, as `synalign run` passes its own) or over cfg.data embedded into the output's `_embeddings`
    folder first. The driver holds groups, their texts and the input's copy keys, never the input rows.

    Resumable: rerun with the same output path and only the groups not yet written are generated. A running
    `GeneratorPool` of the same model may be passed in to skip engine start-up; it is left running.
    """
    from synalign_ray.generation.ledger import DROPPED_SCHEMA, GenerationLedger, dropped_location
    from synalign_ray.generation.modes import prompt_fingerprint
    from synalign_ray.generation.presets import load_preset
    from synalign_ray.models import check_llm

    g = cfg.generation
    preset = load_preset(g.preset, g.presets_file)
    bounds = row_bounds(cfg, preset)
    _warn_budgets(g, preset)
    # The input is checked here, before any engine (a run has checked it before embedding).
    plan = real_input.plan_input(cfg.data, cfg.storage) if embeddings_path is None or schedule_path else None
    schedule = read_schedule(schedule_path, cfg) if schedule_path else None
    if schedule is not None:
        texts, keys = schedule_texts(plan, cfg, schedule)
    check_llm(g.model)
    out = io.resolve(cfg.output.path, cfg.storage)
    with RunFolder(out, cfg.storage).open(settings(cfg, schedule_path), cfg.output.overwrite, resume=True,
                                          siblings=[dropped_location(out)]) as folder:
        if folder.reused is not None:
            check_generated_rows(folder.reused)
            return folder.reused
        t_start = time.monotonic()
        timings: dict[str, float] = {}
        with runtime.ray_session(cfg.resources) as ray:
            tracker = None
            if schedule is not None:
                total = schedule.num_rows
                batches = _schedule_batches(with_texts(schedule.to_pylist(), texts), g.groups_per_batch)
            else:
                if embeddings_path is None:
                    embeddings_path = embed_for_tracker(cfg, out, plan)
                tracker, facts = start_tracker(ray, cfg, embeddings_path)
                timings["tracker_load"] = time.monotonic() - t_start
                total = facts["groups_planned"]
                keys = ray.get(tracker.copy_keys.remote())
                batches = _tracker_batches(ray, tracker, g.groups_per_batch)
            ledger = GenerationLedger(out, cfg.storage, row_check=row_checker(cfg, preset, bounds, keys),
                                      drop=cfg.quality.filter)
            done = ledger.done_groups
            try:
                stats, pool_info = _generate(cfg, preset, pool, _groups(batches, done), ledger, total, len(done),
                                             timings)
                selection = ray.get(tracker.progress.remote()) if tracker is not None else None
            finally:
                if tracker is not None:
                    ray.kill(tracker)

        totals = ledger.totals()
        parts, dropped_parts = totals.pop("parts"), totals.pop("dropped_parts")
        if not dropped_parts:  # one empty part, so that every Parquet reader opens the folder (schema included)
            dropped_parts = write_parts(DROPPED_SCHEMA.empty_table(), ledger.dropped_loc, cfg.storage, "empty", 1)
        io.write_manifest(ledger.dropped_loc, {"kind": "dropped", "of": out.url, "parts": dropped_parts,
                                               "rows": totals["dropped_rows"],
                                               "failed_checks": totals["failed_checks"]}, cfg.storage)
        manifest = folder.finish(stamp({
            "kind": "generated", "input": cfg.data.path, "schedule": schedule_path,
            "parts": parts, "rows": totals["rows"], **totals, "dropped_output": ledger.dropped_loc.url,
            "groups_total": total, "model": g.model, "model_path": pool_info["model_path"], "mode": g.mode,
            "output_format": g.output_format, "preset": preset.name,
            "prompt_hash": prompt_fingerprint(preset, g.mode, g.output_format, g.samples_per_summary,
                                              g.sampling.max_tokens),
            "pool": {"generators": g.num_generators, "nodes": pool_info["nodes"], "batches_this_run": stats.batches,
                     "busy_fraction": round(stats.busy_fraction, 4), "actor_replacements": stats.actor_replacements,
                     "output_tokens_per_second": round(stats.completion_tokens / max(stats.wall_seconds, 1e-9), 1)},
            "selection": selection, "timings": {k: round(v, 3) for k, v in timings.items()},
            "seconds": round(time.monotonic() - t_start, 3)}, folder, cfg))
    log.info("generated %d rows for %d group(s) in %.1f s -> %s (%d rows failed a quality check: %s)",
             manifest["rows"], totals["groups_done"], manifest["seconds"], out.url, totals["dropped_rows"],
             top_reasons(totals["failed_checks"]) or "none")
    check_generated_rows(manifest)
    return manifest


def _generate(cfg: SynAlignConfig, preset, pool: Any, feed: Iterator[list], ledger, total: int, already: int,
              timings: dict[str, float]):
    """Run the feed through the generator pool (the caller's, or one started and stopped here), recording every
    finished batch in the ledger with a progress line. Returns the pool's stats and its info."""
    from synalign_ray.generation.pool import GeneratorPool

    g = cfg.generation
    own_pool = pool is None
    if own_pool:
        t0 = time.monotonic()
        pool = GeneratorPool(g, cfg.resources.cache_dir)
        timings["engine_start"] = time.monotonic() - t0
    gen_t0 = time.monotonic()
    log.info("generating for %d group(s) (%d already done), %s mode, preset %s", total, already, g.mode, preset.name)

    def on_result(result) -> None:
        entry = ledger.record(result.rows, result.group_ids, result.failures, result.tokens, result.seconds)
        tot = ledger.totals()
        out_tokens = sum(t["completion"] for t in tot["tokens"].values())
        log.info("groups %d/%d, rows kept %d, failed a check %d, %.0f output tokens/s, failed groups %d, "
                 "duplicates %d (batch %d: %d kept, %d dropped)", tot["groups_done"], total, tot["rows"],
                 sum(tot["failed_checks"].values()), out_tokens / max(time.monotonic() - gen_t0, 1e-9),
                 len(tot["failed_groups"]), tot["duplicates_removed"], entry["seq"], entry["rows"], entry["dropped"])

    try:
        stats = pool.run(feed, on_result, g, preset)
        info = {**pool.info, "nodes": pool.nodes}
    finally:
        if own_pool:
            pool.shutdown()
    timings["generate"] = time.monotonic() - gen_t0
    return stats, info
