"""Where an alignment shard's rows come from: a slice of a table the caller holds (TableSlice), or a row-id range of a
completed folder's parts that the shard reads itself (FolderRows.slice). The driver scans only ids and labels, and
takes the few rows it scores (FolderRows.take)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synalign_ray import io
from synalign_ray.config import StorageConfig
from synalign_ray.errors import InputError


@dataclass(frozen=True)
class TableSlice:
    """Rows the caller holds: a table (None: embeddings only, as benchmarks fit) and its embedding matrix."""

    table: pa.Table | None
    emb: np.ndarray

    def load(self, first_row: int = 0) -> tuple[pa.Table | None, np.ndarray]:
        return self.table, np.asarray(self.emb, dtype=np.float32)


@dataclass(frozen=True)
class FolderRows:
    """The rows of a completed synalign folder (its manifest's parts), in row-id order; with `kept_column` only the
    rows where it is null (the kept generated rows). `rename` maps stored column names to the names the alignment
    sees; `drop` lists stored columns it never sees."""

    url: str
    parts: tuple[str, ...]
    storage: StorageConfig | None = None
    kept_column: str | None = None
    rename: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()

    @classmethod
    def of(cls, url: str, storage: StorageConfig | None, what: str, **options) -> "FolderRows":
        manifest = io.read_manifest(io.resolve(url, storage))
        if manifest is None:
            raise InputError(f"{what} {url} has no {io.MANIFEST}: it is not a completed synalign output")
        return cls(url, tuple(manifest["parts"]), storage, **options)

    def read_part(self, part: str, columns: list[str] | None = None) -> pa.Table:
        """One part (its kept rows), stored names; a part that cannot be read is one InputError naming it."""
        loc = io.resolve(self.url, self.storage)
        path = loc.join(part).path
        with io.reading(loc, path, "parquet", self.storage), loc.fs.open(path, "rb") as fh:
            table = pq.read_table(fh, columns=columns)
        if self.kept_column is not None:
            table = table.filter(pc.is_null(table.column(self.kept_column)))
        return table

    def may_hold(self, part: str, first_id: int, last_id: int) -> bool:
        """False when the part's footer statistics put all its row ids outside [first_id, last_id]: a shard then skips
        the part instead of reading it (parts hold contiguous id ranges, so a shard reads about its own share)."""
        loc = io.resolve(self.url, self.storage)
        path = loc.join(part).path
        with io.reading(loc, path, "parquet", self.storage), loc.fs.open(path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        leaves = [meta.schema.column(i).path for i in range(meta.num_columns)]
        if io.ROW_ID not in leaves:
            return True
        column = leaves.index(io.ROW_ID)
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(column).statistics
            if stats is None or not stats.has_min_max or not isinstance(stats.min, int):
                return True
            if stats.min <= last_id and stats.max >= first_id:
                return True
        return False

    def schema(self) -> pa.Schema:
        """The stored schema, from the first part's footer."""
        loc = io.resolve(self.url, self.storage)
        with loc.fs.open(loc.join(self.parts[0]).path, "rb") as fh:
            return pq.ParquetFile(fh).schema_arrow

    def scan(self, columns: list[str]) -> pa.Table:
        """The driver's pass: `columns` (stored names, row_id added) of the rows, in row-id order, one part at a time;
        returned under the alignment's names."""
        wanted = [io.ROW_ID, *[c for c in columns if c != io.ROW_ID]]
        stored = self.schema().names
        if missing := [c for c in wanted if c not in stored]:
            raise InputError(f"{self.url} lacks column(s) {missing}")
        read = wanted + ([self.kept_column] if self.kept_column and self.kept_column not in wanted else [])
        table = pa.concat_tables([self.read_part(p, read).select(wanted) for p in self.parts])
        table = table.take(pc.sort_indices(table, sort_keys=[(io.ROW_ID, "ascending")]))
        return table.rename_columns([self.rename.get(c, c) if c != io.ROW_ID else c for c in wanted])

    def take(self, row_ids: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """The rows with these ids (stored names, row-id order), read one part at a time: what a caller holds is
        the rows it asked for, never the folder."""
        wanted = pa.array(np.asarray(row_ids, dtype=np.int64))
        keep = None if columns is None else [io.ROW_ID, *[c for c in columns if c != io.ROW_ID]]
        read = None if keep is None else keep + ([self.kept_column] if self.kept_column else [])
        pieces = []
        for part in self.parts:
            table = self.read_part(part, read)
            pieces.append(table.filter(pc.is_in(table.column(io.ROW_ID), value_set=wanted)))
        table = pa.concat_tables(pieces)
        table = table.select(keep) if keep is not None else table
        return table.take(pc.sort_indices(table, sort_keys=[(io.ROW_ID, "ascending")]))

    def slice(self, first_id: int | None, last_id: int | None) -> "FolderSlice":
        """Rows with first_id <= row_id <= last_id (None, None: no rows)."""
        return FolderSlice(self, first_id, last_id)


@dataclass(frozen=True)
class FolderSlice:
    """What one shard reads itself: a row-id range of a FolderRows (each part's row_id column, then its rows there)."""

    rows: FolderRows
    first_id: int | None
    last_id: int | None

    def load(self, first_row: int = 0) -> tuple[pa.Table, np.ndarray]:
        """The rows and embeddings; `first_row`: their position in the whole set, for error messages."""
        src = self.rows
        pieces = []
        if self.first_id is not None:
            for part in src.parts:
                if not src.may_hold(part, self.first_id, self.last_id):
                    continue
                table = src.read_part(part)
                ids = table.column(io.ROW_ID)
                inside = pc.and_(pc.greater_equal(ids, self.first_id), pc.less_equal(ids, self.last_id))
                if pc.any(inside).as_py():
                    pieces.append(table.filter(inside))
        table = pa.concat_tables(pieces) if pieces else src.schema().empty_table()
        ids = table.column(io.ROW_ID).to_numpy()
        if (np.diff(ids) < 0).any():  # parts written out of id order: sort (a copy of the rows, so only then)
            table = table.take(pc.sort_indices(table, sort_keys=[(io.ROW_ID, "ascending")]))
        if io.EMBEDDING not in table.column_names:
            raise InputError(f"{src.url} has no '{io.EMBEDDING}' column")
        emb = io.embeddings_from_arrow(table.column(io.EMBEDDING), src.url, first_row) if table.num_rows else \
            np.zeros((0, table.schema.field(io.EMBEDDING).type.list_size), np.float32)
        table = table.drop_columns([c for c in (io.EMBEDDING, src.kept_column, *src.drop)
                                    if c is not None and c in table.column_names])
        return table.rename_columns([src.rename.get(c, c) for c in table.column_names]), emb


def id_ranges(sorted_ids: np.ndarray, ranges: list[tuple[int, int]]) -> list[tuple[int | None, int | None]]:
    """Positional [lo, hi) ranges of rows in row-id order -> the (first, last) row ids each covers."""
    return [(int(sorted_ids[lo]), int(sorted_ids[hi - 1])) if hi > lo else (None, None) for lo, hi in ranges]
