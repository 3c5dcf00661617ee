"""One output folder of a synalign command: reading a completed one, writing parts and the manifest last, the
resume fingerprint and the overwrite rule, all under the folder's lease (lease.py) while it writes.

Layout: data files (`part-*.parquet`, …) only; metadata starts with `_` (`_manifest.json`, `_settings.json`,
`_lease.json`, `_ledger/`), so pyarrow, Ray Data, DuckDB and Spark open the folder as a Parquet dataset.
"""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from synalign_ray import io
from synalign_ray.config import StorageConfig, SynAlignConfig
from synalign_ray.errors import InputError
from synalign_ray.lease import LEASE, FolderLease, LeaseError

log = logging.getLogger(__name__)

MANIFEST = io.MANIFEST
SETTINGS = "_settings.json"
# Written by releases before the `_` layout; such a folder is refused rather than mixed into.
LEGACY_MANIFEST = "manifest.json"


def settings_for(cfg: SynAlignConfig, sections: Iterable[str], **inputs: Any) -> dict[str, Any]:
    """The resume fingerprint of one command: its inputs plus the results-relevant settings of the config sections
    it reads (config.NOT_RESULTS says which keys are not)."""
    dump = cfg.results_dump()
    return {"inputs": {k: v for k, v in inputs.items()}, **{s: dump[s] for s in sections}}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between two fingerprints (present in either)."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


def write_parts(table: pa.Table, loc: io.Location, storage: StorageConfig | None, stem: str,
                rows_per_part: int, allow_empty: bool = True) -> list[str]:
    """Write `table` as Parquet parts `{stem}-00000.parquet`, … of at most `rows_per_part` rows; returns the names
    in order. An empty table is one empty part (its schema on disk), or none without `allow_empty`."""
    names = []
    for k, start in enumerate(range(0, max(table.num_rows, 1 if allow_empty else 0), rows_per_part)):
        names.append(io.write_part(table.slice(start, rows_per_part), loc, f"{stem}-{k:05d}.parquet", storage))
    return names


def output_manifest(path: str, storage: StorageConfig | None, what: str = "input") -> dict[str, Any] | None:
    """The manifest of the completed synalign folder at `path`, its rows unread; None for plain data files."""
    loc = io.resolve(path, storage)
    if not io.exists(loc, storage):
        raise InputError(f"{what} not found: {loc.url}")
    if loc.fs.isdir(loc.path):
        if (manifest := RunFolder(loc, storage).manifest()) is not None:
            return manifest
        _refuse_legacy(loc)
    return None


def read_output(path: str, storage: StorageConfig | None, fmt: str = "auto",
                what: str = "input") -> tuple[pa.Table, dict[str, Any] | None]:
    """The one reader: a completed synalign folder (its manifest's parts, in order) or any Parquet/JSONL/CSV file
    or folder. Returns the rows and the manifest (None for plain data)."""
    if (manifest := output_manifest(path, storage, what)) is not None:
        return RunFolder(io.resolve(path, storage), storage).read(manifest), manifest
    return io.read_table(path, fmt, storage), None


def _refuse_legacy(loc: io.Location) -> None:
    if loc.fs.exists(loc.join(LEGACY_MANIFEST).path) and not loc.fs.exists(loc.join(MANIFEST).path):
        raise InputError(f"{loc.url} was written by an older synalign_ray (it has {LEGACY_MANIFEST}, not {MANIFEST});"
                         " rerun the command into a new folder or with output.overwrite=true")


