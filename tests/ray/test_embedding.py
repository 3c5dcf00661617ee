"""Embedding stage on a real local Ray: the Ray Data actor pool must equal plain SentenceTransformer.encode."""

import numpy as np
import pyarrow as pa
import pytest

from synalign_ray import io
from synalign_ray.cli import main
from synalign_ray.config import build_config
from synalign_ray.stages.embed import embed_rows
from tests.conftest import data_file, sample_rows


def test_ray_data_embeddings_equal_sentence_transformers(ray_local, sentence_model):
    rows = io.read_real_rows(build_config({}, [f"data.path={data_file('sst2_dev.parquet')}",
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
    if request.param == "local":
        return str(tmp_path / "emb"), []
    storage, bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs/emb", [f"storage.endpoint_url={storage.endpoint_url}", "storage.region=us-east-1"]


def test_embed_command_writes_parts_then_manifest(ray_local, output_target, sentence_model, capsys):
    out, storage_overrides = output_target
    argv = ["embed", "--input", str(data_file("agnews_dev.parquet")), "--output", out,
            "data.sample_rows=120", "data.seed=3", "output.rows_per_part=50", *storage_overrides]
    assert main(argv) == 0
    assert "embedded 120 rows (dim 384" in capsys.readouterr().out
    cfg = build_config({}, storage_overrides)
    loc = io.resolve(out, cfg.storage)
    manifest = io.read_manifest(loc)
    assert manifest["rows"] == 120 and manifest["dim"] == 384 and len(manifest["parts"]) == 3
    table = io.read_parts(loc, manifest)
    expected = sample_rows("agnews_dev.parquet", 10_001, seed=0)  # the whole file, in order
    ids = table.column(io.ROW_ID).to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 120
    assert table.column("text").to_pylist() == [expected.column("text")[i].as_py() for i in ids]
    want = sentence_model.encode(table.column("text").to_pylist(), normalize_embeddings=True)
    np.testing.assert_allclose(io.embeddings_from_arrow(table.column(io.EMBEDDING)), want, atol=1e-5)
    # Running again onto a completed result with the same settings reuses it; other settings are refused.
    assert main(argv) == 0 and io.read_manifest(loc) == manifest
    assert main([*argv, "data.seed=4"]) == 2
    assert "complete result with different settings (changed: data.seed)" in capsys.readouterr().err
