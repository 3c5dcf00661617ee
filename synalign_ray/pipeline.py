"""The driver: the only place that starts Ray, creates actors and wires the stages together.

Each `*_stage` function validates its inputs before any model loads, then runs and writes a completed folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synalign_ray import io
from synalign_ray.config import SynAlignConfig
from synalign_ray.errors import InputError

log = logging.getLogger(__name__)

# Variables the workers must see as the driver does (offline hub, model cache, vLLM CPU settings).
_PROPAGATED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SYNALIGN_CACHE_DIR", "HF_HOME", "TOKENIZERS_PARALLELISM",
                   "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")


@contextlib.contextmanager
def ray_session(cfg: SynAlignConfig) -> Iterator[Any]:
    """Connect to the configured cluster, or start a local Ray sized by `resources`; reuse one already up."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    env_vars = {k: os.environ[k] for k in _PROPAGATED_ENV if k in os.environ}
    env_vars.setdefault("TOKENIZERS_PARALLELISM", "false")
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "include_dashboard": False}
    if cfg.resources.ray_address:
        kwargs["address"] = cfg.resources.ray_address
    else:
        if cfg.resources.num_cpus:
            kwargs["num_cpus"] = cfg.resources.num_cpus
        if cfg.resources.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.resources.object_store_memory_mb * 1024 * 1024
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_embedding_model(cfg: SynAlignConfig) -> None:
    from synalign_ray.models import resolve_embedding_model

    resolve_embedding_model(cfg.embedding.model)


def embed_rows(table: pa.Table, cfg: SynAlignConfig, text_column: str) -> pa.Table:
    """Embed the rows of `table` on the Ray Data encoder pool; returns them in input order plus `embedding`."""
    from synalign_ray.embedding import collect_embedded, embed_dataset

    t0 = time.monotonic()
    with ray_session(cfg):
        ds = embed_dataset(table, cfg.embedding, text_column)
        out = collect_embedded(ds)
    dt = time.monotonic() - t0
    log.info("embedded %d rows in %.1f s (%.0f rows/s) with %d encoder actor(s)", out.num_rows, dt,
             out.num_rows / max(dt, 1e-9), cfg.embedding.num_actors)
    return out


def write_table(table: pa.Table, loc: io.Location, cfg: SynAlignConfig, manifest: dict[str, Any],
                prefix: str = "part") -> dict[str, Any]:
    """Write `table` as Parquet parts of `output.rows_per_part` rows, then the manifest (last)."""
    parts = []
    step = cfg.output.rows_per_part
    for i, start in enumerate(range(0, max(table.num_rows, 1), step)):
        name = f"{prefix}-{i:05d}.parquet"
        io.write_part(table.slice(start, step), loc, name, cfg.storage)
        parts.append(name)
    manifest = {**manifest, "output": loc.url, "parts": parts, "rows": table.num_rows, "columns": table.column_names,
                "config": cfg.redacted(), "synalign_version": _version()}
    io.write_manifest(loc, manifest, cfg.storage)
    log.info("wrote %d rows in %d part(s) and %s to %s", table.num_rows, len(parts), io.MANIFEST, loc.url)
    return manifest


def _version() -> str:
    from synalign_ray import __version__

    return __version__


def embed_stage(cfg: SynAlignConfig) -> dict[str, Any]:
    """`synalign embed`: read the real rows, embed them on the actor pool, write parts + manifest."""
    rows = io.read_real_rows(cfg.data, cfg.storage)
    out = io.resolve(cfg.output.path, cfg.storage)
    io.prepare_output(out, cfg.output.overwrite, cfg.storage)
    _check_embedding_model(cfg)
    log.info("embedding %d rows from %s with %s", rows.num_rows, cfg.data.path, cfg.embedding.model)
    t0 = time.monotonic()
    embedded = embed_rows(rows, cfg, cfg.data.text_column)
    seconds = time.monotonic() - t0
    dim = embedded.schema.field(io.EMBEDDING).type.list_size
    return write_table(embedded, out, cfg, {
        "kind": "embeddings", "input": cfg.data.path, "model": cfg.embedding.model, "dim": dim,
        "text_column": cfg.data.text_column, "label_column": cfg.data.label_column,
        "seconds": round(seconds, 3), "rows_per_second": round(embedded.num_rows / max(seconds, 1e-9), 1),
    })


def read_embedded(path: str, cfg: SynAlignConfig) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    """Read a completed `synalign embed` output: rows, (n, d) embedding matrix, manifest."""
    loc = io.resolve(path, cfg.storage)
    if not loc.exists():
        raise InputError(f"input not found: {loc.url}")
    manifest = io.read_manifest(loc)
    if manifest is None:
        raise InputError(f"{loc.url} has no {io.MANIFEST}: not a completed `synalign embed` output")
    table = io.read_parts(loc, manifest)
    if io.EMBEDDING not in table.column_names:
        raise InputError(f"{loc.url} has no '{io.EMBEDDING}' column")
    return table, io.embeddings_from_arrow(table.column(io.EMBEDDING), loc.url), manifest


