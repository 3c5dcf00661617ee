"""`synalign align`: weights and a weighted resample of synthetic rows toward real rows (raw or embedded), and the
reader of labelled/unlabelled rows the align, score and evaluate steps share."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from synalign_ray import io, runtime
from synalign_ray.config import SynAlignConfig
from synalign_ray.run_folder import RunFolder, output_manifest, read_output, settings_for
from synalign_ray.stages import embed


def read_rows(path: str, cfg: SynAlignConfig, what: str, need_labels: bool = False) -> pa.Table:
    """Rows from a completed synalign output folder (its manifest's parts) or a Parquet/JSONL/CSV file/folder,
    validated; adds a positional `row_id` when the input has none."""
    table, _ = read_output(path, cfg.storage, cfg.data.format, what=f"{what} input")
    label = cfg.data.label_column if (need_labels or (cfg.data.label_column in table.column_names)) else None
    table = io.validate_text_table(table, cfg.data.text_column, label,
                                   f"{what} input {io.resolve(path, cfg.storage).url}")
    if io.ROW_ID not in table.column_names:
        table = table.append_column(io.ROW_ID, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return table


def ensure_embedded(table: pa.Table, cfg: SynAlignConfig) -> tuple[pa.Table, np.ndarray]:
    """The rows with their embedding matrix: the input's own `embedding` column, or the encoder pool's."""
    if io.EMBEDDING not in table.column_names:
        embed.check_embedding_model(cfg)
        table = embed.embed_rows(table, cfg, cfg.data.text_column)
    return table, io.embeddings_from_arrow(table.column(io.EMBEDDING))


def embedded_folder(path: str, cfg: SynAlignConfig, what: str):
    """FolderRows for a completed synalign folder whose rows carry row ids and embeddings (an `embed` output, a
    run's `embeddings` or `generated_embeddings`), which alignment shards read themselves; None for anything else."""
    from synalign_ray.alignment.rows import FolderRows

    manifest = output_manifest(path, cfg.storage, what=f"{what} input")
    if manifest is None or not manifest.get("parts"):
        return None
    rows = FolderRows(io.resolve(path, cfg.storage).url, tuple(manifest["parts"]), cfg.storage)
    return rows if {io.ROW_ID, io.EMBEDDING} <= set(rows.schema().names) else None


def align_stage(cfg: SynAlignConfig, real_path: str, synthetic_path: str) -> dict[str, Any]:
    """`synalign align`: weights, weighted resample and metrics for synthetic rows against real rows. Two embedded
    synalign folders stay where they are (each shard reads its own rows); other inputs are read here."""
    from synalign_ray.alignment.align import align, align_folders
    from synalign_ray.alignment.plan import check_inputs

    settings = settings_for(cfg, ("data", "embedding", "alignment"), real=real_path, synthetic=synthetic_path)
    loc = io.resolve(cfg.output.path, cfg.storage)
    folders = embedded_folder(real_path, cfg, "real"), embedded_folder(synthetic_path, cfg, "synthetic")
    if None not in folders:
        with RunFolder(loc, cfg.storage).open(settings, cfg.output.overwrite) as folder:
            if folder.reused is not None:
                return folder.reused
            with runtime.ray_session(cfg.resources):
                return align_folders(cfg, *folders, folder)
    real = read_rows(real_path, cfg, "real")
    synthetic = read_rows(synthetic_path, cfg, "synthetic")
    if io.EMBEDDING in real.column_names and io.EMBEDDING in synthetic.column_names:
        # Both sides already embedded: every input check can run before Ray starts.
        check_inputs(cfg, real, io.embeddings_from_arrow(real.column(io.EMBEDDING), real_path), synthetic,
                     io.embeddings_from_arrow(synthetic.column(io.EMBEDDING), synthetic_path))
    with RunFolder(loc, cfg.storage).open(settings, cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused
        with runtime.ray_session(cfg.resources):
            real, real_emb = ensure_embedded(real, cfg)
            synthetic, syn_emb = ensure_embedded(synthetic, cfg)
            return align(cfg, real.drop_columns([io.EMBEDDING]), real_emb, synthetic.drop_columns([io.EMBEDDING]),
                         syn_emb, folder)
