"""The run's scoring steps: every generated row embedded with its quality mark (near-copies of input rows, label
mismatches, near-duplicates in a group marked dropped), and the quality table of all, kept and aligned rows against
real rows the generator never saw, beside the real ceiling."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synalign_ray import io
from synalign_ray.config import SynAlignConfig
from synalign_ray.errors import InputError
from synalign_ray.alignment.rows import FolderRows
from synalign_ray.stages.align import ensure_embedded, read_rows
from synalign_ray.run_folder import RunFolder, settings_for
from synalign_ray.stages.common import DROP_REASON, GENERATED_ID, stamp
from synalign_ray.stages.common import top_reasons as _top_reasons
from synalign_ray.stages.mark import INPUT_COSINE

log = logging.getLogger(__name__)


def input_cosine(real: FolderRows, gen_emb: np.ndarray) -> np.ndarray:
    """Per generated row, its largest cosine to any input row (quality.near_copy_max_cosine): one Ray task per part
    of the input's embeddings folder, each reading its part; the driver keeps the running maximum. For a scored
    sample of a folder written before generated_embeddings carried the column."""
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
                                real: FolderRows, stage_cfg) -> dict[str, Any]:
    """Embed every generated row, kept and dropped (the quality table scores both), with its largest cosine to an
    input row (nearest_input_cosine), and mark the kept rows that repeat an input row in other words (near_copy),
    carry a label the input rows' classifier contradicts (label_mismatch) or repeat a row of their own group
    (near_duplicate) as dropped; or reuse the complete folder. `real`: the run's embeddings folder, which stays
    there. Marker actors do the work unit by unit (stages/mark.py); the driver fits the label classifier on a
    seeded sample of input rows and sums the counts."""
    cfg = stage_cfg("generated_embeddings")
    # The marks depend on the quality and dedup settings as well as on the rows and the encoder.
    settings = settings_for(cfg, ("data", "embedding", "generation", "quality"))
    with RunFolder(run_dir.join("generated_embeddings"), cfg.storage).open(settings, cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused
        return folder.finish(stamp(_embed_and_mark(cfg, gen_loc, gen_manifest, real, folder), folder, cfg))


def _input_ids(real: FolderRows) -> np.ndarray:
    """The input rows' ids, sorted: the one column of the folder the driver scans."""
    return real.scan([]).column(io.ROW_ID).to_numpy()


def _demo_ids(parts: list[tuple[str, str]], storage) -> set[int]:
    """The input row ids the generated rows' groups showed the generator (their demo_row_ids column)."""
    demos: set[int] = set()
    for url, name in parts:
        loc = io.resolve(url, storage)
        with loc.fs.open(loc.join(name).path, "rb") as fh:
            column = pq.read_table(fh, columns=["demo_row_ids"]).column("demo_row_ids")
        demos.update(pc.list_flatten(column).to_pylist())
    return demos


def _label_classifier(cfg: SynAlignConfig, real: FolderRows, demos: set[int]) -> Any:
    """The label check's classifier, fit on a seeded sample of input rows outside the scoring reference (so the
    check never sees the rows label agreement uses); None when the check is off or the input has no labels."""
    label = cfg.data.label_column
    if cfg.quality.label_min_probability <= 0 or not label or label not in real.schema().names:
        return None
    from synalign_ray.quality import fit_label_classifier
    from synalign_ray.quality.scores import MAX_SCORED_ROWS, seeded_subsample

    ids = _input_ids(real)
    train = ids[~np.isin(ids, _quality_reference_split(cfg, ids, demos)[0])]
    # fit_label_classifier's own seeded sample, taken here so that only those rows are read.
    train = train[seeded_subsample(len(train), MAX_SCORED_ROWS, np.random.default_rng(cfg.quality.seed))]
    rows = real.take(train, [io.EMBEDDING, label])
    return fit_label_classifier(io.embeddings_from_arrow(rows.column(io.EMBEDDING)), rows.column(label).to_pylist(),
                                cfg.quality.seed)


def _manifest_of(loc: io.Location, cfg: SynAlignConfig) -> dict[str, Any]:
    if (manifest := RunFolder(loc, cfg.storage).manifest()) is None:
        raise InputError(f"{loc.url} has no {io.MANIFEST}: it is not a completed synalign output")
    return manifest


