"""`synalign embed`: real rows -> the Ray Data encoder pool -> an embeddings folder; and its reader."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from synalign_ray import io
from synalign_ray.config import SynAlignConfig
from synalign_ray.errors import InputError
from synalign_ray.run_folder import RunFolder, read_output, settings_for
from synalign_ray import runtime
from synalign_ray.stages.common import stamp

log = logging.getLogger(__name__)

SECTIONS = ("data", "embedding")


def check_embedding_model(cfg: SynAlignConfig) -> None:
    from synalign_ray.models import resolve_embedding_model

    resolve_embedding_model(cfg.embedding.model)


def embed_rows(table: pa.Table, cfg: SynAlignConfig, text_column: str) -> pa.Table:
    """Embed the rows of `table` on the Ray Data encoder pool; returns them in input order plus `embedding`."""
    from synalign_ray.embedding import collect_embedded, embed_dataset

    t0 = time.monotonic()
    with runtime.ray_session(cfg.resources):
        out = collect_embedded(embed_dataset(table, cfg.embedding, text_column))
    dt = time.monotonic() - t0
    log.info("embedded %d rows in %.1f s (%.0f rows/s) with %d encoder actor(s)", out.num_rows, dt,
             out.num_rows / max(dt, 1e-9), cfg.embedding.num_actors)
    return out


def embed_stage(cfg: SynAlignConfig) -> dict[str, Any]:
    """`synalign embed`: read the real rows, embed them on the actor pool, write parts + manifest."""
    rows = io.read_real_rows(cfg.data, cfg.storage)
    loc = io.resolve(cfg.output.path, cfg.storage)
    with RunFolder(loc, cfg.storage).open(settings_for(cfg, SECTIONS), cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused
        check_embedding_model(cfg)
        log.info("embedding %d rows from %s with %s", rows.num_rows, cfg.data.path, cfg.embedding.model)
        t0 = time.monotonic()
        embedded = embed_rows(rows, cfg, cfg.data.text_column)
        seconds = time.monotonic() - t0
        parts = folder.write_table(embedded, cfg.output.rows_per_part)
        return folder.finish(stamp({
            "kind": "embeddings", "input": cfg.data.path, "model": cfg.embedding.model,
            "dim": embedded.schema.field(io.EMBEDDING).type.list_size, "text_column": cfg.data.text_column,
            "label_column": cfg.data.label_column, "parts": parts, "rows": embedded.num_rows,
            "columns": embedded.column_names, "seconds": round(seconds, 3),
            "rows_per_second": round(embedded.num_rows / max(seconds, 1e-9), 1)}, folder, cfg))


def read_embedded(path: str, cfg: SynAlignConfig) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    """Read a completed `synalign embed` output: rows, (n, d) embedding matrix, manifest."""
    table, manifest = read_output(path, cfg.storage, what="embeddings")
    if manifest is None:
        raise InputError(f"{io.resolve(path, cfg.storage).url} has no {io.MANIFEST}: not a completed "
                         "`synalign embed` output")
    if io.EMBEDDING not in table.column_names:
        raise InputError(f"{manifest.get('output', path)} has no '{io.EMBEDDING}' column")
    return table, io.embeddings_from_arrow(table.column(io.EMBEDDING), path), manifest
