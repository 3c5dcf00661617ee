"""The run's marking step, one unit of generated rows per actor call: embed them, take each row's largest cosine to
an input row part by part, mark near-copies, label mismatches and near-duplicates in a group, write the unit's part.
The driver plans the units and sums the counts; rows and embeddings stay in the actors and the folders."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synalign_ray import io
from synalign_ray.alignment.rows import FolderRows
from synalign_ray.config import EmbeddingConfig, StorageConfig
from synalign_ray.stages.common import DROP_REASON

log = logging.getLogger(__name__)

INPUT_COSINE = "nearest_input_cosine"  # each generated row's largest cosine to an input row


@dataclass(frozen=True)
class GeneratedPart:
    """One part of the generation output (kept rows, or the dropped folder's rows with their reasons) and the row
    ids its rows get in generated_embeddings: first_id, first_id + 1, …"""

    url: str
    name: str
    first_id: int
    rows: int


@dataclass(frozen=True)
class MarkRules:
    """What the marker checks and where it writes: the quality settings, the input rows' folder and the
    label classifier fit on the driver (None: no label check)."""

    out_url: str
    storage: StorageConfig | None
    real: FolderRows
    near_copy_cosine: float
    label_min_probability: float
    dedup_near_threshold: float | None
    drop: bool
    label_classifier: Any = None


def plan_units(kept: list[tuple[str, str]], dropped: list[tuple[str, str]], storage: StorageConfig | None,
               rows_per_unit: int) -> list[list[GeneratedPart]]:
    """(folder url, part) lists of the kept and the dropped rows -> units of consecutive parts of about
    rows_per_unit rows (a part is never split: a batch's groups stay whole in one unit, which the near-duplicate
    check needs). Ids follow the order kept parts, then dropped parts; part sizes come from their footers."""
    units: list[list[GeneratedPart]] = []
    first = 0
    for parts in (kept, dropped):
        unit: list[GeneratedPart] = []
        for url, name in parts:
            loc = io.resolve(url, storage)
            path = loc.join(name).path
            with io.reading(loc, path, "parquet", storage), loc.fs.open(path, "rb") as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
            if rows == 0:
                continue
            if unit and sum(p.rows for p in unit) + rows > rows_per_unit:
                units.append(unit)
                unit = []
            unit.append(GeneratedPart(url, name, first, rows))
            first += rows
        if unit:
            units.append(unit)
    return units


def read_unit(unit: list[GeneratedPart], storage: StorageConfig | None) -> pa.Table:
    """A unit's rows in id order, in the dropped schema (kept rows: drop_reason null), with their row ids."""
    from synalign_ray.generation.ledger import DROPPED_SCHEMA

    pieces = []
    for part in unit:
        loc = io.resolve(part.url, storage)
        path = loc.join(part.name).path
        with io.reading(loc, path, "parquet", storage), loc.fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        if DROP_REASON not in table.column_names:
            table = table.append_column(DROP_REASON, pa.nulls(table.num_rows, pa.string()))
        if table.num_rows != part.rows:
            raise RuntimeError(f"{part.url}/{part.name} holds {table.num_rows} rows, its footer said {part.rows}")
        table = table.select(DROPPED_SCHEMA.names).cast(DROPPED_SCHEMA)
        pieces.append(table.append_column(io.ROW_ID, pa.array(np.arange(part.first_id, part.first_id + part.rows,
                                                                          dtype=np.int64))))
    return pa.concat_tables(pieces)


def nearest_input_cosine(real: FolderRows, emb: np.ndarray) -> np.ndarray:
    """Per row, its largest cosine to any input row, the input read one part at a time."""
    from synalign_ray.quality import near_copy_max_cosine

    best = np.full(len(emb), -np.inf, dtype=np.float32)
    for part in real.parts:
        table = real.read_part(part, [io.EMBEDDING])
        if table.num_rows and len(emb):
            np.maximum(best, near_copy_max_cosine(emb, io.embeddings_from_arrow(table.column(io.EMBEDDING),
                                                                                 real.url)), out=best)
    return best


def mark_rows(rows: pa.Table, emb: np.ndarray, nearest: np.ndarray, rules: MarkRules) -> tuple[list, dict[str, int]]:
    """Each row's drop reason after the run's checks, in order: a near-copy of an input row, a label the
    classifier contradicts, a near-duplicate of an earlier row of its group; rows a generation check dropped keep
    their reason. Returns the reasons and the count each new check marked."""
    reasons = rows.column(DROP_REASON).to_pylist()
    counts = {"near_copy": 0, "label_mismatch": 0, "near_duplicate": 0}

    def mark(failing_of_live, reason: str) -> None:
        live = np.flatnonzero([r is None for r in reasons])
        failing = failing_of_live(live)
        for i in live[failing]:
            reasons[i] = reason
        counts[reason] += int(failing.sum())

    mark(lambda live: nearest[live] >= rules.near_copy_cosine, "near_copy")
    if rules.label_classifier is not None:
        from synalign_ray.quality import label_probability

        mark(lambda live: label_probability(rules.label_classifier, emb[live],
                                            rows.column("label").take(pa.array(live)).to_pylist())
             < rules.label_min_probability, "label_mismatch")
    if rules.dedup_near_threshold is not None:
        from synalign_ray.generation.dedup import near_duplicate_keep

        groups = rows.column("group_id").to_numpy()
        mark(lambda live: ~near_duplicate_keep(emb[live], groups[live], rules.dedup_near_threshold),
             "near_duplicate")
    return reasons, counts


class GeneratedRowMarker:
    """Actor body: holds the encoder; `mark` embeds, checks and writes one unit of generated rows."""

    def __init__(self, embedding: EmbeddingConfig):
        from synalign_ray.embedding import Encoder

        self.encoder = Encoder(embedding.model, "text", embedding.device, embedding.max_seq_length)

    def mark(self, unit: list[GeneratedPart], rules: MarkRules) -> dict[str, Any]:
        """The unit's part in generated_embeddings (named by its first row id) and what the driver sums."""
        t0 = time.monotonic()
        rows = read_unit(unit, rules.storage)
        emb = self.encoder.encode(rows.column("text").to_pylist())
        nearest = nearest_input_cosine(rules.real, emb)
        reasons, counts = mark_rows(rows, emb, nearest, rules)
        out = rows.append_column(io.EMBEDDING, io.embeddings_to_arrow(emb))
        out = out.append_column(INPUT_COSINE, pa.array(nearest.astype(np.float64)))
        if rules.drop:
            out = out.set_column(out.column_names.index(DROP_REASON), DROP_REASON, pa.array(reasons, pa.string()))
        first = unit[0].first_id
        name = io.write_part(out, io.resolve(rules.out_url, rules.storage), f"part-{first:012d}.parquet",
                             rules.storage)
        return {"part": name, "first_row_id": first, "rows": out.num_rows,
                # The rows alignment uses: with quality.filter false, every row the generation kept.
                "kept_rows": out.column(DROP_REASON).null_count, "failed_checks": {k: v for k, v in counts.items() if v},
                "seconds": time.monotonic() - t0}


def mark_units(units: list[list[GeneratedPart]], rules: MarkRules, embedding: EmbeddingConfig,
               log_every_s: float = 10.0) -> list[dict[str, Any]]:
    """Run the units on a pool of embedding.num_actors marker actors (the encoder pool's resources); the records
    of the parts written, in row-id order."""
    import ray
    from ray.util import ActorPool

    from synalign_ray import runtime

    total = sum(p.rows for unit in units for p in unit)
    size = min(embedding.num_actors, len(units))
    actor = ray.remote(GeneratedRowMarker).options(num_cpus=embedding.num_cpus_per_actor,
                                                    num_gpus=embedding.num_gpus_per_actor or None)
    pool = ActorPool([actor.remote(embedding) for _ in range(size)])
    rules_ref = ray.put(rules)
    records, done = [], 0
    t0 = last = time.monotonic()
    try:
        for record in pool.map_unordered(lambda a, unit: a.mark.remote(unit, rules_ref), units):
            records.append(record)
            done += record["rows"]
            if (now := time.monotonic()) - last >= log_every_s:
                log.info("embedded and checked %d of %d generated rows (%.0f rows/s)", done, total, done / (now - t0))
                last = now
    except Exception as err:
        runtime.raise_original(err)
        raise
    seconds = time.monotonic() - t0
    log.info("embedded and checked %d generated rows in %.1f s (%.0f rows/s) with %d marker actor(s)", done, seconds,
             done / max(seconds, 1e-9), size)
    return sorted(records, key=lambda r: r["first_row_id"])