class RunFolder:
    """The output folder one command writes. Use as a context manager around the work:

        with RunFolder(loc, storage).open(settings, overwrite) as folder:
            if folder.reused is not None:
                return folder.reused          # complete with the same settings: nothing to do
            folder.write_table(table, rows_per_part)
            return folder.finish(manifest)    # manifest last, lease released

    The rule, the same for every command: a complete folder with the same settings is reused; a folder (complete
    or not) holding other settings is refused naming the keys, unless `overwrite`, which wipes it (and `siblings`)
    and starts again; an incomplete one with the same settings resumes (`resume=True`: its parts stay, the caller
    skips what is done) or is cleared of its parts and rewritten.
    """

    def __init__(self, loc: io.Location, storage: StorageConfig | None = None):
        self.loc = loc
        self.storage = storage
        self.reused: dict[str, Any] | None = None
        self.lease = FolderLease(loc, storage)

    @property
    def url(self) -> str:
        return self.loc.url

    def manifest(self) -> dict[str, Any] | None:
        """The manifest when the folder is complete, else None."""
        return io.read_manifest(self.loc)

    def read(self, manifest: dict[str, Any] | None = None) -> pa.Table:
        """The rows of the complete folder: the parts its manifest lists, in order, or sorted by the manifest's
        `order` column (parts written by parallel tasks, each sorted, whose ranges interleave)."""
        if manifest is None and (manifest := self.manifest()) is None:
            _refuse_legacy(self.loc)
            raise InputError(f"{self.url} has no {MANIFEST}: it is not a completed synalign output")
        table = io.read_parts(self.loc, manifest)
        if (key := manifest.get("order")) in table.column_names:
            table = table.take(pc.sort_indices(table, sort_keys=[(key, "ascending")]))
        return table

    # ------------------------------------------------------------------------------------------------ opening

    def open(self, settings: dict[str, Any], overwrite: bool = False, resume: bool = False,
             siblings: Iterable[io.Location] = ()) -> "RunFolder":
        """Check the folder is writable, take the lease, then apply the overwrite rule (see the class)."""
        io.check_writable(self.loc, self.storage)
        self.lease.acquire()
        try:
            self._apply_rule(settings, overwrite, resume, list(siblings))
        except BaseException:
            self.release()
            raise
        return self

    def _apply_rule(self, settings: dict[str, Any], overwrite: bool, resume: bool,
                    siblings: list[io.Location]) -> None:
        settings = json.loads(json.dumps(settings, default=str))
        previous = io.read_manifest(self.loc, SETTINGS)
        complete = io.read_manifest(self.loc)
        if not overwrite:
            _refuse_legacy(self.loc)
            if previous is not None and previous != settings:
                keys = changed_keys(previous, settings)
                state = "a complete result" if complete is not None else "an unfinished result"
                raise InputError(f"{self.url} holds {state} with different settings (changed: "
                                 f"{', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}); use another output path "
                                 "or output.overwrite=true")
            if complete is not None:
                if previous is None:
                    raise InputError(f"{self.url} holds a complete result without {SETTINGS}; use another output "
                                     "path or output.overwrite=true")
                log.info("%s is already complete with these settings; reusing it", self.url)
                self.reused = complete
                self.release()
                return
        if overwrite:
            self._wipe(siblings)
        elif previous is None:
            self._refuse_foreign_data()
        elif not resume:
            self._clear_parts()
        io.write_manifest(self.loc, settings, self.storage, name=SETTINGS)

    def _wipe(self, siblings: list[io.Location]) -> None:
        # The manifest first: a wipe cut short leaves an incomplete folder, never a manifest without its parts.
        for loc in (self.loc, *siblings):
            if loc.fs.exists(loc.join(MANIFEST).path):
                loc.fs.rm(loc.join(MANIFEST).path)
        for loc in siblings:
            if loc.fs.exists(loc.path):
                loc.fs.rm(loc.path, recursive=True)
        for p in self._listing():
            if posixpath.basename(p) != LEASE:
                self.loc.fs.rm(p, recursive=True)

    def _listing(self) -> list[str]:
        if not self.loc.fs.exists(self.loc.path):
            return []
        return [p for p in self.loc.fs.ls(self.loc.path, detail=False) if p.rstrip("/") != self.loc.path]

    def _data_files(self) -> list[str]:
        return [p for p in self._listing() if not posixpath.basename(p.rstrip("/")).startswith(("_", "."))]

    def _refuse_foreign_data(self) -> None:
        # A folder that is not ours but holds data: writing parts into it would mix them with its files.
        data = [p for p in self._data_files() if p.endswith(".parquet")]
        if data:
            raise InputError(f"{self.url} already holds {len(data)} Parquet file(s) that no synalign command wrote "
                             "there; choose an empty folder or set output.overwrite=true")

    def _clear_parts(self) -> None:
        for p in self._data_files():
            self.loc.fs.rm(p, recursive=True)

    # ------------------------------------------------------------------------------------------------ writing

    def write_table(self, table: pa.Table, rows_per_part: int, stem: str = "part") -> list[str]:
        return write_parts(table, self.loc, self.storage, stem, rows_per_part)

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (last: the folder is complete from here on) and release the lease."""
        if self.lease.lost:
            raise LeaseError(f"{self.url}: another job took over this folder's lease while this one ran (its "
                             "heartbeat stalled past the timeout); this job's result is not marked complete")
        io.write_manifest(self.loc, manifest, self.storage)
        self.release()
        return manifest

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def release(self) -> None:
        """Give the folder's lease back (idempotent)."""
        self.lease.release()
