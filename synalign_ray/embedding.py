"""Embedding stage: a callable sentence-transformers encoder, run by Ray Data `map_batches` on an actor pool, over
rows in memory (`embed_dataset`) or an input read and written by Ray Data tasks (`embed_input`).

Output is the input columns plus `embedding`: fixed_size_list<float32>[d], L2-normalised.
"""

from __future__ import annotations

import logging
import time
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synalign_ray.config import DataConfig, EmbeddingConfig, StorageConfig
from synalign_ray.io import EMBEDDING, ROW_ID, embeddings_to_arrow, resolve, write_part
from synalign_ray.real_input import RealInput, read_slice

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


def encoded(ds, cfg: EmbeddingConfig, text_column: str):
    """`ds` with `embedding` appended by the encoder actor pool."""
    from ray.data import ActorPoolStrategy

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


def embed_dataset(table: pa.Table, cfg: EmbeddingConfig, text_column: str, progress: bool = True):
    """Build the Ray Data pipeline that embeds rows already in memory (generated rows): length-sorted blocks, encoder
    actor pool. Returns a lazy `ray.data.Dataset`; iterate it or call `collect_embedded` to materialise it."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = progress
    ordered = length_sorted(table, text_column)
    # Blocks of a few batches each: enough to keep every actor busy without one huge block per actor.
    n_blocks = max(1, min(len(ordered) // cfg.batch_size, cfg.num_actors * 8))
    step = -(-len(ordered) // n_blocks)
    ds = ray.data.from_arrow([ordered.slice(i, step) for i in range(0, len(ordered), step)])
    return encoded(ds, cfg, text_column)


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


# ------------------------------------------------------------------------------------- an input, file to file

# Rows per block the read tasks' output is cut into, at most: a slice (a Parquet row group, a whole JSONL/CSV file)
# is one block otherwise, and a block goes to one encoder actor.
MAX_BLOCK_ROWS = 16_384
# Read and write tasks hold no CPU: the encoder actors may hold every CPU (2 actors on 2 CPUs), and a task asking
# for one would queue behind them; the tasks are I/O and Arrow work. Their number is bounded instead.
IO_TASKS = 2


def _read_slices(batch: pa.Table, plan: RealInput, data: DataConfig, storage: StorageConfig | None) -> pa.Table:
    """A Ray Data read task: the slices named in `batch`, each length-sorted so encoder batches pad little."""
    return pa.concat_tables([length_sorted(read_slice(plan, plan.slices[i], data, storage), data.text_column)
                             for i in batch.column("slice").to_pylist()])


def _write_part(batch: pa.Table, url: str, storage: StorageConfig | None) -> pa.Table:
    """A Ray Data write task: one Parquet part of embedded rows (in row-id order, named by its first row id);
    returns the part's record, the only thing the driver receives."""
    batch = batch.take(pc.sort_indices(batch, sort_keys=[(ROW_ID, "ascending")]))
    first = batch.column(ROW_ID)[0].as_py()
    name = write_part(batch, resolve(url, storage), f"part-{first:012d}.parquet", storage)
    return pa.table({"part": [name], "rows": [batch.num_rows], "first_row_id": [first]})


def embed_input(plan: RealInput, data: DataConfig, storage: StorageConfig | None, cfg: EmbeddingConfig,
                out_url: str, rows_per_part: int, progress: bool = True):
    """The Ray Data pipeline that embeds an input file to file: read tasks (one per slice) → the encoder actor pool →
    write tasks that store parts of at most `rows_per_part` rows under `out_url`. Rows never pass through the
    driver; the lazy dataset it returns holds one record per part written (part, rows, first_row_id)."""
    import ray
    from ray.data import TaskPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    # A read task's InputError (a file changed since it was checked) reaches the driver as itself, not as a
    # UserCodeException, so the CLI prints its one line.
    ctx.raise_original_map_exception = True
    # Ray Data cuts a task's output into blocks of at most this many bytes; the dataset keeps the value it was
    # built with. About four blocks per encoder actor, each several encoder batches.
    block_rows = max(cfg.batch_size, min(MAX_BLOCK_ROWS, plan.kept_rows // (4 * cfg.num_actors)))
    default_block_bytes = ctx.target_max_block_size
    ctx.target_max_block_size = max(int(plan.bytes_per_row * block_rows), 64 * 1024)
    try:
        ds = ray.data.from_items([{"slice": i} for i in range(len(plan.slices))],
                                 override_num_blocks=len(plan.slices))
        rows = ds.map_batches(_read_slices, batch_size=1, batch_format="pyarrow",
                              fn_kwargs={"plan": plan, "data": data, "storage": storage},
                              compute=TaskPoolStrategy(size=min(IO_TASKS, len(plan.slices))), num_cpus=0)
        writers = min(IO_TASKS, -(-plan.kept_rows // rows_per_part))
        return encoded(rows, cfg, data.text_column).map_batches(
            _write_part, batch_size=rows_per_part, batch_format="pyarrow",
            fn_kwargs={"url": out_url, "storage": storage}, compute=TaskPoolStrategy(size=writers), num_cpus=0)
    finally:
        ctx.target_max_block_size = default_block_bytes
