"""I/O: reading real rows and writing parts + manifest, with the same assertions on a local folder and moto S3."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synalign_ray import io, real_input
from synalign_ray.config import DataConfig, StorageConfig
from synalign_ray.errors import InputError, StorageError
from tests.conftest import sample_rows


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """(base url, StorageConfig) for a fresh location of each kind."""
    if request.param == "local":
        return str(tmp_path / "store"), StorageConfig()
    storage, bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/store", storage


def put(store, name: str, data: bytes) -> str:
    base, storage = store
    loc = io.resolve(base, storage).join(name)
    loc.fs.makedirs(loc.path.rsplit("/", 1)[0], exist_ok=True)
    loc.fs.pipe(loc.path, data)
    return loc.url


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def sst2_sample():
    return sample_rows("sst2_dev.parquet", 50, seed=1)


def test_reads_parquet_jsonl_csv_identically(store, sst2_sample):
    rows = sst2_sample.to_pylist()
    jsonl = "\n".join(json.dumps(r) for r in rows).encode()
    csv_buf = pa.BufferOutputStream()
    import pyarrow.csv as pcsv

    pcsv.write_csv(sst2_sample, csv_buf)
    paths = [put(store, "r.parquet", parquet_bytes(sst2_sample)), put(store, "r.jsonl", jsonl),
             put(store, "r.csv", csv_buf.getvalue().to_pybytes())]
    for path in paths:
        got = real_input.read_real_rows(DataConfig(path=path), store[1])
        assert got.column("text").to_pylist() == sst2_sample.column("text").to_pylist()
        assert got.column("label").to_pylist() == sst2_sample.column("label").to_pylist()
        assert got.column(io.ROW_ID).to_pylist() == list(range(50))


def test_folder_of_parts_is_read_in_name_order(store, sst2_sample):
    put(store, "dir/b.parquet", parquet_bytes(sst2_sample.slice(25)))
    url = put(store, "dir/a.parquet", parquet_bytes(sst2_sample.slice(0, 25)))
    got = real_input.read_real_rows(DataConfig(path=url.rsplit("/", 1)[0]), store[1])
    assert got.column("text").to_pylist() == sst2_sample.column("text").to_pylist()


def test_seeded_subsample_keeps_input_row_ids(store, sst2_sample):
    url = put(store, "r.parquet", parquet_bytes(sst2_sample))
    a = real_input.read_real_rows(DataConfig(path=url, sample_rows=10, seed=3), store[1])
    b = real_input.read_real_rows(DataConfig(path=url, sample_rows=10, seed=3), store[1])
    assert a.equals(b) and a.num_rows == 10
    ids = a.column(io.ROW_ID).to_pylist()
    assert ids == sorted(ids)
    assert a.column("text").to_pylist() == [sst2_sample.column("text")[i].as_py() for i in ids]


BAD_TABLES = {
    "missing text column": (pa.table({"sentence": ["a"], "label": ["x"]}), "text column 'text' not found"),
    "empty dataset": (pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}),
                      "has no rows"),
    "null text": (pa.table({"text": ["a", None], "label": ["x", "y"]}), "1 null values (first at row 1)"),
    "non-string text": (pa.table({"text": [1, 2], "label": ["x", "y"]}), "must hold strings, found int64"),
    "empty strings": (pa.table({"text": ["a", "  ", ""], "label": ["x", "y", "z"]}),
                      "2 empty or blank strings (first at row 1)"),
    "label column absent": (pa.table({"text": ["a"]}), "label column 'label' not found"),
    "null label": (pa.table({"text": ["a", "b"], "label": ["x", None]}), "label column 'label'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_are_rejected_with_the_problem_named(store, case):
    table, message = BAD_TABLES[case]
    url = put(store, "bad.parquet", parquet_bytes(table))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        real_input.read_real_rows(DataConfig(path=url), store[1])


def test_unlabelled_data_and_integer_labels(store):
    url = put(store, "r.parquet", parquet_bytes(pa.table({"text": ["a", "b"], "label": [0, 1]})))
    got = real_input.read_real_rows(DataConfig(path=url), store[1])
    assert got.column("label").to_pylist() == ["0", "1"]
    got = real_input.read_real_rows(DataConfig(path=url, label_column=None), store[1])
    assert got.column_names == ["text", "label", io.ROW_ID]


def test_missing_unsupported_and_unreadable_files(store):
    base, storage = store
    with pytest.raises(InputError, match="input not found"):
        real_input.read_real_rows(DataConfig(path=base + "/nope.parquet"), storage)
    txt = put(store, "r.txt", b"hello\n")
    with pytest.raises(InputError, match="unsupported input format '.txt'"):
        real_input.read_real_rows(DataConfig(path=txt), storage)
    corrupt = put(store, "corrupt.parquet", b"this is not parquet at all")
    with pytest.raises(InputError, match="cannot read .*corrupt.parquet as parquet"):
        real_input.read_real_rows(DataConfig(path=corrupt), storage)
    with pytest.raises(InputError, match="no input given"):
        real_input.read_real_rows(DataConfig(), storage)


def test_parts_and_manifest_round_trip(store):
    base, storage = store
    loc = io.resolve(base + "/out", storage)
    emb = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    table = pa.table({"text": list("abcdef"), "embedding": io.embeddings_to_arrow(emb)})
    io.write_part(table.slice(0, 3), loc, "part-00000.parquet", storage)
    io.write_part(table.slice(3), loc, "part-00001.parquet", storage)
    # Parts without a manifest are an incomplete result and are not readable as one.
    assert io.read_manifest(loc) is None
    with pytest.raises(InputError, match="not a completed synalign output"):
        io.read_parts(loc)
    io.write_manifest(loc, {"parts": ["part-00000.parquet", "part-00001.parquet"], "rows": 6}, storage)
    back = io.read_parts(loc)
    assert back.column("text").to_pylist() == list("abcdef")
    np.testing.assert_array_equal(io.embeddings_from_arrow(back.column("embedding")), emb)


def test_embedding_column_checks():
    with pytest.raises(InputError, match="NaN or infinite values \\(first at row 1\\)"):
        io.embeddings_from_arrow(io.embeddings_to_arrow(np.array([[0.0, 1.0], [np.nan, 0.0]])))
    ragged = pa.array([[0.0, 1.0], [1.0]], pa.list_(pa.float32()))
    with pytest.raises(InputError, match="different lengths"):
        io.embeddings_from_arrow(ragged)
    with pytest.raises(InputError, match="list of floats"):
        io.embeddings_from_arrow(pa.array(["x"]))


def test_s3_bucket_that_does_not_exist(s3_bucket):
    storage, _ = s3_bucket
    loc = io.resolve("s3://no-such-bucket-synalign/out", storage)
    with pytest.raises(StorageError, match="S3 bucket 'no-such-bucket-synalign' does not exist"):
        io.check_writable(loc, storage)
    with pytest.raises(StorageError, match="S3 bucket 'no-such-bucket-synalign' does not exist"):
        real_input.read_real_rows(DataConfig(path="s3://no-such-bucket-synalign/x.parquet"), storage)


def test_s3_endpoint_that_refuses_connections(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDREFUSEDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "refused-secret-value")
    storage = StorageConfig(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", max_attempts=1)
    with pytest.raises(StorageError) as err:
        io.check_writable(io.resolve("s3://bucket/out", storage), storage)
    assert "unreachable" in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    assert "refused-secret-value" not in str(err.value) and "AKIDREFUSEDTEST" not in str(err.value)
    with pytest.raises(StorageError, match="unreachable"):
        real_input.read_real_rows(DataConfig(path="s3://bucket/in.parquet"), storage)


def test_secrets_never_reach_the_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-xyz")
    storage = StorageConfig(secret_access_key="config-secret-abc")
    loc = io.resolve(str(tmp_path / "m"), storage)
    io.write_manifest(loc, {"note": "env-secret-xyz and config-secret-abc"}, storage)
    text = (tmp_path / "m" / io.MANIFEST).read_text()
    assert "env-secret-xyz" not in text and "config-secret-abc" not in text


def test_local_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        io.check_writable(io.resolve(str(f / "sub")))


def test_small_files_are_written_whole(store):
    base, storage = store
    loc = io.resolve(base + "/report", storage)
    io.write_bytes(loc, "index.html", b"<html>one</html>", storage)
    io.write_bytes(loc, "index.html", b"<html>two</html>", storage)
    assert loc.fs.cat(loc.join("index.html").path) == b"<html>two</html>"
    assert [p.rsplit("/", 1)[-1] for p in loc.fs.ls(loc.path, detail=False)] == ["index.html"], "no temp file left"
