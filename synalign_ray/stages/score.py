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
from synalign_ray.alignment.rows import FolderRows
from synalign_ray.stages.align import ensure_embedded, read_rows
from synalign_ray.run_folder import RunFolder, settings_for
from synalign_ray.stages.common import DROP_REASON, GENERATED_ID, stamp
from synalign_ray.stages.common import top_reasons as _top_reasons
from synalign_ray.stages.embed import embed_rows

log = logging.getLogger(__name__)


INPUT_COSINE = "nearest_input_cosine"  # each generated row's largest cosine to an input row


def input_cosine(real: FolderRows, gen_emb: np.ndarray) -> np.ndarray:
    """Per generated row, its largest cosine to any input row (quality.near_copy_max_cosine): one Ray task per part
    of the input's embeddings folder, each reading its part; the driver keeps the running maximum."""
    import ray

    best = np.full(len(gen_emb), -np.inf, dtype=np.float32)
    if len(gen_emb) == 0:
        return best
    # A sliver of a CPU when every CPU is held (a run's generator pool may still hold them), else one each.
    cpus = max(0.01, min(1.0, ray.available_resources().get("CPU", 0.0)))
    task = ray.remote(_part_input_cosine).options(num_cpus=cpus)
    gen = ray.put(np.asarray(gen_emb, dtype=np.float32))
    pending = [task.remote(real, part, gen) for part in real.parts]
    while pending:
        done, pending = ray.wait(pending)
        np.maximum(best, ray.get(done[0]), out=best)
    return best


def _part_input_cosine(real: FolderRows, part: str, gen: np.ndarray) -> np.ndarray:
    from synalign_ray.quality import near_copy_max_cosine

    table = real.read_part(part, [io.EMBEDDING])
    if table.num_rows == 0:
        return np.full(len(gen), -np.inf, dtype=np.float32)
    return near_copy_max_cosine(gen, io.embeddings_from_arrow(table.column(io.EMBEDDING), real.url))


