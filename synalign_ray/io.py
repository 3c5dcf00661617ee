"""Rows in and out, on a local path or s3:// (storage.py resolves them): read and validate Parquet, JSONL or CSV,
convert embedding columns, write one Parquet part or JSON file atomically. `run_folder` builds output folders on them.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synalign_ray.config import StorageConfig
from synalign_ray.errors import InputError, StorageError
# Part of io's interface (callers reach them as io.resolve, io.Location, …); they live in storage.py.
from synalign_ray.storage import Location, _s3_error, check_writable, exists, is_s3, redact, resolve  # noqa: F401

# Metadata starts with `_`, so Parquet readers (pyarrow, Ray Data, Spark, DuckDB) skip it in a data folder.
MANIFEST = "_manifest.json"
ROW_ID = "row_id"
EMBEDDING = "embedding"
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
            ".csv": "csv"}


# ---------------------------------------------------------------------------------------------- reading


def _visible(f: str, root: str) -> bool:
    """A data file, as Parquet readers see it: no path part below `root` starts with `.` or `_` (metadata)."""
    rel = posixpath.relpath(f, root) if f != root else posixpath.basename(f)
    return not any(part.startswith((".", "_")) for part in rel.split("/"))


def detect_format(path: str, fmt: str, fs: Any) -> str:
    if fmt != "auto":
        return fmt
    probe = path
    if fs.isdir(path):
        files = sorted(f for f in fs.find(path) if _visible(f, path))
        exts = {posixpath.splitext(f)[1].lower() for f in files}
        known = [e for e in exts if e in _FORMATS]
        if len(known) != 1:
            raise InputError(f"cannot tell the format of folder {path}: found {sorted(exts) or 'no files'}; "
                             "set data.format to parquet, jsonl or csv")
        return _FORMATS[known[0]]
    ext = posixpath.splitext(probe)[1].lower()
    if ext not in _FORMATS:
        raise InputError(f"unsupported input format '{ext or '(none)'}' for {path}: use .parquet, .jsonl or .csv, "
                         "or set data.format")
    return _FORMATS[ext]


def data_files(loc: Location, fmt: str) -> list[str]:
    if not loc.fs.isdir(loc.path):
        return [loc.path]
    files = sorted(f for f in loc.fs.find(loc.path)
                   if _visible(f, loc.path)
                   and _FORMATS.get(posixpath.splitext(f)[1].lower()) == fmt)
    if not files:
        raise InputError(f"folder {loc.url} holds no {fmt} files")
    return files


def file_url(loc: Location, f: str) -> str:
    """The URL of a file found under `loc` (fsspec paths carry no scheme)."""
    return ("s3://" + f) if is_s3(loc.url) else f


@contextlib.contextmanager
def reading(loc: Location, f: str, fmt: str, storage: StorageConfig | None = None) -> Iterator[None]:
    """Turn a failure to parse file `f` of `loc` into one InputError line naming the file (secrets redacted)."""
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError, OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"cannot read {file_url(loc, f)} as {fmt}: {redact(first, storage)}") from None


def read_table(path: str, fmt: str = "auto", storage: StorageConfig | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet, JSONL or CSV file or folder (local or s3://) into one Arrow table, in file order."""
    loc = resolve(path, storage)
    if not exists(loc, storage):
        raise InputError(f"input not found: {loc.url}")
    fmt = detect_format(loc.path, fmt, loc.fs)
    tables = []
    for f in data_files(loc, fmt):
        with reading(loc, f, fmt, storage), loc.fs.open(f, "rb") as fh:
            if fmt == "parquet":
                t = pq.read_table(fh, columns=columns)
            elif fmt == "jsonl":
                import pyarrow.json as pj

                t = pj.read_json(fh)
            else:
                import pyarrow.csv as pcsv

                t = pcsv.read_csv(fh)
        tables.append(t)
    try:
        return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as err:
        raise InputError(f"files under {loc.url} have incompatible schemas: {err}") from None


def _first_index(mask: pa.Array) -> int:
    return int(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))[0])


