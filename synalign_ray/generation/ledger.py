"""Resumable generation output: one Parquet part plus one ledger entry per finished batch, manifest at the end.

A batch counts as done only once its ledger entry (written after its part) exists, so a crash loses at most the
batches in flight; a rerun drops orphan parts, skips recorded groups and never counts tokens twice.
"""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any

import pyarrow as pa

from synalign_ray import io
from synalign_ray.config import StorageConfig
from synalign_ray.generation.prompts import normalise_text

log = logging.getLogger(__name__)

LEDGER_DIR = "ledger"
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


class GenerationLedger:
    """Tracks which groups are written, the exact-duplicate keys seen, and token and failure totals."""

    def __init__(self, loc: io.Location, storage: StorageConfig | None = None):
        self.loc = loc
        self.storage = storage
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
        listed = {e["part"] for e in self.entries if e.get("part")}
        # Parts without a ledger entry come from a batch that crashed between the two writes: drop them.
        if self.loc.fs.exists(self.loc.path):
            for p in self.loc.fs.ls(self.loc.path, detail=False):
                name = posixpath.basename(p)
                if name.startswith("part-") and name.endswith(".parquet") and name not in listed:
                    log.warning("removing orphan part %s from an interrupted batch", name)
                    self.loc.fs.rm(p)
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
        """Drop exact duplicates, write the part, then the ledger entry that marks these groups done."""
        kept, duplicates = [], 0
        for row in rows:
            key = normalise_text(row["text"])
            if key in self.seen:
                duplicates += 1
                continue
            self.seen.add(key)
            kept.append(row)
        seq = len(self.entries)
        part = None
        if kept:
            part = f"part-{seq:05d}.parquet"
            io.write_part(pa.Table.from_pylist(kept, schema=GENERATED_SCHEMA), self.loc, part, self.storage)
        entry = {"seq": seq, "part": part, "group_ids": sorted(group_ids), "rows": len(kept),
                 "duplicates": duplicates, "failures": failures, "tokens": tokens, "seconds": round(seconds, 3)}
        io.write_manifest(self.loc.join(LEDGER_DIR), entry, self.storage, name=f"batch-{seq:05d}.json")
        self.entries.append(entry)
        return entry

    def totals(self) -> dict[str, Any]:
        tokens = {s: {"prompt": 0, "completion": 0} for s in ("stage1", "stage2")}
        failure_reasons: dict[str, int] = {}
        for e in self.entries:
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
            "failed_groups": sorted({f["group_id"] for e in self.entries for f in e["failures"]}),
            "failure_reasons": failure_reasons,
            "tokens": tokens,
            "generator_seconds": round(sum(e["seconds"] for e in self.entries), 3),
            "parts": [e["part"] for e in self.entries if e["part"]],
        }
