"""The real rows without holding them: `plan_input` checks an input by streaming its text and label columns one batch
at a time and cuts it into slices (a Parquet row group or a whole JSONL/CSV file) with their row ids and sampled rows;
`read_slice` is what each Ray Data read task runs. `read_real_rows` is the same two steps in one process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synalign_ray import io
from synalign_ray.config import DataConfig, StorageConfig
from synalign_ray.errors import InputError

log = logging.getLogger(__name__)

SCAN_BATCH_ROWS = 65_536  # rows per batch of the checking pass: the driver holds one batch of two columns at a time


@dataclass(frozen=True)
class InputSlice:
    """Rows `first_row_id` … `first_row_id + rows - 1` of the input: Parquet row group `row_group` of `file`, or the
    whole file (row_group None); `keep`: the positions in it the seeded sample keeps (None: every row)."""

    file: str
    row_group: int | None
    first_row_id: int
    rows: int
    keep: np.ndarray | None = None

    @property
    def kept_rows(self) -> int:
        return self.rows if self.keep is None else int(self.keep.shape[0])


@dataclass(frozen=True)
class RealInput:
    """A checked input: where it is, its format, its row count, the unified schema every slice is read into (text
    and label as strings, plus row_id) and the slices that hold the rows the run uses, in row-id order."""

    url: str
    format: str
    rows: int
    schema: pa.Schema
    slices: tuple[InputSlice, ...]
    bytes_per_row: float  # Arrow bytes of a row's text and label, plus its row id (sizes the pipeline's blocks)

    @property
    def kept_rows(self) -> int:
        return sum(s.kept_rows for s in self.slices)


def _batches(fh, fmt: str, columns: list[str]) -> tuple[pa.Schema, list[int] | None, Iterable[pa.RecordBatch]]:
    """(file schema, Parquet row-group sizes or None, the file's batches of `columns` or of every column)."""
    if fmt == "parquet":
        pf = pq.ParquetFile(fh)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        present = [c for c in columns if c in pf.schema_arrow.names]
        return pf.schema_arrow, sizes, pf.iter_batches(SCAN_BATCH_ROWS, columns=present)
    if fmt == "jsonl":
        import pyarrow.json as pj

        reader = pj.open_json(fh)
    else:
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(fh)
    return reader.schema, None, reader


def _text_schema(schema: pa.Schema, data: DataConfig) -> pa.Schema:
    """A file's schema as slices come out of read_slice: text and label normalised to strings, plus row_id."""
    for name in (data.text_column, data.label_column):
        if name is not None:
            schema = schema.set(schema.get_field_index(name), pa.field(name, pa.string()))
    return schema.append(pa.field(io.ROW_ID, pa.int64()))


def plan_input(data: DataConfig, storage: StorageConfig | None = None, path: str | None = None) -> RealInput:
    """Check every file of the input (columns, types, null or blank text and labels; the error names the file and
    row) and cut it into slices; the seeded `data.sample_rows` sample is drawn over the whole input's row ids."""
    path = path or data.path
    if not path:
        raise InputError("no input given: set data.path or pass --input")
    loc = io.resolve(path, storage)
    if not io.exists(loc, storage):
        raise InputError(f"input not found: {loc.url}")
    t0 = time.monotonic()
    fmt = io.detect_format(loc.path, data.format, loc.fs)
    files = io.data_files(loc, fmt)
    columns = [data.text_column] + ([data.label_column] if data.label_column else [])
    slices, schemas, offset, text_bytes = [], [], 0, 0
    column_error: InputError | None = None
    for f in files:
        where = path if len(files) == 1 else io.file_url(loc, f)
        with io.reading(loc, f, fmt, storage), loc.fs.open(f, "rb") as fh:
            schema, sizes, batches = _batches(fh, fmt, columns)
            if io.ROW_ID in schema.names:
                raise InputError(f"{where} already has a '{io.ROW_ID}' column; rename it")
            try:
                io.validate_text_table(schema.empty_table(), data.text_column, data.label_column, where,
                                       allow_empty=True)
            except InputError as err:
                # An input with no rows at all says so first; a file of rows with the wrong columns says that.
                column_error = column_error or err
            n = 0
            for batch in batches:
                if column_error is None:
                    io.validate_text_table(pa.Table.from_batches([batch]), data.text_column, data.label_column,
                                           where, allow_empty=True, first_row=n)
                n += batch.num_rows
                text_bytes += batch.nbytes
            if column_error is not None and n:
                raise column_error
        if column_error is None:
            schemas.append(_text_schema(schema, data))
        for group, size in (enumerate(sizes) if sizes is not None else [(None, n)]):
            if size:
                slices.append(InputSlice(f, group, offset, size))
                offset += size
    if offset == 0:
        raise InputError(f"{path} has no rows")
    if column_error is not None:
        raise column_error
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InputError(f"files under {loc.url} have incompatible schemas: {err}") from None
    if data.sample_rows is not None and data.sample_rows < offset:
        # The same draw as over the whole table: one seeded choice of row ids, split by slice.
        keep = np.sort(np.random.default_rng(data.seed).choice(offset, size=data.sample_rows, replace=False))
        starts = np.searchsorted(keep, [s.first_row_id for s in slices] + [offset])
        slices = [InputSlice(s.file, s.row_group, s.first_row_id, s.rows, keep[a:b] - s.first_row_id)
                  for s, a, b in zip(slices, starts[:-1], starts[1:]) if b > a]
    plan = RealInput(loc.url, fmt, offset, schema, tuple(slices), text_bytes / offset + 8)
    log.info("checked %s: %d rows in %d file(s), %d kept in %d slice(s) (%.1f s)", loc.url, offset, len(files),
             plan.kept_rows, len(plan.slices), time.monotonic() - t0)
    return plan


def read_slice(plan: RealInput, piece: InputSlice, data: DataConfig, storage: StorageConfig | None = None
               ) -> pa.Table:
    """One slice's rows: text and label as strings, `row_id`, only the sampled rows, in `plan.schema`."""
    loc = io.resolve(plan.url, storage)
    with io.reading(loc, piece.file, plan.format, storage), loc.fs.open(piece.file, "rb") as fh:
        if plan.format == "parquet":
            table = pq.ParquetFile(fh).read_row_group(piece.row_group)
        elif plan.format == "jsonl":
            import pyarrow.json as pj

            table = pj.read_json(fh)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(fh)
    where = io.file_url(loc, piece.file)
    table = _sampled_with_ids(io.validate_text_table(_same_rows(table, piece, where), data.text_column,
                                                     data.label_column, where), piece)
    try:
        return _conform(table, plan.schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise InputError(f"{where} does not fit the input's schema {plan.schema}: {err}") from None


def _same_rows(table: pa.Table, piece: InputSlice, where: str) -> pa.Table:
    if table.num_rows != piece.rows:
        raise InputError(f"{where} changed while it was read: {table.num_rows} rows, {piece.rows} when checked")
    return table


def _sampled_with_ids(table: pa.Table, piece: InputSlice) -> pa.Table:
    """A slice's whole table with its `row_id` column, cut to the rows the seeded sample keeps."""
    table = table.append_column(io.ROW_ID, pa.array(np.arange(piece.first_row_id, piece.first_row_id + piece.rows)))
    return table if piece.keep is None else table.take(pa.array(piece.keep))


def scan_labels(plan: RealInput, data: DataConfig, storage: StorageConfig | None = None) -> pa.Table:
    """The kept rows' ids and labels as strings (ids alone without `data.label_column`), in row-id order: what the
    checks that need only labels and counts read before any row is embedded. Parquet slices read only the label
    column; a JSONL or CSV file is parsed whole, one at a time."""
    loc = io.resolve(plan.url, storage)
    label = data.label_column
    pieces = []
    for piece in plan.slices:
        if plan.format == "parquet":
            with io.reading(loc, piece.file, plan.format, storage), loc.fs.open(piece.file, "rb") as fh:
                table = pq.ParquetFile(fh).read_row_group(piece.row_group, columns=[label] if label else [])
            table = _sampled_with_ids(_same_rows(table, piece, io.file_url(loc, piece.file)), piece)
        else:
            table = read_slice(plan, piece, data, storage)
        columns = {io.ROW_ID: table.column(io.ROW_ID)}
        if label:
            columns[label] = table.column(label).cast(pa.string())
        pieces.append(pa.table(columns))
    return pa.concat_tables(pieces)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def iter_real_rows(plan: RealInput, data: DataConfig, storage: StorageConfig | None = None) -> Iterator[pa.Table]:
    """Every slice's rows in row-id order, in this process."""
    for piece in plan.slices:
        yield read_slice(plan, piece, data, storage)


def read_real_rows(data: DataConfig, storage: StorageConfig | None = None, path: str | None = None) -> pa.Table:
    """The checked, sampled real rows with a stable `row_id` (their position in the input), as one table."""
    plan = plan_input(data, storage, path)
    return pa.concat_tables(list(iter_real_rows(plan, data, storage)))