def _embed_and_mark(cfg: SynAlignConfig, gen_loc: io.Location, gen_manifest: dict[str, Any], real: FolderRows,
                    folder: RunFolder) -> dict[str, Any]:
    from synalign_ray.generation.ledger import dropped_location
    from synalign_ray.stages.mark import MarkRules, mark_units, plan_units

    kept = [(gen_loc.url, p) for p in gen_manifest["parts"]]
    dropped_loc = dropped_location(gen_loc)
    # The dropped folder's own manifest lists its parts (RunFolder.read refuses an incomplete one).
    dropped = [(dropped_loc.url, p) for p in _manifest_of(dropped_loc, cfg)["parts"]] \
        if gen_manifest.get("dropped_rows") else []
    units = plan_units(kept, dropped, cfg.storage, cfg.output.rows_per_part)
    q = cfg.quality
    rules = MarkRules(folder.url, cfg.storage, real, q.near_copy_cosine, q.label_min_probability,
                      cfg.generation.dedup_near_threshold, q.filter,
                      _label_classifier(cfg, real, _demo_ids(kept + dropped, cfg.storage)))
    records = mark_units(units, rules, cfg.embedding)
    failed_checks = dict(gen_manifest.get("failed_checks", {}))
    for record in records:
        for name, count in record["failed_checks"].items():
            failed_checks[name] = failed_checks.get(name, 0) + count
    rows = sum(r["rows"] for r in records)
    kept_rows = sum(r["kept_rows"] for r in records)
    log.info("generated rows: %d kept, %d dropped (%s)", kept_rows, rows - kept_rows,
             _top_reasons(failed_checks, top=6) or "none")
    with folder.loc.fs.open(folder.loc.join(records[0]["part"]).path, "rb") as fh:
        schema = pq.read_schema(fh)
    return {"kind": "embeddings", "input": gen_loc.url, "model": cfg.embedding.model,
            "dim": schema.field(io.EMBEDDING).type.list_size, "failed_checks": failed_checks, "kept_rows": kept_rows,
            "parts": [r["part"] for r in records], "order": io.ROW_ID, "rows": rows, "columns": schema.names}


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


def _drawn_generated_ids(aligned: io.Location, manifest: dict[str, Any]) -> np.ndarray:
    """The generated ids of the aligned draw's synthetic rows (with their repeats): the columns read."""
    table = io.read_parts(aligned, manifest, ["source", GENERATED_ID])
    if "source" in table.column_names:
        table = table.filter(pc.equal(table.column("source"), "synthetic"))
    return table.column(GENERATED_ID).to_numpy(zero_copy_only=False).astype(np.int64)


def _score_run(cfg: SynAlignConfig, real: FolderRows, generated: FolderRows, aligned: io.Location,
               aligned_manifest: dict[str, Any]) -> dict[str, Any]:
    """The quality table of a run: all generated rows, the kept ones and the aligned draw, each against a real
    reference the generator never saw, beside the same scores for other real rows (the ceiling). The driver scans
    ids and groups and reads only the rows it scores: of the input (`real`) the reference and the ceiling's seeded
    sample, of the generated rows (`generated`, all of generated_embeddings) each set's scored sample."""
    from synalign_ray import quality
    from synalign_ray.quality.scores import MAX_SCORED_ROWS, scored_sample, seeded_subsample

    q, label = cfg.quality, cfg.data.label_column
    rng = np.random.default_rng(q.seed)
    index = generated.scan(["group_id", DROP_REASON, "demo_row_ids"])
    demos = set(pc.list_flatten(index.column("demo_row_ids")).to_pylist())
    reference_ids, pool_ids = _quality_reference_split(cfg, _input_ids(real), demos)
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

    gen_ids = index.column(io.ROW_ID).to_numpy()
    groups = index.column("group_id").to_numpy()
    set_ids = {"all generated": gen_ids,
               "kept": gen_ids[pc.is_null(index.column(DROP_REASON)).to_numpy(zero_copy_only=False)],
               "aligned draw": _drawn_generated_ids(aligned, aligned_manifest)}
    # Sets above MAX_SCORED_ROWS are scored on whole groups in a seeded order (scored_sample): only those rows read.
    sampled = {name: ids[scored_sample(groups[np.searchsorted(gen_ids, ids)], MAX_SCORED_ROWS, q.seed)]
               for name, ids in set_ids.items()}
    wanted = np.unique(np.concatenate(list(sampled.values())))
    columns = [c for c in (io.EMBEDDING, "text", "label", "group_id", INPUT_COSINE) if c in generated.schema().names]
    rows = generated.take(wanted, columns)
    if INPUT_COSINE not in rows.column_names:  # a folder written before the column existed
        rows = rows.append_column(INPUT_COSINE, pa.array(input_cosine(
            real, io.embeddings_from_arrow(rows.column(io.EMBEDDING))).astype(np.float64)))
    scores = {}
    for name, ids in sampled.items():
        if len(ids) == 0:
            continue
        table = rows.take(pa.array(np.searchsorted(wanted, ids)))
        scores[name] = quality.score_set(
            io.embeddings_from_arrow(table.column(io.EMBEDDING)), labels_of(table, "label"),
            table.column("text").to_pylist(), ref_emb, ref_labels, q.seed, group_ids=table.column("group_id").to_pylist(),
            input_cosine=table.column(INPUT_COSINE).to_numpy(), near_copy_cosine=q.near_copy_cosine,
            rows=len(set_ids[name]))
    if len(pool_ids) >= 2:
        size = max(len(sampled["kept"]), 2)
        # real_ceiling's own seeded sample of the pool, taken here so that only those rows are read.
        pool = real.take(pool_ids[seeded_subsample(len(pool_ids), size, np.random.default_rng(q.seed))])
        scores["real ceiling"] = quality.real_ceiling(
            io.embeddings_from_arrow(pool.column(io.EMBEDDING)), labels_of(pool, label) if label else None,
            pool.column(cfg.data.text_column).to_pylist(), ref_emb, ref_labels, size, q.seed)
    log.info("quality against %s: %s", where, "; ".join(
        f"{name} AUC {s['two_sample_auc']:.2f} MAUVE {s['mauve']:.2f}" for name, s in scores.items()
        if s.get("two_sample_auc") is not None and s.get("mauve") is not None))
    return {"reference": where, "sets": scores}