# ------------------------------------------------------------------------------------------------- generation

SCHEDULE_COLUMNS = ("group_id", "label", "demo_row_ids")


def read_schedule(path: str, cfg: SynAlignConfig) -> pa.Table:
    """A `synalign select` output folder (or a plain Parquet file) with group_id, label, demo_row_ids."""
    loc = io.resolve(path, cfg.storage)
    if not io.exists(loc, cfg.storage):
        raise InputError(f"schedule not found: {loc.url}")
    manifest = io.read_manifest(loc) if loc.fs.isdir(loc.path) else None
    table = io.read_parts(loc, manifest) if manifest is not None else io.read_table(path, "parquet", cfg.storage)
    missing = [c for c in SCHEDULE_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"schedule {loc.url} lacks column(s) {missing}: is it a `synalign select` output?")
    if table.num_rows == 0:
        raise InputError(f"schedule {loc.url} has no groups")
    return table


def row_bounds(cfg: SynAlignConfig, preset):
    """The quality checks' bounds for this preset; an impossible combination fails here, before any model."""
    from synalign_ray.quality import RowBounds

    return RowBounds.from_config(cfg.quality, preset.max_sample_chars)


def row_checker(cfg: SynAlignConfig, preset, bounds, input_texts):
    """The per-row checks of a run: bounds, prompt and schema echoes of this preset, copies of the input rows."""
    from synalign_ray.quality import RowChecker, attribute_echo_terms

    return RowChecker(bounds, (*cfg.quality.echo_terms, *attribute_echo_terms(preset.attributes)), input_texts)


def _groups_from_rows(rows: list[dict[str, Any]], texts: dict[int, str], done: set[int]) -> list:
    from synalign_ray.generation.worker import Group

    groups = []
    for r in rows:
        if r["group_id"] in done:
            continue
        ids = [int(i) for i in r["demo_row_ids"]]
        groups.append(Group(int(r["group_id"]), r.get("label"), ids, [texts[i] for i in ids]))
    return groups


def _generation_fingerprint(cfg: SynAlignConfig, schedule_path: str | None) -> dict[str, Any]:
    """What a resumed run must share with the run it continues, or its rows would mix two configurations."""
    return {"data": cfg.data.model_dump(mode="json"), "schedule": schedule_path,
            "selection": None if schedule_path else cfg.selection.model_dump(mode="json"),
            "quality": cfg.quality.model_dump(mode="json"),
            "generation": cfg.generation.model_dump(mode="json", exclude={"num_generators", "max_in_flight",
                                                                         "num_gpus_per_generator",
                                                                         "num_cpus_per_generator"})}


def _check_resume(loc: io.Location, cfg: SynAlignConfig, fingerprint: dict[str, Any]) -> None:
    from synalign_ray.generation.ledger import LEDGER_DIR

    name = "run_config.json"
    target = loc.join(LEDGER_DIR, name)
    if loc.fs.exists(target.path):
        with loc.fs.open(target.path, "rb") as fh:
            import json

            previous = json.loads(fh.read())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise InputError(f"{loc.url} holds an unfinished generation run with a different config "
                             f"(changed: {', '.join(changed)}); use another output path or output.overwrite=true")
    else:
        io.write_manifest(loc.join(LEDGER_DIR), fingerprint, cfg.storage, name=name)


