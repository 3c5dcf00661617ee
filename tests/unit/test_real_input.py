"""The input plan: slices, row ids and the sample equal reading the whole input at once, and a bad file is named with
its row, on a local folder and moto S3 with the same assertions."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synalign_ray import io
from synalign_ray.config import DataConfig, StorageConfig
from synalign_ray.errors import InputError
from synalign_ray.real_input import plan_input, read_real_rows, read_slice
from tests.conftest import sample_rows


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return io.resolve(str(tmp_path / "in")), StorageConfig()
    storage, bucket = request.getfixturevalue("s3_bucket")
    return io.resolve(f"s3://{bucket}/in", storage), storage


def put_parquet(loc, name, table, row_group_size=None):
    loc.fs.makedirs(loc.path, exist_ok=True)
    with loc.fs.open(loc.join(name).path, "wb") as fh:
        pq.write_table(table, fh, row_group_size=row_group_size)


def test_slices_reassemble_the_input_with_its_row_ids_and_sample(store):
    loc, storage = store
    rows = sample_rows("agnews_dev.parquet", 700, seed=4)
    put_parquet(loc, "a.parquet", rows.slice(0, 300), row_group_size=128)  # row groups of 128, 128, 44
    put_parquet(loc, "b.parquet", rows.slice(300, 0))                      # an empty file: no slice
    put_parquet(loc, "c.parquet", rows.slice(300, 400), row_group_size=150)
    plan = plan_input(DataConfig(path=loc.url), storage)
    assert plan.rows == 700 and len(plan.slices) == 6 and plan.bytes_per_row > 8
    assert [s.first_row_id for s in plan.slices] == [0, 128, 256, 300, 450, 600]
    whole = pa.concat_tables([read_slice(plan, s, DataConfig(path=loc.url), storage) for s in plan.slices])
    assert whole.column(io.ROW_ID).to_pylist() == list(range(700))
    assert whole.column("text").equals(rows.column("text")) and whole.column("label").equals(rows.column("label"))

    # the sample is the one seeded draw over all 700 row ids, whatever the slicing
    data = DataConfig(path=loc.url, sample_rows=250, seed=9)
    sampled = read_real_rows(data, storage)
    keep = np.sort(np.random.default_rng(9).choice(700, size=250, replace=False))
    assert sampled.column(io.ROW_ID).to_pylist() == keep.tolist()
    assert sampled.column("text").to_pylist() == [rows.column("text")[int(i)].as_py() for i in keep]
    assert plan_input(data, storage).kept_rows == 250


def test_a_bad_row_is_named_by_its_file_and_row(store):
    loc, storage = store
    good = pa.table({"text": ["a", "b", "c"], "label": ["x", "y", "x"]})
    put_parquet(loc, "1.parquet", good)
    put_parquet(loc, "2.parquet", pa.table({"text": ["d"] * 70_000 + [" "], "label": ["x"] * 70_001}))
    with pytest.raises(InputError, match=r"2\.parquet has 1 empty or blank strings \(first at row 70000\)"):
        plan_input(DataConfig(path=loc.url), storage)  # the blank row is in the scan's second batch


def test_files_that_disagree_are_refused(store):
    loc, storage = store
    put_parquet(loc, "1.parquet", pa.table({"text": ["a"], "label": ["x"], "score": [1.5]}))
    put_parquet(loc, "2.parquet", pa.table({"text": ["b"], "label": ["y"], "score": ["high"]}))
    with pytest.raises(InputError, match="incompatible schemas"):
        plan_input(DataConfig(path=loc.url), storage)


def test_jsonl_folder_with_integer_labels(store):
    loc, storage = store
    loc.fs.makedirs(loc.path, exist_ok=True)
    for k, labels in enumerate([[0, 1], [1, 1, 0]]):
        body = "\n".join(json.dumps({"text": f"row {k}-{i}", "label": lab}) for i, lab in enumerate(labels))
        loc.fs.pipe(loc.join(f"{k}.jsonl").path, body.encode())
    table = read_real_rows(DataConfig(path=loc.url), storage)
    assert table.column("label").to_pylist() == ["0", "1", "1", "1", "0"]
    assert table.column(io.ROW_ID).to_pylist() == [0, 1, 2, 3, 4]
    assert table.schema.field("label").type == pa.string()
