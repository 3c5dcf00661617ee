"""Resumable generation output: one Parquet part of kept rows (and one of dropped rows, in the folder beside it)
plus one ledger entry per finished batch, manifest at the end.

A batch counts as done only once its ledger entry (written after its parts) exists, so a crash loses at most the
batches in flight; a rerun drops orphan parts, skips recorded groups and never counts tokens twice.
"""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any, Callable

import pyarrow as pa

from synalign_ray import io
from synalign_ray.config import StorageConfig
from synalign_ray.generation.modes import STAGES
from synalign_ray.generation.parsing import normalise_text

log = logging.getLogger(__name__)

# `_`: Parquet readers skip it, so the output folder opens as a dataset while and after it is written.
LEDGER_DIR = "_ledger"
GENERATED_SCHEMA = pa.schema([
    pa.field("text", pa.string()),
    pa.field("label", pa.string()),
    pa.field("group_id", pa.int64()),
    pa.field("demo_row_ids", pa.list_(pa.int64())),
    pa.field("summary", pa.string()),
    pa.field("model", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
])


DROPPED_SCHEMA = GENERATED_SCHEMA.append(pa.field("drop_reason", pa.string()))


def dropped_location(loc: io.Location) -> io.Location:
    """Where the rows that failed a quality check go: the folder `<name>_dropped` beside the output."""
    return loc.sibling(posixpath.basename(loc.path.rstrip("/")) + "_dropped")


class GenerationLedger:
    """Tracks which groups are written, the exact-duplicate keys seen, and token, failure and drop totals.

    `row_check` (texts -> first failing check or None per row) judges each batch's rows; with `drop` the failing
    ones go to the dropped folder with their reason instead of the output, otherwise they are only counted.
    """

    def __init__(self, loc: io.Location, storage: StorageConfig | None = None,
                 row_check: Callable[[list[str]], list[str | None]] | None = None, drop: bool = True):
        self.loc = loc
        self.storage = storage
        self.dropped_loc = dropped_location(loc)
        self.row_check = row_check
        self.drop = drop
        self.entries: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self._load()

    def _ledger_names(self) -> list[str]:
        d = self.loc.join(LEDGER_DIR)
        if not self.loc.fs.exists(d.path):
            return []
        names = (posixpath.basename(p) for p in self.loc.fs.ls(d.path, detail=False))
        return sorted(n for n in names if n.startswith("batch-") and n.endswith(".json"))

    def _load(self) -> None:
        for name in self._ledger_names():
            with self.loc.fs.open(self.loc.join(LEDGER_DIR, name).path, "rb") as fh:
                self.entries.append(json.loads(fh.read()))
        # Parts without a ledger entry come from a batch that crashed between the writes: drop them.
        for folder, key in ((self.loc, "part"), (self.dropped_loc, "dropped_part")):
            listed = {e[key] for e in self.entries if e.get(key)}
            if folder.fs.exists(folder.path):
                for p in folder.fs.ls(folder.path, detail=False):
                    name = posixpath.basename(p)
                    if name.startswith("part-") and name.endswith(".parquet") and name not in listed:
                        log.warning("removing orphan part %s from an interrupted batch", p)
                        folder.fs.rm(p)
        for e in self.entries:
            if e.get("part"):
                with self.loc.fs.open(self.loc.join(e["part"]).path, "rb") as fh:
                    import pyarrow.parquet as pq

                    texts = pq.read_table(fh, columns=["text"]).column("text").to_pylist()
                self.seen.update(normalise_text(t) for t in texts)
        if self.entries:
            log.info("resuming: %d batch(es), %d group(s) already done", len(self.entries), len(self.done_groups))

    @property
    def done_groups(self) -> set[int]:
        return {g for e in self.entries for g in e["group_ids"]}

    def record(self, rows: list[dict[str, Any]], group_ids: list[int], failures: list[dict[str, Any]],
               tokens: dict[str, dict[str, int]], seconds: float) -> dict[str, Any]:
        """Drop exact duplicates, judge the rest, write the kept and the dropped part, then the ledger entry that
        marks these groups done."""
        unique, duplicates = [], 0
        for row in rows:
            key = normalise_text(row["text"])
            if key in self.seen:
                duplicates += 1
                continue
            self.seen.add(key)
            unique.append(row)
        reasons = self.row_check([r["text"] for r in unique]) if self.row_check else [None] * len(unique)
        drop_counts: dict[str, int] = {}
        for reason in reasons:
            if reason:
                drop_counts[reason] = drop_counts.get(reason, 0) + 1
        kept = [r for r, why in zip(unique, reasons) if not (why and self.drop)]
        dropped = [{**r, "drop_reason": why} for r, why in zip(unique, reasons) if why and self.drop]
        seq = len(self.entries)
        part = dropped_part = None
        if dropped:
            dropped_part = f"part-{seq:05d}.parquet"
            io.write_part(pa.Table.from_pylist(dropped, schema=DROPPED_SCHEMA), self.dropped_loc, dropped_part,
                          self.storage)
        if kept:
            part = f"part-{seq:05d}.parquet"
            io.write_part(pa.Table.from_pylist(kept, schema=GENERATED_SCHEMA), self.loc, part, self.storage)
        entry = {"seq": seq, "part": part, "dropped_part": dropped_part, "group_ids": sorted(group_ids),
                 "rows": len(kept), "duplicates": duplicates, "failed_checks": drop_counts,
                 "dropped": len(dropped), "failures": failures, "tokens": tokens, "seconds": round(seconds, 3)}
        io.write_manifest(self.loc.join(LEDGER_DIR), entry, self.storage, name=f"batch-{seq:05d}.json")
        self.entries.append(entry)
        return entry

    def totals(self) -> dict[str, Any]:
        tokens = {s: {"prompt": 0, "completion": 0} for s in STAGES}
        failure_reasons: dict[str, int] = {}
        failed_checks: dict[str, int] = {}
        for e in self.entries:
            for reason, count in e.get("failed_checks", {}).items():
                failed_checks[reason] = failed_checks.get(reason, 0) + count
            for stage, t in e["tokens"].items():
                for k, v in t.items():
                    tokens[stage][k] += v
            for f in e["failures"]:
                key = f"{f['stage']}:{f['reason']}"
                failure_reasons[key] = failure_reasons.get(key, 0) + 1
        return {
            "batches": len(self.entries),
            "groups_done": len(self.done_groups),
            "rows": sum(e["rows"] for e in self.entries),
            "duplicates_removed": sum(e["duplicates"] for e in self.entries),
            # rows that failed a quality check, by check; with the filter on they are in the dropped folder
            "failed_checks": failed_checks,
            "dropped_rows": sum(e.get("dropped", 0) for e in self.entries),
            "dropped_parts": [e["dropped_part"] for e in self.entries if e.get("dropped_part")],
            "failed_groups": sorted({f["group_id"] for e in self.entries for f in e["failures"]}),
            "failure_reasons": failure_reasons,
            "tokens": tokens,
            "generator_seconds": round(sum(e["seconds"] for e in self.entries), 3),
            "parts": [e["part"] for e in self.entries if e["part"]],
        }