def generate_stage(cfg: SynAlignConfig, schedule_path: str | None = None, real: pa.Table | None = None,
                   embedded: pa.Table | None = None, pool: Any = None) -> dict[str, Any]:
    """`synalign generate`: groups (from a schedule, or embed + the central tracker) -> generator pool -> parts.

    Resumable: rerun with the same output path and only the groups not yet written are generated. A running
    `GeneratorPool` of the same model may be passed in to skip engine start-up; it is left running.
    """
    from synalign_ray.generation.ledger import GenerationLedger, dropped_location
    from synalign_ray.generation.prompts import char_budgets, load_preset, prompt_fingerprint
    from synalign_ray.models import check_llm

    g = cfg.generation
    preset = load_preset(g.preset, g.presets_file)
    bounds = row_bounds(cfg, preset)
    budgets = char_budgets(preset, g.samples_per_summary, g.sampling.max_tokens)
    json_format = g.output_format == "json"  # the text format sizes its answers itself (prompts.text_sample_tokens)
    if json_format and not budgets.fits:
        log.warning("generation.sampling.max_tokens=%d cannot hold a JSON answer of this preset; every request will "
                    "be cut off and its group reported as failed", g.sampling.max_tokens)
    elif json_format and budgets.sample < preset.max_sample_chars:
        log.warning("generation.sampling.max_tokens=%d caps each of %d samples at %d characters (preset %s allows %d); "
                    "set it to %d to let samples reach full length", g.sampling.max_tokens, g.samples_per_summary,
                    budgets.sample, preset.name, preset.max_sample_chars, budgets.sample_tokens_needed)
    real = real if real is not None else io.read_real_rows(cfg.data, cfg.storage)
    schedule = read_schedule(schedule_path, cfg) if schedule_path else None
    if schedule is not None:
        known = set(real.column(io.ROW_ID).to_pylist())
        unknown = {int(i) for ids in schedule.column("demo_row_ids").to_pylist() for i in ids} - known
        if unknown:
            raise InputError(f"schedule refers to {len(unknown)} row id(s) not in the input "
                             f"(e.g. {sorted(unknown)[:3]}): was it built from another input?")
    check_llm(g.model)
    out = io.resolve(cfg.output.path, cfg.storage)
    io.check_writable(out, cfg.storage)
    if io.read_manifest(out) is not None:
        if not cfg.output.overwrite:
            raise InputError(f"{out.url} already holds a complete generation result ({io.MANIFEST}); "
                             "set output.overwrite=true or choose another output path")
        out.fs.rm(out.path, recursive=True)
        if (dropped := dropped_location(out)).exists():
            dropped.fs.rm(dropped.path, recursive=True)
    fingerprint = _generation_fingerprint(cfg, schedule_path)
    _check_resume(out, cfg, fingerprint)
    texts = dict(zip(real.column(io.ROW_ID).to_pylist(), real.column(cfg.data.text_column).to_pylist()))
    ledger = GenerationLedger(out, cfg.storage, row_check=row_checker(cfg, preset, bounds, texts.values()),
                              drop=cfg.quality.filter)
    done = ledger.done_groups
    t_start = time.monotonic()
    timings: dict[str, float] = {}

    with ray_session(cfg) as ray:
        tracker = None
        if schedule is not None:
            rows = schedule.to_pylist()
            total = len(rows)
            cursor = {"at": 0}

            def take(n: int) -> list[dict[str, Any]]:
                batch = rows[cursor["at"]:cursor["at"] + n]
                cursor["at"] += len(batch)
                return batch
        else:
            from synalign_ray.selection.tracker import SelectionTracker

            if embedded is None:
                t0 = time.monotonic()
                embedded = embed_rows(real, cfg, cfg.data.text_column)
                timings["embed_real"] = time.monotonic() - t0
            emb = io.embeddings_from_arrow(embedded.column(io.EMBEDDING))
            labels = embedded.column(cfg.data.label_column).to_pylist() if cfg.data.label_column else None
            ids = np.asarray(embedded.column(io.ROW_ID).to_numpy())
            tracker = ray.remote(SelectionTracker).options(num_cpus=0).remote(emb, labels, ids, cfg.selection)
            total = ray.get(tracker.progress.remote())["groups_planned"]

            def take(n: int) -> list[dict[str, Any]]:
                return ray.get(tracker.next_groups.remote(n))

        def feed():
            while True:
                rows_ = take(g.groups_per_batch)
                if not rows_:
                    return
                groups = _groups_from_rows(rows_, texts, done)
                if groups:
                    yield groups

        from synalign_ray.generation.pool import GeneratorPool

        own_pool = pool is None
        if own_pool:
            t0 = time.monotonic()
            pool = GeneratorPool(g, cfg.resources.cache_dir)
            timings["engine_start"] = time.monotonic() - t0
        gen_t0 = time.monotonic()
        log.info("generating for %d group(s) (%d already done), %s mode, preset %s", total, len(done), g.mode,
                 preset.name)

        def on_result(result) -> None:
            entry = ledger.record(result.rows, result.group_ids, result.failures, result.tokens, result.seconds)
            tot = ledger.totals()
            elapsed = time.monotonic() - gen_t0
            out_tokens = sum(t["completion"] for t in tot["tokens"].values())
            log.info("groups %d/%d, rows kept %d, failed a check %d, %.0f output tokens/s, failed groups %d, "
                     "duplicates %d (batch %d: %d kept, %d dropped)", tot["groups_done"], total, tot["rows"],
                     sum(tot["failed_checks"].values()), out_tokens / max(elapsed, 1e-9), len(tot["failed_groups"]),
                     tot["duplicates_removed"], entry["seq"], entry["rows"], entry["dropped"])

        try:
            stats = pool.run(feed(), on_result, g, preset)
        finally:
            if own_pool:
                pool.shutdown()
        timings["generate"] = time.monotonic() - gen_t0
        selection = ray.get(tracker.progress.remote()) if tracker is not None else None

    totals = ledger.totals()
    parts = totals.pop("parts")
    dropped_parts = totals.pop("dropped_parts")
    io.write_manifest(ledger.dropped_loc, {"kind": "dropped", "of": out.url, "parts": dropped_parts,
                                           "rows": totals["dropped_rows"], "failed_checks": totals["failed_checks"]},
                      cfg.storage)
    manifest = {
        "kind": "generated", "input": cfg.data.path, "schedule": schedule_path, "output": out.url,
        "parts": parts, "rows": totals["rows"], **totals, "dropped_output": ledger.dropped_loc.url,
        "groups_total": total, "model": g.model, "model_path": pool.info["model_path"], "mode": g.mode,
        "output_format": g.output_format, "preset": preset.name,
        "prompt_hash": prompt_fingerprint(preset, g.mode, g.output_format, g.samples_per_summary,
                                          g.sampling.max_tokens),
        "pool": {"generators": g.num_generators, "batches_this_run": stats.batches,
                 "busy_fraction": round(stats.busy_fraction, 4), "actor_replacements": stats.actor_replacements,
                 "output_tokens_per_second": round(stats.completion_tokens / max(stats.wall_seconds, 1e-9), 1)},
        "selection": selection, "timings": {k: round(v, 3) for k, v in timings.items()},
        "seconds": round(time.monotonic() - t_start, 3), "config": cfg.redacted(), "synalign_version": _version(),
    }
    io.write_manifest(out, manifest, cfg.storage)
    log.info("generated %d rows for %d group(s) in %.1f s -> %s (%d rows failed a quality check: %s)",
             manifest["rows"], totals["groups_done"], manifest["seconds"], out.url, totals["dropped_rows"],
             _top_reasons(totals["failed_checks"]) or "none")
    check_generated_rows(manifest)
    return manifest


