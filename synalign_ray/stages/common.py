"""What several stages share: the package version for manifests, reason summaries, the run's column names, and
writing a whole table as one output folder."""

from __future__ import annotations

import logging
from typing import Any, Iterable

import pyarrow as pa

from synalign_ray import io
from synalign_ray.config import SynAlignConfig
from synalign_ray.run_folder import RunFolder, settings_for

log = logging.getLogger(__name__)

DROP_REASON = "drop_reason"
# The row's id in generated_embeddings, carried into the aligned rows so evaluate and the report join on it.
GENERATED_ID = "generated_id"


def version() -> str:
    from synalign_ray import __version__

    return __version__


def top_reasons(counts: dict[str, int], top: int = 3) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top])


def stamp(manifest: dict[str, Any], folder: RunFolder, cfg: SynAlignConfig) -> dict[str, Any]:
    """The fields every manifest carries: where it is, the redacted config, the package version."""
    return {**manifest, "output": folder.url, "config": cfg.redacted(), "synalign_version": version()}


def write_table(table: pa.Table, loc: io.Location, cfg: SynAlignConfig, manifest: dict[str, Any],
                sections: Iterable[str] = ("data", "embedding"), **inputs: Any) -> dict[str, Any]:
    """Write `table` as the whole content of the folder `loc` (parts of output.rows_per_part rows, manifest last),
    under the one overwrite rule; returns the manifest (the folder's own when it is reused)."""
    with RunFolder(loc, cfg.storage).open(settings_for(cfg, sections, **inputs), cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused
        parts = folder.write_table(table, cfg.output.rows_per_part)
        log.info("wrote %d rows in %d part(s) to %s", table.num_rows, len(parts), loc.url)
        return folder.finish(stamp({**manifest, "parts": parts, "rows": table.num_rows,
                                    "columns": table.column_names}, folder, cfg))