def _generated_embeddings_stage(run_dir: io.Location, gen_loc: io.Location, gen_manifest: dict[str, Any],
                                real: FolderRows, stage_cfg) -> tuple[dict[str, Any], pa.Table]:
    """Embed every generated row, kept and dropped (the quality table scores both), with its largest cosine to an
    input row (nearest_input_cosine), and mark the kept rows that repeat an input row in other words (near_copy),
    carry a label the input rows' classifier contradicts (label_mismatch) or repeat a row of their own group
    (near_duplicate) as dropped; or reuse the complete folder. `real`: the run's embeddings folder, which stays
    there: tasks compare the rows part by part, and the classifier gets its seeded sample."""
    cfg = stage_cfg("generated_embeddings")
    # The marks depend on the quality and dedup settings as well as on the rows and the encoder.
    settings = settings_for(cfg, ("data", "embedding", "generation", "quality"))
    with RunFolder(run_dir.join("generated_embeddings"), cfg.storage).open(settings, cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused, folder.read(folder.reused)
        out, manifest = _embed_and_mark(cfg, gen_loc, gen_manifest, real)
        parts = folder.write_table(out, cfg.output.rows_per_part)
        return folder.finish(stamp({**manifest, "parts": parts, "rows": out.num_rows, "columns": out.column_names},
                                   folder, cfg)), out


def _input_ids_and_labels(cfg: SynAlignConfig, real: FolderRows) -> tuple[np.ndarray, np.ndarray | None]:
    """The input rows' ids (sorted) and labels (None without a label column): the one pass over the folder."""
    label = cfg.data.label_column
    labelled = bool(label) and label in real.schema().names
    scan = real.scan([label] if labelled else [])
    labels = np.asarray(scan.column(label).to_pylist(), dtype=object) if labelled else None
    return scan.column(io.ROW_ID).to_numpy(), labels


def _embed_and_mark(cfg: SynAlignConfig, gen_loc: io.Location, gen_manifest: dict[str, Any],
                    real: FolderRows) -> tuple[pa.Table, dict[str, Any]]:
    from synalign_ray.generation.ledger import DROPPED_SCHEMA, dropped_location

    kept = RunFolder(gen_loc, cfg.storage).read(gen_manifest)
    kept = kept.append_column(DROP_REASON, pa.nulls(kept.num_rows, pa.string()))
    dropped = RunFolder(dropped_location(gen_loc), cfg.storage).read() if gen_manifest.get("dropped_rows") else None
    rows = pa.concat_tables([kept.cast(DROPPED_SCHEMA)] + ([dropped.cast(DROPPED_SCHEMA)] if dropped else []))
    rows = rows.append_column(io.ROW_ID, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    out = embed_rows(rows, cfg, "text")
    emb = io.embeddings_from_arrow(out.column(io.EMBEDDING))
    nearest = input_cosine(real, emb)
    out = out.append_column(INPUT_COSINE, pa.array(nearest.astype(np.float64)))
    reasons = out.column(DROP_REASON).to_pylist()
    q = cfg.quality
    live = _live(reasons)
    near_copies = _mark(reasons, live, nearest[live] >= q.near_copy_cosine, "near_copy")
    label_mismatches = 0
    ids, labels = _input_ids_and_labels(cfg, real) if q.label_min_probability > 0 else (None, None)
    if labels is not None:
        from synalign_ray.quality import own_label_probability
        from synalign_ray.quality.scores import MAX_SCORED_ROWS, seeded_subsample

        # Fit on input rows outside the scoring reference, so the check never sees the rows label agreement uses.
        demos = {int(i) for ids_ in out.column("demo_row_ids").to_pylist() for i in ids_}
        train = np.flatnonzero(~np.isin(ids, _quality_reference_split(cfg, ids, demos)[0]))
        # own_label_probability's own seeded sample, taken here so that only those rows are read.
        train = train[seeded_subsample(len(train), MAX_SCORED_ROWS, np.random.default_rng(q.seed))]
        train_rows = real.take(ids[train], [io.EMBEDDING])
        live = _live(reasons)
        own = own_label_probability(io.embeddings_from_arrow(train_rows.column(io.EMBEDDING)), labels[train].tolist(),
                                    emb[live], out.column("label").take(pa.array(live)).to_pylist(), q.seed)
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


def _quality_reference_split(cfg: SynAlignConfig, ids: np.ndarray, demos: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """(reference, pool) row ids among the input rows (`ids`, sorted) no group showed the generator: without
    quality.reference_path a seeded half at most (quality.reference_rows) is the scoring reference and the rest the
    ceiling's pool; with it, the reference comes from that file (the first array is then empty) and every unseen row
    is pool."""
    unseen = ids[~np.isin(ids, np.fromiter(demos, dtype=np.int64, count=len(demos)))]
    if cfg.quality.reference_path:
        return unseen[:0], unseen
    order = np.random.default_rng(cfg.quality.seed).permutation(len(unseen))
    # Half the unseen rows at most, so the ceiling has other real rows to draw from.
    size = min(cfg.quality.reference_rows, len(unseen) // 2)
    return unseen[np.sort(order[:size])], unseen[np.sort(order[size:])]


def _score_run(cfg: SynAlignConfig, real: FolderRows, gen_embedded: pa.Table, aligned: pa.Table) -> dict[str, Any]:
    """The quality table of a run: all generated rows, the kept ones and the aligned draw, each against a real
    reference the generator never saw, beside the same scores for other real rows (the ceiling). Of the input
    (`real`, the run's embeddings folder) only the reference and the ceiling's seeded sample are read."""
    from synalign_ray import quality
    from synalign_ray.quality.scores import seeded_subsample

    q, label = cfg.quality, cfg.data.label_column
    rng = np.random.default_rng(q.seed)
    ids, _ = _input_ids_and_labels(cfg, real)
    demos = {int(i) for ids_ in gen_embedded.column("demo_row_ids").to_pylist() for i in ids_}
    reference_ids, pool_ids = _quality_reference_split(cfg, ids, demos)
    if q.reference_path:
        reference = ensure_embedded(read_rows(q.reference_path, cfg, "quality reference"), cfg)[0]
        where = f"{q.reference_path} ({min(reference.num_rows, q.reference_rows)} rows)"
    else:
        reference = real.take(reference_ids)
        where = f"{reference.num_rows} input rows never shown to the generator"
    if reference.num_rows > q.reference_rows:
        reference = reference.take(pa.array(np.sort(rng.choice(reference.num_rows, q.reference_rows, replace=False))))
    ref_emb = io.embeddings_from_arrow(reference.column(io.EMBEDDING))
    ref_labels = reference.column(label).to_pylist() if label and label in reference.column_names else None

    def labels_of(table: pa.Table, column: str) -> list | None:
        return table.column(column).to_pylist() if ref_labels is not None and column in table.column_names else None

    if INPUT_COSINE not in gen_embedded.column_names:  # a folder written before the column existed
        gen_embedded = gen_embedded.append_column(INPUT_COSINE, pa.array(input_cosine(
            real, io.embeddings_from_arrow(gen_embedded.column(io.EMBEDDING))).astype(np.float64)))
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
            input_cosine=table.column(INPUT_COSINE).to_numpy(), near_copy_cosine=q.near_copy_cosine)
    if len(pool_ids) >= 2:
        size = max(kept.num_rows, 2)
        # real_ceiling's own seeded sample of the pool, taken here so that only those rows are read.
        pool = real.take(pool_ids[seeded_subsample(len(pool_ids), size, np.random.default_rng(q.seed))])
        scores["real ceiling"] = quality.real_ceiling(
            io.embeddings_from_arrow(pool.column(io.EMBEDDING)), labels_of(pool, label) if label else None,
            pool.column(cfg.data.text_column).to_pylist(), ref_emb, ref_labels, size, q.seed)
    log.info("quality against %s: %s", where, "; ".join(
        f"{name} AUC {s['two_sample_auc']:.2f} MAUVE {s['mauve']:.2f}" for name, s in scores.items()
        if s.get("two_sample_auc") is not None and s.get("mauve") is not None))
    return {"reference": where, "sets": scores}
