"""`synalign embed`: an input, checked on the driver, embedded file to file by the Ray Data pipeline into an
embeddings folder; rows in memory embedded on the same encoder pool; and the embeddings reader."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synalign_ray import io
from synalign_ray.config import SynAlignConfig
from synalign_ray.errors import InputError
from synalign_ray.real_input import RealInput, plan_input
from synalign_ray.run_folder import RunFolder, read_output, settings_for
from synalign_ray import runtime
from synalign_ray.stages.common import stamp

log = logging.getLogger(__name__)

SECTIONS = ("data", "embedding")


def check_embedding_model(cfg: SynAlignConfig) -> None:
    from synalign_ray.models import resolve_embedding_model

    resolve_embedding_model(cfg.embedding.model)


def embed_rows(table: pa.Table, cfg: SynAlignConfig, text_column: str) -> pa.Table:
    """Embed rows already in memory (generated rows) on the Ray Data encoder pool; returns them in input order plus
    `embedding`."""
    from synalign_ray.embedding import collect_embedded, embed_dataset

    t0 = time.monotonic()
    with runtime.ray_session(cfg.resources):
        out = collect_embedded(embed_dataset(table, cfg.embedding, text_column))
    dt = time.monotonic() - t0
    log.info("embedded %d rows in %.1f s (%.0f rows/s) with %d encoder actor(s)", out.num_rows, dt,
             out.num_rows / max(dt, 1e-9), cfg.embedding.num_actors)
    return out


def embed_input_into(folder: RunFolder, cfg: SynAlignConfig, plan: RealInput,
                     log_every_s: float = 10.0) -> dict[str, Any]:
    """Embed a checked input into `folder` with the Ray Data pipeline (read tasks, encoder pool, write tasks: the
    rows never reach the driver); returns the manifest's part list, counts, schema and timing."""
    from synalign_ray.embedding import embed_input

    log.info("embedding %d rows of %s (%d slice(s)) with %s", plan.kept_rows, plan.url, len(plan.slices),
             cfg.embedding.model)
    t0 = last = time.monotonic()
    records, done = [], 0
    with runtime.ray_session(cfg.resources):
        ds = embed_input(plan, cfg.data, cfg.storage, cfg.embedding, folder.url, cfg.output.rows_per_part)
        try:
            for record in ds.iter_rows():
                records.append(record)
                done += record["rows"]
                if (now := time.monotonic()) - last >= log_every_s:
                    log.info("embedded %d of %d rows (%.0f rows/s)", done, plan.kept_rows, done / (now - t0))
                    last = now
        except Exception as err:
            runtime.raise_original(err)
            raise
    seconds = time.monotonic() - t0
    if done != plan.kept_rows:
        raise RuntimeError(f"the embedding pipeline wrote {done} rows of {plan.kept_rows}")
    parts = [r["part"] for r in sorted(records, key=lambda r: r["first_row_id"])]
    with folder.loc.fs.open(folder.loc.join(parts[0]).path, "rb") as fh:
        schema = pq.read_schema(fh)
    log.info("embedded %d rows in %.1f s (%.0f rows/s) with %d encoder actor(s)", done, seconds,
             done / max(seconds, 1e-9), cfg.embedding.num_actors)
    # Each part is in row-id order, but parallel write tasks interleave their ranges: readers sort (RunFolder.read).
    return {"parts": parts, "order": io.ROW_ID, "rows": done, "dim": schema.field(io.EMBEDDING).type.list_size,
            "columns": schema.names, "seconds": round(seconds, 3),
            "rows_per_second": round(done / max(seconds, 1e-9), 1)}


def embed_stage(cfg: SynAlignConfig, plan: RealInput | None = None) -> dict[str, Any]:
    """`synalign embed` (and a run's first step): check the real rows (unless `plan` is their checked plan), embed
    them on the Ray Data pipeline into parts, manifest last."""
    plan = plan or plan_input(cfg.data, cfg.storage)
    loc = io.resolve(cfg.output.path, cfg.storage)
    with RunFolder(loc, cfg.storage).open(settings_for(cfg, SECTIONS), cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused
        check_embedding_model(cfg)
        written = embed_input_into(folder, cfg, plan)
        return folder.finish(stamp({
            "kind": "embeddings", "input": cfg.data.path, "model": cfg.embedding.model,
            "text_column": cfg.data.text_column, "label_column": cfg.data.label_column, **written}, folder, cfg))


def read_embedded(path: str, cfg: SynAlignConfig) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    """Read a completed `synalign embed` output: rows, (n, d) embedding matrix, manifest."""
    table, manifest = read_output(path, cfg.storage, what="embeddings")
    if manifest is None:
        raise InputError(f"{io.resolve(path, cfg.storage).url} has no {io.MANIFEST}: not a completed "
                         "`synalign embed` output")
    if io.EMBEDDING not in table.column_names:
        raise InputError(f"{manifest.get('output', path)} has no '{io.EMBEDDING}' column")
    return table, io.embeddings_from_arrow(table.column(io.EMBEDDING), path), manifest
