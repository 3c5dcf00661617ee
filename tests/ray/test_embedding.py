"""Embedding stage on a real local Ray: the Ray Data actor pool must equal plain SentenceTransformer.encode."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synalign_ray import io, real_input
from synalign_ray.cli import main
from synalign_ray.config import build_config
from synalign_ray.stages.embed import embed_rows, read_embedded
from tests.conftest import data_file, sample_rows


def test_ray_data_embeddings_equal_sentence_transformers(ray_local, sentence_model):
    rows = real_input.read_real_rows(build_config({}, [f"data.path={data_file('sst2_dev.parquet')}",
                                               "data.sample_rows=300", "data.seed=7"]).data)
    cfg = build_config({}, ["embedding.batch_size=64", "embedding.num_actors=2"])
    out = embed_rows(rows, cfg, "text")
    assert out.column(io.ROW_ID).to_pylist() == rows.column(io.ROW_ID).to_pylist()
    assert out.column("text").to_pylist() == rows.column("text").to_pylist()
    assert out.column("label").to_pylist() == rows.column("label").to_pylist()
    assert out.schema.field(io.EMBEDDING).type == pa.list_(pa.float32(), 384)
    got = io.embeddings_from_arrow(out.column(io.EMBEDDING))
    want = sentence_model.encode(rows.column("text").to_pylist(), normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.fixture(params=["local", "s3"])
def output_target(request, tmp_path):
    """(base URL, storage overrides): the S3 keys go in the config, as the Ray workers that read and write the files
    do not share the test's environment."""
    if request.param == "local":
        return str(tmp_path), []
    storage, bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs", [f"storage.endpoint_url={storage.endpoint_url}", "storage.region=us-east-1",
                                   "storage.access_key_id=testing-key-id",
                                   "storage.secret_access_key=testing-secret-key"]


def test_embed_command_writes_parts_then_manifest(ray_local, output_target, sentence_model, capsys):
    base, storage_overrides = output_target
    out = f"{base}/emb"
    argv = ["embed", "--input", str(data_file("agnews_dev.parquet")), "--output", out,
            "data.sample_rows=120", "data.seed=3", "output.rows_per_part=50", *storage_overrides]
    assert main(argv) == 0
    assert "embedded 120 rows (dim 384" in capsys.readouterr().out
    cfg = build_config({}, storage_overrides)
    loc = io.resolve(out, cfg.storage)
    manifest = io.read_manifest(loc)
    assert manifest["rows"] == 120 and manifest["dim"] == 384
    sizes = [io.read_parts(loc, {"parts": [p]}).num_rows for p in manifest["parts"]]
    assert sum(sizes) == 120 and max(sizes) <= 50 and len(sizes) >= 3
    table, emb, _ = read_embedded(out, cfg)
    expected = sample_rows("agnews_dev.parquet", 10_001, seed=0)  # the whole file, in order
    ids = table.column(io.ROW_ID).to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 120
    assert table.column("text").to_pylist() == [expected.column("text")[i].as_py() for i in ids]
    want = sentence_model.encode(table.column("text").to_pylist(), normalize_embeddings=True)
    np.testing.assert_allclose(emb, want, atol=1e-5)
    # Running again onto a completed result with the same settings reuses it; other settings are refused.
    assert main(argv) == 0 and io.read_manifest(loc) == manifest
    assert main([*argv, "data.seed=4"]) == 2
    assert "complete result with different settings (changed: data.seed)" in capsys.readouterr().err


def test_embed_reads_and_writes_on_ray_workers_only(ray_local, output_target, sentence_model, monkeypatch):
    """A folder of Parquet files with several row groups, sampled: the Ray Data tasks read the slices and write the
    parts (the driver's own read_slice and write_part fail if called), and the rows equal the one-process reader's."""
    from synalign_ray import embedding
    from synalign_ray.real_input import plan_input
    from synalign_ray.stages.embed import embed_stage

    base, storage_overrides = output_target
    cfg = build_config({}, storage_overrides)
    source = sample_rows("sst2_dev.parquet", 600, seed=2)
    folder = io.resolve(f"{base}/input", cfg.storage)
    folder.fs.makedirs(folder.path, exist_ok=True)
    for k, (start, group) in enumerate([(0, 150), (350, 64)]):
        with folder.fs.open(folder.join(f"rows-{k}.parquet").path, "wb") as fh:
            pq.write_table(source.slice(start, 350 if k == 0 else 250), fh, row_group_size=group)
    cfg = build_config({}, [f"data.path={folder.url}", "data.sample_rows=420", "data.seed=5",
                            f"output.path={base}/emb", "output.rows_per_part=100", "embedding.batch_size=32",
                            "embedding.num_actors=2", *storage_overrides])
    plan = plan_input(cfg.data, cfg.storage)
    assert len(plan.slices) >= 6 and plan.rows == 600 and plan.kept_rows == 420

    def driver_must_not(*args, **kwargs):
        raise AssertionError("rows read or written on the driver")

    monkeypatch.setattr(embedding, "read_slice", driver_must_not)
    monkeypatch.setattr(embedding, "write_part", driver_must_not)
    manifest = embed_stage(cfg)
    assert manifest["rows"] == 420 and len(manifest["parts"]) >= 5
    table, emb, _ = read_embedded(cfg.output.path, cfg)
    want = real_input.read_real_rows(cfg.data, cfg.storage)
    assert table.drop_columns([io.EMBEDDING]).equals(want)
    np.testing.assert_allclose(emb, sentence_model.encode(want.column("text").to_pylist(), normalize_embeddings=True),
                               atol=1e-5)