def _top_reasons(counts: dict[str, int], top: int = 3) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top])


def check_generated_rows(manifest: dict[str, Any]) -> None:
    """A generation result with no usable row is an error that says why; its rows stay on disk for inspection."""
    if manifest["rows"] > 0:
        return
    if manifest.get("dropped_rows"):
        raise InputError(f"every generated row failed a quality check (top reasons: "
                         f"{_top_reasons(manifest['failed_checks'])}); the {manifest['dropped_rows']} rows are in "
                         f"{manifest['dropped_output']}. Loosen quality.* or set quality.filter=false to keep them")
    raise InputError(f"generation produced no usable rows (every group failed: "
                     f"{_top_reasons(manifest.get('failure_reasons', {})) or 'no groups'}); see "
                     f"{manifest['output']}/{io.MANIFEST}")


# -------------------------------------------------------------------------------------------------- selection


def select_stage(cfg: SynAlignConfig, embedded_path: str) -> dict[str, Any]:
    """`synalign select`: the whole GP selection schedule for a `synalign embed` output."""
    from synalign_ray.selection.schedule import build_schedule

    table, emb, manifest = read_embedded(embedded_path, cfg)
    label_column = cfg.data.label_column
    if label_column is not None and label_column not in table.column_names:
        raise InputError(f"label column '{label_column}' not in {embedded_path} (set data.label_column=null "
                         "to select without labels)")
    out = io.resolve(cfg.output.path, cfg.storage)
    io.prepare_output(out, cfg.output.overwrite, cfg.storage)
    labels = table.column(label_column).to_pylist() if label_column else None
    t0 = time.monotonic()
    schedule = build_schedule(cfg.selection, emb, labels, table.column(io.ROW_ID).to_numpy())
    seconds = time.monotonic() - t0
    log.info("selected %d group(s) from %d rows in %.1f s (tau %.4g)", schedule.num_rows, table.num_rows, seconds,
             schedule.column("tau")[0].as_py() if schedule.num_rows else float("nan"))
    return write_table(schedule, out, cfg, {"kind": "schedule", "input": embedded_path, "groups": schedule.num_rows,
                                            "real_rows": table.num_rows, "seconds": round(seconds, 3)})


# -------------------------------------------------------------------------------------------------- alignment


