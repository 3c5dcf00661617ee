"""Storage primitives on a local path or s3:// (pyarrow + s3fs): read rows, write one Parquet part or JSON file
atomically. `run_folder` builds output folders from them. S3 keys never reach messages.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synalign_ray.config import DataConfig, StorageConfig
from synalign_ray.errors import InputError, StorageError

# Metadata starts with `_`, so Parquet readers (pyarrow, Ray Data, Spark, DuckDB) skip it in a data folder.
MANIFEST = "_manifest.json"
ROW_ID = "row_id"
EMBEDDING = "embedding"
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
            ".csv": "csv"}


def is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def redact(text: str, storage: StorageConfig | None = None) -> str:
    """Remove any S3 key material from a message before it is logged or raised."""
    secrets = []
    if storage is not None:
        for field in (storage.access_key_id, storage.secret_access_key):
            if field is not None:
                secrets.append(field.get_secret_value())
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(var):
            secrets.append(os.environ[var])
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return re.sub(r"(?i)(aws_secret_access_key|aws_access_key_id|secret|signature)=[^&\s]+", r"\1=***", text)


@dataclass
class Location:
    """A resolved storage location: an fsspec filesystem plus the path inside it (no scheme)."""

    fs: Any
    path: str
    url: str

    def join(self, *parts: str) -> "Location":
        path = posixpath.join(self.path, *parts)
        url = ("s3://" + path) if is_s3(self.url) else path
        return Location(self.fs, path, url)

    def sibling(self, name: str) -> "Location":
        """The folder `name` beside this one (same parent)."""
        path = posixpath.join(posixpath.dirname(self.path.rstrip("/")), name)
        return Location(self.fs, path, ("s3://" + path) if is_s3(self.url) else path)

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def pyarrow_fs(self):
        """A pyarrow filesystem over the same fsspec one (for pyarrow and Ray Data readers)."""
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(self.fs))


def s3_filesystem(storage: StorageConfig):
    """An s3fs filesystem from explicit config or the standard AWS chain (env, profile, instance role)."""
    import s3fs

    kwargs: dict[str, Any] = {"anon": storage.anon, "skip_instance_cache": True}
    client_kwargs: dict[str, Any] = {}
    if storage.endpoint_url:
        client_kwargs["endpoint_url"] = storage.endpoint_url
    if storage.region:
        client_kwargs["region_name"] = storage.region
    if client_kwargs:
        kwargs["client_kwargs"] = client_kwargs
    if storage.profile:
        kwargs["profile"] = storage.profile
    if storage.access_key_id is not None:
        kwargs["key"] = storage.access_key_id.get_secret_value()
    if storage.secret_access_key is not None:
        kwargs["secret"] = storage.secret_access_key.get_secret_value()
    # Fail fast on a dead endpoint instead of botocore's long default retry loop; s3fs retries transient errors.
    kwargs["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60,
                               "retries": {"max_attempts": storage.max_attempts, "mode": "standard"}}
    return s3fs.S3FileSystem(**kwargs)


def resolve(path: str, storage: StorageConfig | None = None) -> Location:
    """Turn a user path (local or s3://bucket/key) into a Location."""
    storage = storage or StorageConfig()
    if is_s3(path):
        fs = s3_filesystem(storage)
        return Location(fs, str(path)[len("s3://"):].rstrip("/"), str(path).rstrip("/"))
    from fsspec.implementations.local import LocalFileSystem

    local = os.path.abspath(os.path.expanduser(str(path)))
    return Location(LocalFileSystem(), local, local)


def _s3_error(err: BaseException, loc: Location, storage: StorageConfig | None, action: str) -> StorageError:
    text = f"{type(err).__name__}: {err}"
    lowered = text.lower()
    bucket = loc.path.split("/", 1)[0]
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or (
        isinstance(err, FileNotFoundError) and "/" not in loc.path.strip("/")
    ):
        msg = f"cannot {action} {loc.url}: S3 bucket '{bucket}' does not exist"
    elif any(s in lowered for s in ("connect", "endpoint", "refused", "timed out", "name resolution")):
        endpoint = storage.endpoint_url if storage and storage.endpoint_url else "the default AWS endpoint"
        msg = f"cannot {action} {loc.url}: S3 endpoint {endpoint} is unreachable ({type(err).__name__})"
    elif "accessdenied" in lowered or "forbidden" in lowered or "invalidaccesskeyid" in lowered or \
            "signaturedoesnotmatch" in lowered or isinstance(err, PermissionError):
        msg = f"cannot {action} {loc.url}: access denied (check the S3 credentials)"
    else:
        msg = f"cannot {action} {loc.url}: {text}"
    return StorageError(redact(msg, storage))


def exists(loc: Location, storage: StorageConfig | None = None) -> bool:
    """Whether the path exists; on S3 a missing bucket or dead endpoint is a StorageError, not False."""
    if not is_s3(loc.url):
        return bool(loc.fs.exists(loc.path))
    bucket = loc.path.split("/", 1)[0]
    try:
        loc.fs.info(loc.path)
        return True
    except FileNotFoundError:
        pass
    except Exception as err:  # botocore/aiohttp raise many types; classify them into one message
        raise _s3_error(err, loc, storage, "read") from None
    try:
        loc.fs.ls(bucket)
    except FileNotFoundError:
        raise StorageError(f"cannot read {loc.url}: S3 bucket '{bucket}' does not exist") from None
    except Exception as err:
        raise _s3_error(err, loc, storage, "read") from None
    return False


def check_writable(loc: Location, storage: StorageConfig | None = None) -> None:
    """Fail before any work when the output location cannot be written (bucket missing, endpoint down...)."""
    if is_s3(loc.url):
        bucket = loc.path.split("/", 1)[0]
        try:
            # ls raises on a dead endpoint, where exists() would quietly answer False.
            loc.fs.ls(bucket)
            probe = loc.join(".synalign_write_probe")
            loc.fs.pipe(probe.path, b"ok")
            loc.fs.rm(probe.path)
        except StorageError:
            raise
        except Exception as err:  # botocore/aiohttp raise many types; classify them into one message
            raise _s3_error(err, loc, storage, "write to") from None
        return
    target = Path(loc.path)
    existing = target
    while not existing.exists():
        existing = existing.parent
    if existing != target and not existing.is_dir():
        raise StorageError(f"cannot write to {loc.url}: {existing} is a file, not a folder")
    if target.exists() and not target.is_dir():
        raise StorageError(f"cannot write to {loc.url}: it is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise StorageError(f"cannot write to {loc.url}: permission denied")


# ---------------------------------------------------------------------------------------------- reading


def _visible(f: str, root: str) -> bool:
    """A data file, as Parquet readers see it: no path part below `root` starts with `.` or `_` (metadata)."""
    rel = posixpath.relpath(f, root) if f != root else posixpath.basename(f)
    return not any(part.startswith((".", "_")) for part in rel.split("/"))


def _detect_format(path: str, fmt: str, fs: Any) -> str:
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


def _data_files(loc: Location, fmt: str) -> list[str]:
    if not loc.fs.isdir(loc.path):
        return [loc.path]
    files = sorted(f for f in loc.fs.find(loc.path)
                   if _visible(f, loc.path)
                   and _FORMATS.get(posixpath.splitext(f)[1].lower()) == fmt)
    if not files:
        raise InputError(f"folder {loc.url} holds no {fmt} files")
    return files


def read_table(path: str, fmt: str = "auto", storage: StorageConfig | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet, JSONL or CSV file or folder (local or s3://) into one Arrow table, in file order."""
    loc = resolve(path, storage)
    if not exists(loc, storage):
        raise InputError(f"input not found: {loc.url}")
    fmt = _detect_format(loc.path, fmt, loc.fs)
    tables = []
    for f in _data_files(loc, fmt):
        try:
            with loc.fs.open(f, "rb") as fh:
                if fmt == "parquet":
                    t = pq.read_table(fh, columns=columns)
                elif fmt == "jsonl":
                    import pyarrow.json as pj

                    t = pj.read_json(fh)
                else:
                    import pyarrow.csv as pcsv

                    t = pcsv.read_csv(fh)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError, OSError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"cannot read {('s3://' + f) if is_s3(loc.url) else f} as {fmt}: "
                             f"{redact(first, storage)}") from None
        tables.append(t)
    try:
        return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as err:
        raise InputError(f"files under {loc.url} have incompatible schemas: {err}") from None


def _first_index(mask: pa.Array) -> int:
    return int(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))[0])


def validate_text_table(table: pa.Table, text_column: str, label_column: str | None, where: str) -> pa.Table:
    """Check text/label columns and normalise them to strings; raise InputError naming the first problem."""
    if table.num_rows == 0:
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
                         f"(first at row {_first_index(pc.is_null(text))})")
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    n_blank = pc.sum(blank).as_py() or 0
    if n_blank:
        raise InputError(f"text column '{text_column}' in {where} has {n_blank} empty or blank strings "
                         f"(first at row {_first_index(blank)})")
    if text.type != pa.string():
        table = table.set_column(cols.index(text_column), text_column, text.cast(pa.string()))
    if label_column is not None:
        label = table.column(label_column)
        if label.null_count:
            raise InputError(f"label column '{label_column}' in {where} has {label.null_count} null values "
                             f"(first at row {_first_index(pc.is_null(label))})")
        if not (pa.types.is_string(label.type) or pa.types.is_integer(label.type) or
                pa.types.is_boolean(label.type) or pa.types.is_large_string(label.type) or
                pa.types.is_dictionary(label.type)):
            raise InputError(f"label column '{label_column}' in {where} must hold strings or integers, "
                             f"found {label.type}")
        as_str = label.cast(pa.string())
        blank_label = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(as_str)), 0)
        if pc.sum(blank_label).as_py():
            raise InputError(f"label column '{label_column}' in {where} has empty labels "
                             f"(first at row {_first_index(blank_label)})")
        table = table.set_column(table.column_names.index(label_column), label_column, as_str)
    return table


