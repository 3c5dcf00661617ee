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


def _schema_of(path: str, cfg: SynAlignConfig) -> pa.Schema | None:
    """The schema of an input's first file (a synalign folder's first part), or None when it cannot be read (the
    in-memory reader then names the problem)."""
    import pyarrow.parquet as pq

    from synalign_ray.errors import InputError
    from synalign_ray.real_input import _batches

    try:
        loc = io.resolve(path, cfg.storage)
        manifest = output_manifest(path, cfg.storage)
        if manifest is not None:
            if not manifest.get("parts"):
                return None
            with loc.fs.open(loc.join(manifest["parts"][0]).path, "rb") as fh:
                return pq.read_schema(fh)
        fmt = io.detect_format(loc.path, cfg.data.format, loc.fs)
        files = io.data_files(loc, fmt)
        if not files:
            return None
        with loc.fs.open(files[0], "rb") as fh:
            return _batches(fh, fmt, [])[0]
    except (InputError, OSError):
        return None


def _is_raw(path: str, cfg: SynAlignConfig) -> bool:
    """Rows without embedding and row id columns: what `_embed_raw_input` takes."""
    schema = _schema_of(path, cfg)
    return schema is not None and io.EMBEDDING not in schema.names and io.ROW_ID not in schema.names


def _raw_input_plan(path: str, cfg: SynAlignConfig, side: str, out: io.Location):
    """A raw side checked (real_input.plan_input: columns, types, empty input) before anything runs: its config,
    whose output is the output's `_embedded_<side>` folder, and its plan."""
    from synalign_ray.real_input import plan_input

    label = cfg.data.label_column if cfg.data.label_column in _schema_of(path, cfg).names else None
    data = cfg.data.model_copy(update={"path": path, "label_column": label, "sample_rows": None,
                                       "format": "parquet" if output_manifest(path, cfg.storage) else cfg.data.format})
    side_cfg = cfg.model_copy(update={"data": data, "output": cfg.output.model_copy(
        update={"path": out.join(f"_embedded_{side}").url, "overwrite": False})})
    return side_cfg, plan_input(data, cfg.storage)


def _embed_raw_input(side_cfg: SynAlignConfig, plan):
    """Raw rows embedded file to file by the Ray Data pipeline into their `_embedded_<side>` folder (reused when
    complete with the same settings), so that they never reach the driver; FolderRows over it."""
    from synalign_ray.alignment.rows import FolderRows

    manifest = embed.embed_stage(side_cfg, plan)
    return FolderRows(side_cfg.output.path, tuple(manifest["parts"]), side_cfg.storage)


def align_stage(cfg: SynAlignConfig, real_path: str, synthetic_path: str) -> dict[str, Any]:
    """`synalign align`: weights, weighted resample and metrics for synthetic rows against real rows. Embedded
    synalign folders stay where they are (each shard reads its own rows); raw rows are embedded file to file into
    the output's `_embedded_real` / `_embedded_synthetic` folders first; files that carry their own embeddings are
    read here."""
    from synalign_ray.alignment.align import align, align_folders, scan_folder
    from synalign_ray.alignment.plan import check_inputs, check_tables
    from synalign_ray.real_input import scan_labels

    settings = settings_for(cfg, ("data", "embedding", "alignment"), real=real_path, synthetic=synthetic_path)
    loc = io.resolve(cfg.output.path, cfg.storage)
    folders = [embedded_folder(real_path, cfg, "real"), embedded_folder(synthetic_path, cfg, "synthetic")]
    if all(f is not None or _is_raw(p, cfg) for f, p in zip(folders, (real_path, synthetic_path))):
        # Both raw sides are checked before either is embedded.
        plans = {i: _raw_input_plan(path, cfg, side, loc) for i, (side, path)
                 in enumerate((("real", real_path), ("synthetic", synthetic_path))) if folders[i] is None}
        # So are the plan's label checks (labels unknown to the real set, a held-out split that empties a label),
        # on the sides' ids and labels alone.
        check_tables(cfg, *[scan_labels(plans[i][1], plans[i][0].data, cfg.storage) if i in plans
                            else scan_folder(cfg, folders[i], side) for i, side in enumerate(("real", "synthetic"))])
        with RunFolder(loc, cfg.storage).open(settings, cfg.output.overwrite) as folder:
            if folder.reused is not None:
                return folder.reused
            with runtime.ray_session(cfg.resources):
                for i, (side_cfg, plan) in plans.items():
                    folders[i] = _embed_raw_input(side_cfg, plan)
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
