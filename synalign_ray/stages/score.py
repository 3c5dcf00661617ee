"""The run's scoring steps: every generated row embedded with its quality mark (near-copies of input rows, label
mismatches, near-duplicates in a group marked dropped), and the quality table of all, kept and aligned rows against
real rows the generator never saw, beside the real ceiling."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synalign_ray import io
from synalign_ray.config import SynAlignConfig
from synalign_ray.stages.align import ensure_embedded, read_rows
from synalign_ray.run_folder import RunFolder, settings_for
from synalign_ray.stages.common import DROP_REASON, GENERATED_ID, stamp
from synalign_ray.stages.common import top_reasons as _top_reasons
from synalign_ray.stages.embed import embed_rows

log = logging.getLogger(__name__)


def _generated_embeddings_stage(run_dir: io.Location, gen_loc: io.Location, gen_manifest: dict[str, Any],
                                embedded: pa.Table, stage_cfg) -> tuple[dict[str, Any], pa.Table]:
    """Embed every generated row, kept and dropped (the quality table scores both), and mark the kept rows that
    repeat an input row in other words (near_copy), carry a label the input rows' classifier contradicts
    (label_mismatch) or repeat a row of their own group (near_duplicate) as dropped; or reuse the complete folder."""
    cfg = stage_cfg("generated_embeddings")
    # The marks depend on the quality and dedup settings as well as on the rows and the encoder.
    settings = settings_for(cfg, ("data", "embedding", "generation", "quality"))
    with RunFolder(run_dir.join("generated_embeddings"), cfg.storage).open(settings, cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused, folder.read(folder.reused)
        out, manifest = _embed_and_mark(cfg, gen_loc, gen_manifest, embedded)
        parts = folder.write_table(out, cfg.output.rows_per_part)
        return folder.finish(stamp({**manifest, "parts": parts, "rows": out.num_rows, "columns": out.column_names},
                                   folder, cfg)), out


def _embed_and_mark(cfg: SynAlignConfig, gen_loc: io.Location, gen_manifest: dict[str, Any],
                    embedded: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    from synalign_ray.generation.ledger import DROPPED_SCHEMA, dropped_location
    from synalign_ray.quality import near_copy_max_cosine

    kept = RunFolder(gen_loc, cfg.storage).read(gen_manifest)
    kept = kept.append_column(DROP_REASON, pa.nulls(kept.num_rows, pa.string()))
    dropped = RunFolder(dropped_location(gen_loc), cfg.storage).read() if gen_manifest.get("dropped_rows") else None
    rows = pa.concat_tables([kept.cast(DROPPED_SCHEMA)] + ([dropped.cast(DROPPED_SCHEMA)] if dropped else []))
    rows = rows.append_column(io.ROW_ID, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    out = embed_rows(rows, cfg, "text")
    emb = io.embeddings_from_arrow(out.column(io.EMBEDDING))
    reasons = out.column(DROP_REASON).to_pylist()
    q = cfg.quality
    live = _live(reasons)
    nearest = near_copy_max_cosine(emb[live], io.embeddings_from_arrow(embedded.column(io.EMBEDDING)))
    near_copies = _mark(reasons, live, nearest >= q.near_copy_cosine, "near_copy")
    label_mismatches = 0
    label = cfg.data.label_column
    if q.label_min_probability > 0 and label and label in embedded.column_names:
        from synalign_ray.quality import own_label_probability

        # Fit on input rows outside the scoring reference, so the check never sees the rows label agreement uses.
        demos = {int(i) for ids in out.column("demo_row_ids").to_pylist() for i in ids}
        held = set(_quality_reference_split(cfg, embedded, demos)[0].column(io.ROW_ID).to_pylist())
        train = embedded.filter(pa.array([int(i) not in held for i in embedded.column(io.ROW_ID).to_pylist()]))
        live = _live(reasons)
        own = own_label_probability(io.embeddings_from_arrow(train.column(io.EMBEDDING)),
                                    train.column(label).to_pylist(), emb[live],
                                    out.column("label").take(pa.array(live)).to_pylist(), q.seed)
        label_mismatches = _mark(reasons, live, own < q.label_min_probability, "label_mismatch")
    near_duplicates = 0
    if cfg.generation.dedup_near_threshold is not None:
        from synalign_ray.generation.dedup import near_duplicate_keep

        live = _live(reasons)
        keep = near_duplicate_keep(emb[live], out.column("group_id").to_numpy()[live],
                                   cfg.generation.dedup_near_threshold)
        near_duplicates = _mark(reasons, live, ~keep, "near_duplicate")
    if q.filter:
        out = out.set_column(out.column_names.index(DROP_REASON), DROP_REASON, pa.array(reasons, pa.string()))
    failed_checks = dict(gen_manifest.get("failed_checks", {}))
    for name, count in (("near_copy", near_copies), ("label_mismatch", label_mismatches),
                        ("near_duplicate", near_duplicates)):
        if count:
            failed_checks[name] = count
    kept_rows = sum(r is None for r in reasons)
    log.info("generated rows: %d kept, %d dropped (%s)", kept_rows, len(reasons) - kept_rows,
             _top_reasons(failed_checks, top=6) or "none")
    return out, {"kind": "embeddings", "input": gen_loc.url, "model": cfg.embedding.model, "dim": emb.shape[1],
                 "failed_checks": failed_checks, "kept_rows": kept_rows}


def _live(reasons: list[str | None]) -> np.ndarray:
    """Positions of the rows no check has dropped yet."""
    return np.flatnonzero([r is None for r in reasons])


def _mark(reasons: list[str | None], live: np.ndarray, failing: np.ndarray, reason: str) -> int:
    """Give `reason` to the live rows where `failing` holds; the number marked."""
    for i in live[failing]:
        reasons[i] = reason
    return int(failing.sum())


def _quality_reference_split(cfg: SynAlignConfig, embedded: pa.Table, demos: set[int]) -> tuple[pa.Table, pa.Table]:
    """(reference, pool) among the input rows no group showed the generator: without quality.reference_path a
    seeded half at most (quality.reference_rows) is the scoring reference and the rest the ceiling's pool; with
    it, the reference comes from that file (the first table is then empty) and every unseen row is pool."""
    unseen = embedded.filter(pa.array([int(i) not in demos for i in embedded.column(io.ROW_ID).to_pylist()]))
    if cfg.quality.reference_path:
        return unseen.slice(0, 0), unseen
    order = np.random.default_rng(cfg.quality.seed).permutation(unseen.num_rows)
    # Half the unseen rows at most, so the ceiling has other real rows to draw from.
    size = min(cfg.quality.reference_rows, unseen.num_rows // 2)
    return unseen.take(pa.array(np.sort(order[:size]))), unseen.take(pa.array(np.sort(order[size:])))


def _score_run(cfg: SynAlignConfig, embedded: pa.Table, gen_embedded: pa.Table, aligned: pa.Table) -> dict[str, Any]:
    """The quality table of a run: all generated rows, the kept ones and the aligned draw, each against a real
    reference the generator never saw, beside the same scores for other real rows (the ceiling)."""
    from synalign_ray import quality

    q, label = cfg.quality, cfg.data.label_column
    rng = np.random.default_rng(q.seed)
    real_emb = io.embeddings_from_arrow(embedded.column(io.EMBEDDING))
    demos = {int(i) for ids in gen_embedded.column("demo_row_ids").to_pylist() for i in ids}
    reference, pool = _quality_reference_split(cfg, embedded, demos)
    if q.reference_path:
        reference = ensure_embedded(read_rows(q.reference_path, cfg, "quality reference"), cfg)[0]
        where = f"{q.reference_path} ({min(reference.num_rows, q.reference_rows)} rows)"
    else:
        where = f"{reference.num_rows} input rows never shown to the generator"
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
