"""The run folder: one overwrite rule, the resume fingerprint, the lease (live, dead pid, stale heartbeat) and a
layout Parquet readers open, on a local folder and on moto S3."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from synalign_ray import io, lease, run_folder
from synalign_ray.cli import main
from synalign_ray.config import StorageConfig, build_config
from synalign_ray.errors import InputError
from synalign_ray.lease import FolderLease, LeaseError
from synalign_ray.run_folder import RunFolder, settings_for
from synalign_ray.stages.common import write_table


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """(base url, StorageConfig, config overrides) for a fresh location of each kind."""
    if request.param == "local":
        return str(tmp_path / "store"), StorageConfig(), []
    storage, bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/store", storage, [f"storage.endpoint_url={storage.endpoint_url}",
                                             "storage.region=us-east-1"]


TABLE = pa.table({"text": list("abcdef"), "n": list(range(6))})


def _write(loc, storage, settings, table=TABLE, overwrite=False, resume=False):
    with RunFolder(loc, storage).open(settings, overwrite, resume) as folder:
        if folder.reused is not None:
            return folder.reused
        parts = folder.write_table(table, 4)
        return folder.finish({"parts": parts, "rows": table.num_rows})


def _names(loc):
    return sorted(p.rsplit("/", 1)[-1] for p in loc.fs.ls(loc.path, detail=False))


def test_one_rule_reuse_refuse_overwrite(store):
    base, storage, _ = store
    loc = io.resolve(base + "/out", storage)
    first = _write(loc, storage, {"k": 1, "sub": {"a": 1}})
    assert _names(loc) == ["_manifest.json", "_settings.json", "part-00000.parquet", "part-00001.parquet"]
    # Complete, same settings: reused, nothing rewritten.
    before = loc.fs.cat(loc.join("part-00000.parquet").path)
    assert _write(loc, storage, {"k": 1, "sub": {"a": 1}}, table=TABLE.slice(0, 1)) == first
    assert loc.fs.cat(loc.join("part-00000.parquet").path) == before
    # Complete, other settings: refused naming the dotted keys.
    with pytest.raises(InputError, match=r"complete result with different settings \(changed: k, sub.a\)"):
        _write(loc, storage, {"k": 2, "sub": {"a": 2}})
    # Overwrite: wiped and redone.
    again = _write(loc, storage, {"k": 2}, table=TABLE.slice(0, 1), overwrite=True)
    assert again["rows"] == 1 and _names(loc) == ["_manifest.json", "_settings.json", "part-00000.parquet"]
    assert io.read_parts(loc).num_rows == 1


def test_incomplete_folder_resumes_or_is_cleared(store):
    base, storage, _ = store
    loc = io.resolve(base + "/out", storage)
    folder = RunFolder(loc, storage).open({"k": 1})
    folder.write_table(TABLE, 2)  # three parts, then the job dies before its manifest
    folder.release()
    # Same settings, resumable stage: the parts stay for the caller to skip.
    with RunFolder(loc, storage).open({"k": 1}, resume=True) as f:
        assert f.reused is None and len([n for n in _names(loc) if n.endswith(".parquet")]) == 3
    # Same settings, a stage that rewrites: no part of the dead attempt survives to be read by a Parquet reader.
    _write(loc, storage, {"k": 1}, table=TABLE.slice(0, 1))
    assert [n for n in _names(loc) if n.endswith(".parquet")] == ["part-00000.parquet"]
    # An unfinished folder with other settings is refused too (its parts would mix two configurations).
    loc.fs.rm(loc.join(io.MANIFEST).path)
    with pytest.raises(InputError, match=r"unfinished result with different settings \(changed: k\)"):
        _write(loc, storage, {"k": 3})


def test_foreign_and_legacy_folders_are_refused(store):
    base, storage, _ = store
    foreign = io.resolve(base + "/foreign", storage)
    io.write_part(TABLE, foreign, "mine.parquet", storage)
    with pytest.raises(InputError, match="Parquet file\\(s\\) that no synalign command wrote"):
        _write(foreign, storage, {"k": 1})
    legacy = io.resolve(base + "/legacy", storage)
    io.write_part(TABLE, legacy, "part-00000.parquet", storage)
    io.write_manifest(legacy, {"parts": ["part-00000.parquet"]}, storage, name="manifest.json")
    with pytest.raises(InputError, match="older synalign_ray"):
        _write(legacy, storage, {"k": 1})
    with pytest.raises(InputError, match="older synalign_ray"):
        run_folder.read_output(legacy.url, storage)


def _lease(loc, storage, host, pid, age):
    now = time.time()
    io.write_manifest(loc, {"host": host, "pid": pid, "token": "other", "started": now - age, "heartbeat": now - age},
                      storage, name=lease.LEASE)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lease_refuses_a_live_job_and_takes_over_a_dead_one(store):
    base, storage, _ = store
    loc = io.resolve(base + "/leased", storage)
    here = socket.gethostname()
    # A live job on this host (the test runner's parent process is alive) with a fresh heartbeat.
    _lease(loc, storage, here, os.getppid(), age=1)
    with pytest.raises(LeaseError, match="being written by another job"):
        _write(loc, storage, {"k": 1})
    assert not loc.fs.exists(loc.join(io.MANIFEST).path)
    # Another host with a fresh heartbeat: the pid cannot be checked from here, so it blocks too.
    _lease(loc, storage, "other-host.example", 1, age=5)
    with pytest.raises(LeaseError):
        _write(loc, storage, {"k": 1})
    # Killed on this host: its pid is gone, so the lease is stale at once and the job resumes.
    _lease(loc, storage, here, _dead_pid(), age=1)
    assert _write(loc, storage, {"k": 1})["rows"] == 6
    assert not loc.fs.exists(loc.join(lease.LEASE).path), "a finished job leaves no lease"
    # Killed on another host: stale once its heartbeat is older than the timeout.
    loc.fs.rm(loc.join(io.MANIFEST).path)
    _lease(loc, storage, "other-host.example", 1, age=lease.LEASE_TIMEOUT_S + 5)
    assert _write(loc, storage, {"k": 1})["rows"] == 6


def test_heartbeat_keeps_a_long_job_live(store, monkeypatch):
    base, storage, _ = store
    # A beat every second; generous against a loaded machine, where one moto round trip can take a second.
    monkeypatch.setattr(lease, "LEASE_TIMEOUT_S", 6.0)
    loc = io.resolve(base + "/beat", storage)
    folder = RunFolder(loc, storage).open({"k": 1})
    try:
        first = io.read_manifest(loc, lease.LEASE)
        assert first["host"] == socket.gethostname() and first["pid"] == os.getpid()
        time.sleep(7.0)  # longer than the timeout: only the heartbeat keeps the lease fresh
        later = io.read_manifest(loc, lease.LEASE)
        assert later["heartbeat"] > first["heartbeat"] and later["token"] == first["token"]
        assert FolderLease(loc, storage).stale_reason(later) is None
    finally:
        folder.release()
    assert not loc.fs.exists(loc.join(lease.LEASE).path)


def test_a_second_command_into_a_leased_folder_exits_2(store, real_embeddings, capsys):
    base, storage, overrides = store
    rows, emb = real_embeddings("sst2_dev.parquet", 200, 4)
    table = rows.append_column(io.ROW_ID, pa.array(np.arange(rows.num_rows))).append_column(
        io.EMBEDDING, io.embeddings_to_arrow(emb))
    cfg = build_config({}, overrides)
    write_table(table, io.resolve(base + "/emb", storage), cfg, {"kind": "embeddings", "dim": 384})
    out = io.resolve(base + "/sched", storage)
    _lease(out, storage, socket.gethostname(), os.getppid(), age=1)
    argv = ["select", "--embeddings", base + "/emb", "--output", out.url, "selection.max_groups=3", *overrides]
    assert main(argv) == 2
    assert "is being written by another job" in capsys.readouterr().err.strip().splitlines()[-1]
    out.fs.rm(out.join(lease.LEASE).path)
    assert main(argv) == 0
    first = io.read_manifest(out)
    # The same command again finds the folder complete with the same settings and reuses it; a changed setting
    # exits 2 naming it; --overwrite redoes it.
    assert main(argv) == 0 and io.read_manifest(out) == first
    assert main([*argv, "selection.k=4"]) == 2
    assert "changed: selection.k" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main([*argv, "selection.k=4", "--overwrite"]) == 0
    assert io.read_manifest(out)["config"]["selection"]["k"] == 4


def test_every_folder_opens_as_a_parquet_dataset(store):
    """Metadata beside the parts (manifest, settings, lease, a ledger folder) never trips a Parquet reader."""
    base, storage, _ = store
    loc = io.resolve(base + "/data", storage)
    folder = RunFolder(loc, storage).open(settings_for(build_config({}), ("data",)))
    folder.write_table(TABLE, 4)
    io.write_manifest(loc.join("_ledger"), {"seq": 0}, storage, name="batch-00000.json")
    # Still leased (a live job): readers see the parts written so far.
    path = loc.path
    fs = loc.pyarrow_fs()
    assert pds.dataset(path, filesystem=fs, format="parquet").to_table().num_rows == 6
    assert pq.read_table(path, filesystem=fs).num_rows == 6
    folder.finish({"parts": ["part-00000.parquet", "part-00001.parquet"]})
    assert pq.read_table(path, filesystem=fs).sort_by("n").equals(TABLE)
    assert json.loads(loc.fs.cat(loc.join(io.MANIFEST).path))["parts"]