def read_rows(path: str, cfg: SynAlignConfig, what: str, need_labels: bool = False) -> pa.Table:
    """Rows from a completed synalign output folder (its manifest's parts) or a Parquet/JSONL/CSV file/folder,
    validated; adds a positional `row_id` when the input has none."""
    loc = io.resolve(path, cfg.storage)
    if not io.exists(loc, cfg.storage):
        raise InputError(f"{what} input not found: {loc.url}")
    manifest = io.read_manifest(loc) if loc.fs.isdir(loc.path) else None
    table = io.read_parts(loc, manifest) if manifest is not None else io.read_table(path, cfg.data.format,
                                                                                    cfg.storage)
    label = cfg.data.label_column if (need_labels or (cfg.data.label_column in table.column_names)) else None
    table = io.validate_text_table(table, cfg.data.text_column, label, f"{what} input {loc.url}")
    if io.ROW_ID not in table.column_names:
        table = table.append_column(io.ROW_ID, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return table


def ensure_embedded(table: pa.Table, cfg: SynAlignConfig) -> tuple[pa.Table, np.ndarray]:
    """The rows with their embedding matrix: the input's own `embedding` column, or the encoder pool's."""
    if io.EMBEDDING not in table.column_names:
        _check_embedding_model(cfg)
        table = embed_rows(table, cfg, cfg.data.text_column)
    return table, io.embeddings_from_arrow(table.column(io.EMBEDDING))


def align_stage(cfg: SynAlignConfig, real_path: str, synthetic_path: str) -> dict[str, Any]:
    """`synalign align`: weights, weighted resample and metrics for synthetic rows against real rows."""
    from synalign_ray.alignment.align import align

    from synalign_ray.alignment.align import check_inputs

    real = read_rows(real_path, cfg, "real")
    synthetic = read_rows(synthetic_path, cfg, "synthetic")
    if io.EMBEDDING in real.column_names and io.EMBEDDING in synthetic.column_names:
        # Both sides already embedded: every input check can run before Ray starts.
        check_inputs(cfg, real, io.embeddings_from_arrow(real.column(io.EMBEDDING), real_path), synthetic,
                     io.embeddings_from_arrow(synthetic.column(io.EMBEDDING), synthetic_path))
    out = io.resolve(cfg.output.path, cfg.storage)
    io.prepare_output(out, cfg.output.overwrite, cfg.storage)
    with ray_session(cfg):
        real, real_emb = ensure_embedded(real, cfg)
        synthetic, syn_emb = ensure_embedded(synthetic, cfg)
        return {**align(cfg, real.drop_columns([io.EMBEDDING]), real_emb,
                        synthetic.drop_columns([io.EMBEDDING]), syn_emb, out, cfg.storage), "output": out.url}


# ----------------------------------------------------------------------------------------------- the whole job

RUN_STAGES = ("embeddings", "generated", "generated_embeddings", "aligned")


def _run_fingerprint(cfg: SynAlignConfig) -> dict[str, Any]:
    """Settings that shape a run's results; a rerun into the same folder must match them to resume."""
    dump = cfg.model_dump(mode="json", exclude={"output": {"overwrite"}, "resources": True, "storage": True})
    for key in ("num_generators", "max_in_flight", "num_gpus_per_generator", "num_cpus_per_generator"):
        dump["generation"].pop(key, None)
    for key in ("num_actors", "num_cpus_per_actor", "num_gpus_per_actor", "batch_size", "device"):
        dump["embedding"].pop(key, None)
    dump["alignment"].pop("num_shards", None)
    return dump


def _embedded_stage(run_dir: io.Location, name: str, rows: pa.Table, text_column: str, source: str | None,
                    stage_cfg) -> tuple[dict[str, Any], pa.Table]:
    """Embed `rows` into the run's `name` folder, or reuse that folder when it is already complete."""
    loc = run_dir.join(name)
    if (m := io.read_manifest(loc)) is not None:
        log.info("stage %s: complete, reusing %s", name, loc.url)
        return m, io.read_parts(loc, m)
    cfg = stage_cfg(name)
    embedded = embed_rows(rows, cfg, text_column)
    return write_table(embedded, loc, cfg, {"kind": "embeddings", "input": source, "model": cfg.embedding.model,
                                            "dim": embedded.schema.field(io.EMBEDDING).type.list_size}), embedded


DROP_REASON = "drop_reason"
GENERATED_ID = "generated_id"


def _generated_embeddings_stage(run_dir: io.Location, gen_loc: io.Location, gen_manifest: dict[str, Any],
                                embedded: pa.Table, stage_cfg) -> tuple[dict[str, Any], pa.Table]:
    """Embed every generated row, kept and dropped (the quality table scores both), and mark the kept rows that
    repeat an input row in other words (near_copy) or a row of their own group (near_duplicate) as dropped; or
    reuse the complete folder."""
    from synalign_ray.generation.ledger import DROPPED_SCHEMA, dropped_location
    from synalign_ray.quality import near_copy_max_cosine

    loc = run_dir.join("generated_embeddings")
    if (m := io.read_manifest(loc)) is not None:
        log.info("stage generated_embeddings: complete, reusing %s", loc.url)
        return m, io.read_parts(loc, m)
    cfg = stage_cfg("generated_embeddings")
    kept = io.read_parts(gen_loc, gen_manifest)
    kept = kept.append_column(DROP_REASON, pa.nulls(kept.num_rows, pa.string()))
    dropped_loc = dropped_location(gen_loc)
    dropped = io.read_parts(dropped_loc, io.read_manifest(dropped_loc)) if gen_manifest.get("dropped_rows") else None
    rows = pa.concat_tables([kept.cast(DROPPED_SCHEMA)] + ([dropped.cast(DROPPED_SCHEMA)] if dropped else []))
    rows = rows.append_column(io.ROW_ID, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    out = embed_rows(rows, cfg, "text")
    emb = io.embeddings_from_arrow(out.column(io.EMBEDDING))
    reasons = out.column(DROP_REASON).to_pylist()
    live = np.flatnonzero([r is None for r in reasons])
    q = cfg.quality
    nearest = near_copy_max_cosine(emb[live], io.embeddings_from_arrow(embedded.column(io.EMBEDDING)))
    for i in live[nearest >= q.near_copy_cosine]:
        reasons[i] = "near_copy"
    near_copies = int((nearest >= q.near_copy_cosine).sum())
    near_duplicates = 0
    if cfg.generation.dedup_near_threshold is not None:
        from synalign_ray.generation.dedup import near_duplicate_keep

        live = np.flatnonzero([r is None for r in reasons])
        keep = near_duplicate_keep(emb[live], out.column("group_id").to_numpy()[live],
                                   cfg.generation.dedup_near_threshold)
        for i in live[~keep]:
            reasons[i] = "near_duplicate"
        near_duplicates = int((~keep).sum())
    if q.filter:
        out = out.set_column(out.column_names.index(DROP_REASON), DROP_REASON, pa.array(reasons, pa.string()))
    failed_checks = dict(gen_manifest.get("failed_checks", {}))
    for name, count in (("near_copy", near_copies), ("near_duplicate", near_duplicates)):
        if count:
            failed_checks[name] = count
    kept_rows = sum(r is None for r in reasons)
    log.info("generated rows: %d kept, %d dropped (%s)", kept_rows, len(reasons) - kept_rows,
             _top_reasons(failed_checks, top=6) or "none")
    return write_table(out, loc, cfg, {"kind": "embeddings", "input": gen_loc.url, "model": cfg.embedding.model,
                                       "dim": emb.shape[1], "failed_checks": failed_checks,
                                       "kept_rows": kept_rows}), out


def _score_run(cfg: SynAlignConfig, embedded: pa.Table, gen_embedded: pa.Table, aligned: pa.Table) -> dict[str, Any]:
    """The quality table of a run: all generated rows, the kept ones and the aligned draw, each against a real
    reference the generator never saw, beside the same scores for other real rows (the ceiling)."""
    from synalign_ray import quality

    q, label = cfg.quality, cfg.data.label_column
    rng = np.random.default_rng(q.seed)
    real_emb = io.embeddings_from_arrow(embedded.column(io.EMBEDDING))
    demos = {int(i) for ids in gen_embedded.column("demo_row_ids").to_pylist() for i in ids}
    unseen = embedded.filter(pa.array([int(i) not in demos for i in embedded.column(io.ROW_ID).to_pylist()]))
    if q.reference_path:
        reference = ensure_embedded(read_rows(q.reference_path, cfg, "quality reference"), cfg)[0]
        where = f"{q.reference_path} ({min(reference.num_rows, q.reference_rows)} rows)"
        pool = unseen
    else:
        order = rng.permutation(unseen.num_rows)
        # Half the unseen rows at most, so the ceiling has other real rows to draw from.
        size = min(q.reference_rows, unseen.num_rows // 2)
        reference, pool = unseen.take(pa.array(np.sort(order[:size]))), unseen.take(pa.array(np.sort(order[size:])))
        where = f"{size} input rows never shown to the generator"
    if reference.num_rows > q.reference_rows:
        reference = reference.take(pa.array(np.sort(rng.choice(reference.num_rows, q.reference_rows, replace=False))))
    ref_emb = io.embeddings_from_arrow(reference.column(io.EMBEDDING))
    ref_labels = reference.column(label).to_pylist() if label and label in reference.column_names else None

    def labels_of(table: pa.Table, column: str) -> list | None:
        return table.column(column).to_pylist() if ref_labels is not None and column in table.column_names else None

    kept = gen_embedded.filter(pc.is_null(gen_embedded.column(DROP_REASON)))
    by_id = {int(g): i for i, g in enumerate(gen_embedded.column(io.ROW_ID).to_pylist())}
    drawn = aligned.filter(pc.equal(aligned.column("source"), "synthetic")) if "source" in aligned.column_names \
        else aligned
    drawn = gen_embedded.take(pa.array([by_id[int(g)] for g in drawn.column(GENERATED_ID).to_pylist()]))
    sets = {"all generated": gen_embedded, "kept": kept, "aligned draw": drawn}
    scores = {}
    for name, table in sets.items():
        if table.num_rows == 0:
            continue
        scores[name] = quality.score_set(
            io.embeddings_from_arrow(table.column(io.EMBEDDING)), labels_of(table, "label"),
            table.column("text").to_pylist(), ref_emb, ref_labels, q.seed, group_ids=table.column("group_id").to_pylist(),
            input_emb=real_emb, near_copy_cosine=q.near_copy_cosine)
    if pool.num_rows >= 2:
        scores["real ceiling"] = quality.real_ceiling(
            io.embeddings_from_arrow(pool.column(io.EMBEDDING)), labels_of(pool, label) if label else None,
            pool.column(cfg.data.text_column).to_pylist(), ref_emb, ref_labels, max(kept.num_rows, 2), q.seed)
    log.info("quality against %s: %s", where, "; ".join(
        f"{name} AUC {s['two_sample_auc']:.2f} MAUVE {s['mauve']:.2f}" for name, s in scores.items()
        if s.get("two_sample_auc") is not None and s.get("mauve") is not None))
    return {"reference": where, "sets": scores}


def run_stage(cfg: SynAlignConfig, pool: Any = None) -> dict[str, Any]:
    """`synalign run`: read -> embed -> tracker + generator pool -> embed generated -> align -> report.

    Every stage writes its own folder with a manifest under output.path; running the same command again skips
    completed stages and resumes generation from the last completed batch. `pool`: a running GeneratorPool of
    the same model to reuse (tests share one engine per session).
    """
    import json

    from synalign_ray.generation.prompts import load_preset
    from synalign_ray.models import check_llm

    load_preset(cfg.generation.preset, cfg.generation.presets_file)
    real = io.read_real_rows(cfg.data, cfg.storage)
    check_llm(cfg.generation.model)
    _check_embedding_model(cfg)
    run_dir = io.resolve(cfg.output.path, cfg.storage)
    io.check_writable(run_dir, cfg.storage)
    if cfg.output.overwrite and run_dir.exists():
        run_dir.fs.rm(run_dir.path, recursive=True)
    fp_loc = run_dir.join("run_config.json")
    fingerprint = _run_fingerprint(cfg)
    if run_dir.fs.exists(fp_loc.path):
        with run_dir.fs.open(fp_loc.path, "rb") as fh:
            previous = json.loads(fh.read())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint.get(k))
            raise InputError(f"{run_dir.url} holds a run with a different config (changed: {', '.join(changed)}); "
                             "use another output path or output.overwrite=true")
    else:
        io.write_manifest(run_dir, fingerprint, cfg.storage, name="run_config.json")
    final = io.read_manifest(run_dir)
    if final is not None:
        log.info("%s is already complete; nothing to do", run_dir.url)
        return final

    def stage_cfg(name: str) -> SynAlignConfig:
        return cfg.model_copy(update={"output": cfg.output.model_copy(
            update={"path": run_dir.join(name).url, "overwrite": False})})

    manifests: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    t_run = time.monotonic()
    with ray_session(cfg):
        # 1. real rows -> embeddings
        t0 = time.monotonic()
        manifests["embeddings"], embedded = _embedded_stage(run_dir, "embeddings", real, cfg.data.text_column,
                                                            cfg.data.path, stage_cfg)
        timings["embed_real"] = time.monotonic() - t0

        # 2. central tracker + generator pool
        loc = run_dir.join("generated")
        t0 = time.monotonic()
        if (m := io.read_manifest(loc)) is None:
            m = generate_stage(stage_cfg("generated"), real=real, embedded=embedded, pool=pool)
        else:
            log.info("stage generated: complete, reusing %s", loc.url)
        manifests["generated"], timings["generate"] = m, time.monotonic() - t0
        check_generated_rows(m)

        # 3. generated rows, kept and dropped, -> embeddings; near-copies of input rows marked dropped
        t0 = time.monotonic()
        manifests["generated_embeddings"], gen_embedded = _generated_embeddings_stage(
            run_dir, loc, m, embedded, stage_cfg)
        timings["embed_generated"] = time.monotonic() - t0
        kept = gen_embedded.filter(pc.is_null(gen_embedded.column(DROP_REASON)))
        if kept.num_rows == 0:
            raise InputError(f"every generated row failed a quality check "
                             f"({_top_reasons(manifests['generated_embeddings']['failed_checks'])}); the rows are in "
                             f"{run_dir.join('generated_embeddings').url}")

        # 4. distributed alignment + weighted resampling
        loc = run_dir.join("aligned")
        t0 = time.monotonic()
        if (m := io.read_manifest(loc)) is None:
            from synalign_ray.alignment.align import align

            acfg = stage_cfg("aligned")
            text_col = cfg.data.text_column
            # generated_id: the row's id in generated_embeddings, carried into the aligned rows to join on
            syn = kept.drop_columns([io.EMBEDDING, DROP_REASON])
            syn = syn.rename_columns([GENERATED_ID if c == io.ROW_ID else c for c in syn.column_names])
            if text_col != "text":
                syn = syn.rename_columns([text_col if c == "text" else c for c in syn.column_names])
            if cfg.data.label_column and cfg.data.label_column != "label":
                syn = syn.rename_columns([cfg.data.label_column if c == "label" else c for c in syn.column_names])
            m = align(acfg, embedded.drop_columns([io.EMBEDDING]),
                      io.embeddings_from_arrow(embedded.column(io.EMBEDDING)), syn,
                      io.embeddings_from_arrow(kept.column(io.EMBEDDING)), loc, cfg.storage)
        else:
            log.info("stage aligned: complete, reusing %s", loc.url)
        manifests["aligned"], timings["align"] = m, time.monotonic() - t0

        # 5. what the rows are worth: every set scored against real rows the generator never saw
        t0 = time.monotonic()
        quality = _score_run(cfg, embedded, gen_embedded, io.read_parts(loc, manifests["aligned"]))
        timings["quality"] = time.monotonic() - t0

    gen = manifests["generated"]
    al = manifests["aligned"]
    manifest = {
        "kind": "run", "output": run_dir.url, "input": cfg.data.path,
        "stages": {name: run_dir.join(name).url for name in RUN_STAGES},
        "counts": {"real_rows": real.num_rows, "groups": gen["groups_done"], "failed_groups": len(gen["failed_groups"]),
                   "generated_rows": gen["rows"] + gen.get("dropped_rows", 0),
                   "duplicates_removed": gen["duplicates_removed"],
                   "failed_checks": manifests["generated_embeddings"]["failed_checks"],
                   "kept_rows": kept.num_rows,
                   "aligned_rows": al["counts"]["rows"], "distinct_fraction": al["counts"]["distinct_fraction"]},
        "tokens": gen["tokens"], "generator_busy_fraction": gen["pool"]["busy_fraction"],
        "quality": quality, "metrics": al["metrics"], "fit": al.get("fit", {}),
        "timings_this_invocation": {k: round(v, 3) for k, v in timings.items()},
        "seconds_this_invocation": round(time.monotonic() - t_run, 3),
        "config": cfg.redacted(), "synalign_version": _version(),
    }
    from synalign_ray.report import write_report

    manifest["report"] = write_report(run_dir, cfg, manifest)
    io.write_manifest(run_dir, manifest, cfg.storage)
    log.info("run complete: %d real rows -> %d generated -> %d aligned rows in %s", real.num_rows, gen["rows"],
             al["counts"]["rows"], run_dir.url)
    return manifest


# --------------------------------------------------------------------------------------------------- coverage


def coverage_stage(cfg: SynAlignConfig, embedded_path: str, schedule_path: str, seeds: int = 5,
                   map_rows: int = 4000) -> dict[str, Any]:
    """`synalign coverage`: how well a schedule's groups cover the real rows, against uniform random anchors.

    Hull coverage (paper Appendix A.2.3) on a t-SNE map of at most `map_rows` rows (the anchors always on it) and
    the k-NN-radius coverage of all demonstration rows in embedding space.
    """
    from synalign_ray import metrics

    table, emb, _ = read_embedded(embedded_path, cfg)
    schedule = read_schedule(schedule_path, cfg)
    pos = {rid: i for i, rid in enumerate(table.column(io.ROW_ID).to_pylist())}
    groups = schedule.column("demo_row_ids").to_pylist()
    try:
        anchors = np.array([pos[g[0]] for g in groups])
        demo_rows = np.array([pos[r] for g in groups for r in g])
    except KeyError as err:
        raise InputError(f"schedule row id {err} is not in {embedded_path}: built from another input?") from None
    k = len(groups[0]) - 1
    rng = np.random.default_rng(cfg.selection.seed)
    others = np.setdiff1d(np.arange(len(emb)), anchors)
    sample = np.concatenate([anchors, rng.choice(others, size=min(len(others), max(map_rows - len(anchors), 0)),
                                                 replace=False)])
    points = metrics.tsne_map(emb[sample], seed=cfg.selection.seed)
    radii = metrics.knn_radii(emb, k=5)
    hull = float(metrics.convex_hull_coverage(points, np.arange(len(anchors)), k)[-1])
    knn = metrics.knn_radius_coverage(emb, emb[demo_rows], k=5, radii=radii)
    rand_hull, rand_knn = [], []
    for s in range(seeds):
        r = np.random.default_rng(cfg.selection.seed + 1 + s)
        picks = r.choice(len(sample), size=len(anchors), replace=False)
        rand_hull.append(float(metrics.convex_hull_coverage(points, picks, k)[-1]))
        # Random groups of the same shape: uniform anchors, each with its k most cosine-similar rows.
        rand_anchors = r.choice(len(emb), size=len(anchors), replace=False)
        rand_rows = np.argsort(-(emb[rand_anchors] @ emb.T), axis=1)[:, :k + 1].ravel()
        rand_knn.append(metrics.knn_radius_coverage(emb, emb[rand_rows], k=5, radii=radii))
    result = {"groups": len(groups), "k": k, "map_rows": int(len(sample)), "hull_coverage": hull,
              "hull_coverage_random": float(np.mean(rand_hull)), "knn_radius_coverage": knn,
              "knn_radius_coverage_random": float(np.mean(rand_knn)), "random_seeds": seeds}
    return result
