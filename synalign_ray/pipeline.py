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
