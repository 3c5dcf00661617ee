"""Embedding stage: a callable sentence-transformers encoder, run by Ray Data `map_batches` on an actor pool.

Output is the input columns plus `embedding`: fixed_size_list<float32>[d], L2-normalised.
"""

from __future__ import annotations

import logging
import time
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synalign_ray.config import EmbeddingConfig
from synalign_ray.io import EMBEDDING, ROW_ID, embeddings_to_arrow

log = logging.getLogger(__name__)


class Encoder:
    """Loads the model once per actor; each call embeds one Arrow batch of rows."""

    def __init__(self, model: str, text_column: str = "text", device: str | None = None,
                 max_seq_length: int | None = None, encode_batch_size: int = 64):
        import torch

        from synalign_ray.models import load_sentence_transformer

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_sentence_transformer(model, device=device, max_seq_length=max_seq_length)
        self.text_column = text_column
        self.encode_batch_size = encode_batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(texts, batch_size=self.encode_batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        emb = self.encode(texts)
        if EMBEDDING in batch.column_names:
            batch = batch.drop_columns([EMBEDDING])
        return batch.append_column(EMBEDDING, embeddings_to_arrow(emb))


def length_sorted(table: pa.Table, text_column: str) -> pa.Table:
    """Order rows by text length so each batch pads to similar lengths (row_id keeps the input order)."""
    lengths = pc.utf8_length(table.column(text_column)).to_numpy(zero_copy_only=False)
    order = np.argsort(lengths, kind="stable")
    return table.take(pa.array(order))


def embed_dataset(table: pa.Table, cfg: EmbeddingConfig, text_column: str, progress: bool = True):
    """Build the Ray Data pipeline that embeds `table`: length-sorted blocks, encoder actor pool.

    Returns a lazy `ray.data.Dataset`; iterate it or call `collect_embedded` to materialise it.
    """
    import ray
    from ray.data import ActorPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ordered = length_sorted(table, text_column)
    # Blocks of a few batches each: enough to keep every actor busy without one huge block per actor.
    n_blocks = max(1, min(len(ordered) // cfg.batch_size, cfg.num_actors * 8))
    step = -(-len(ordered) // n_blocks)
    ds = ray.data.from_arrow([ordered.slice(i, step) for i in range(0, len(ordered), step)])
    return ds.map_batches(
        Encoder,
        fn_constructor_kwargs={"model": cfg.model, "text_column": text_column, "device": cfg.device,
                               "max_seq_length": cfg.max_seq_length},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.num_cpus_per_actor,
        num_gpus=cfg.num_gpus_per_actor or None,
        zero_copy_batch=True,
    )


def collect_embedded(ds, log_every_s: float = 10.0) -> pa.Table:
    """Materialise the embedded dataset, sorted back into input (`row_id`) order, logging progress."""
    tables = []
    n = 0
    t0 = last = time.monotonic()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        tables.append(batch)
        n += batch.num_rows
        now = time.monotonic()
        if now - last >= log_every_s:
            log.info("embedded %d rows (%.0f rows/s)", n, n / (now - t0))
            last = now
    table = pa.concat_tables(tables)
    return table.take(pc.sort_indices(table, sort_keys=[(ROW_ID, "ascending")]))