def read_real_rows(data: DataConfig, storage: StorageConfig | None = None, path: str | None = None) -> pa.Table:
    """Read, validate and (optionally) subsample the real rows; adds a stable `row_id` from input order."""
    path = path or data.path
    if not path:
        raise InputError("no input given: set data.path or pass --input")
    table = read_table(path, data.format, storage)
    table = validate_text_table(table, data.text_column, data.label_column, path)
    ids = pa.array(np.arange(table.num_rows, dtype=np.int64))
    if ROW_ID in table.column_names:
        raise InputError(f"{path} already has a '{ROW_ID}' column; rename it")
    table = table.append_column(ROW_ID, ids)
    if data.sample_rows is not None and data.sample_rows < table.num_rows:
        rng = np.random.default_rng(data.seed)
        keep = np.sort(rng.choice(table.num_rows, size=data.sample_rows, replace=False))
        table = table.take(pa.array(keep))
    return table


# ---------------------------------------------------------------------------------------------- writing


def embeddings_to_arrow(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) float array -> fixed_size_list<float32>[d] column."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {matrix.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def embeddings_from_arrow(column: pa.ChunkedArray | pa.Array, where: str = "input") -> np.ndarray:
    """fixed_size_list / list<float> column -> (n, d) float32 matrix; rejects ragged rows and NaN."""
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
        raise InputError(f"embedding column in {where} has NaN or infinite values (first at row {bad})")
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
    body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    body = redact(body.decode(), storage).encode()
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


def read_parts(loc: Location, manifest: dict[str, Any] | None = None) -> pa.Table:
    """Read the parts a manifest lists (in order) back into one table."""
    manifest = manifest if manifest is not None else read_manifest(loc)
    if manifest is None:
        raise InputError(f"{loc.url} has no {MANIFEST}: it is not a completed synalign output")
    tables = []
    for name in manifest["parts"]:
        with loc.fs.open(loc.join(name).path, "rb") as fh:
            tables.append(pq.read_table(fh))
    return pa.concat_tables(tables) if tables else pa.table({})