def validate_text_table(table: pa.Table, text_column: str, label_column: str | None, where: str,
                        allow_empty: bool = False, first_row: int = 0) -> pa.Table:
    """Check text/label columns and normalise them to strings; raise InputError naming the first problem (an empty
    table too, unless `allow_empty`: one file or batch of a larger input). `first_row`: the row number, in `where`,
    of the table's first row (a batch of a file)."""
    if table.num_rows == 0 and not allow_empty:
        raise InputError(f"{where} has no rows")
    cols = table.column_names
    if text_column not in cols:
        raise InputError(f"text column '{text_column}' not found in {where}; columns are {cols} "
                         "(set data.text_column)")
    if label_column is not None and label_column not in cols:
        raise InputError(f"label column '{label_column}' not found in {where}; columns are {cols} "
                         "(set data.label_column=null for unlabelled data)")
    text = table.column(text_column)
    if pa.types.is_binary(text.type) or pa.types.is_large_binary(text.type):
        raise InputError(f"text column '{text_column}' in {where} is not valid UTF-8 text; re-encode the file "
                         "as UTF-8")
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        raise InputError(f"text column '{text_column}' in {where} must hold strings, found {text.type}")
    nulls = text.null_count
    if nulls:
        raise InputError(f"text column '{text_column}' in {where} has {nulls} null values "
                         f"(first at row {first_row + _first_index(pc.is_null(text))})")
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    n_blank = pc.sum(blank).as_py() or 0
    if n_blank:
        raise InputError(f"text column '{text_column}' in {where} has {n_blank} empty or blank strings "
                         f"(first at row {first_row + _first_index(blank)})")
    if text.type != pa.string():
        table = table.set_column(cols.index(text_column), text_column, text.cast(pa.string()))
    if label_column is not None:
        label = table.column(label_column)
        if label.null_count:
            raise InputError(f"label column '{label_column}' in {where} has {label.null_count} null values "
                             f"(first at row {first_row + _first_index(pc.is_null(label))})")
        if not (pa.types.is_string(label.type) or pa.types.is_integer(label.type) or
                pa.types.is_boolean(label.type) or pa.types.is_large_string(label.type) or
                pa.types.is_dictionary(label.type)):
            raise InputError(f"label column '{label_column}' in {where} must hold strings or integers, "
                             f"found {label.type}")
        as_str = label.cast(pa.string())
        blank_label = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(as_str)), 0)
        if pc.sum(blank_label).as_py():
            raise InputError(f"label column '{label_column}' in {where} has empty labels "
                             f"(first at row {first_row + _first_index(blank_label)})")
        table = table.set_column(table.column_names.index(label_column), label_column, as_str)
    return table


# ---------------------------------------------------------------------------------------------- writing


def embeddings_to_arrow(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) float array -> fixed_size_list<float32>[d] column."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {matrix.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def embeddings_from_arrow(column: pa.ChunkedArray | pa.Array, where: str = "input", first_row: int = 0) -> np.ndarray:
    """fixed_size_list / list<float> column -> (n, d) float32 matrix; rejects ragged rows and NaN (errors count rows
    from `first_row`, the column's position in a larger set)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        d = column.type.list_size
        values = column.flatten().to_numpy(zero_copy_only=False)
        matrix = values.reshape(-1, d).astype(np.float32, copy=False)
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths.min() != lengths.max()):
            raise InputError(f"embedding column in {where} has rows of different lengths "
                             f"({lengths.min()}..{lengths.max()})")
        d = int(lengths[0]) if len(lengths) else 0
        matrix = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32, copy=False)
    else:
        raise InputError(f"embedding column in {where} must be a list of floats, found {column.type}")
    if column.null_count:
        raise InputError(f"embedding column in {where} has {column.null_count} null rows")
    if not np.isfinite(matrix).all():
        bad = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise InputError(f"embedding column in {where} has NaN or infinite values (first at row {first_row + bad})")
    return matrix


def write_part(table: pa.Table, loc: Location, name: str, storage: StorageConfig | None = None) -> str:
    """Write one Parquet part; local writes go through a temp file and an atomic rename."""
    target = loc.join(name)
    try:
        if is_s3(loc.url):
            # An S3 PUT is atomic: readers see the whole object or none of it.
            with loc.fs.open(target.path, "wb") as fh:
                pq.write_table(table, fh)
        else:
            os.makedirs(loc.path, exist_ok=True)
            tmp = target.path + ".tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, target.path)
    except StorageError:
        raise
    except Exception as err:
        raise _s3_error(err, loc, storage, "write") from None
    return name


def write_manifest(loc: Location, manifest: dict[str, Any], storage: StorageConfig | None = None,
                   name: str = MANIFEST) -> None:
    """Write the manifest last, atomically, marking the folder complete."""
    body = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    write_bytes(loc, name, redact(body, storage).encode(), storage)


def write_bytes(loc: Location, name: str, body: bytes, storage: StorageConfig | None = None) -> None:
    """One small file written atomically: readers see the old file, the whole new one, or none."""
    target = loc.join(name)
    try:
        if is_s3(loc.url):
            loc.fs.pipe(target.path, body)
        else:
            os.makedirs(loc.path, exist_ok=True)
            tmp = target.path + ".tmp"
            with open(tmp, "wb") as fh:
                fh.write(body)
            os.replace(tmp, target.path)
    except Exception as err:
        raise _s3_error(err, loc, storage, "write") from None


def read_manifest(loc: Location, name: str = MANIFEST) -> dict[str, Any] | None:
    """The manifest of a completed folder, or None when the folder is absent or incomplete."""
    target = loc.join(name)
    if not loc.fs.exists(target.path):
        return None
    with loc.fs.open(target.path, "rb") as fh:
        return json.loads(fh.read())


def read_parts(loc: Location, manifest: dict[str, Any] | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read the parts a manifest lists (in order) back into one table; `columns`: only those of them a part has
    (the small columns a driver scans, without the texts and embeddings)."""
    manifest = manifest if manifest is not None else read_manifest(loc)
    if manifest is None:
        raise InputError(f"{loc.url} has no {MANIFEST}: it is not a completed synalign output")
    tables = []
    for name in manifest["parts"]:
        with loc.fs.open(loc.join(name).path, "rb") as fh:
            if columns is None:
                tables.append(pq.read_table(fh))
            else:
                present = set(pq.ParquetFile(fh).schema_arrow.names)
                fh.seek(0)
                tables.append(pq.read_table(fh, columns=[c for c in columns if c in present]))
    return pa.concat_tables(tables) if tables else pa.table({})
