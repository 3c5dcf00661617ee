"""The Python API on a real local Ray: `embed` then `select` on a small SST-2 sample, paths given as arguments
(an output named `2024` stays a folder name), manifests returned and equal to the ones written; select on two shard
actors gives the in-process schedule."""

import numpy as np

import synalign_ray
from synalign_ray import io
from tests.conftest import data_file


def test_embed_then_select_through_the_api(ray_local, tmp_path, monkeypatch, sentence_model, same_schedule):
    monkeypatch.chdir(tmp_path)
    cfg = synalign_ray.SynAlignConfig()
    cfg.data.sample_rows = 150
    emb = synalign_ray.embed(cfg, input=data_file("sst2_dev.parquet"), output="2024")
    assert emb["rows"] == 150 and emb["dim"] == 384 and emb["output"] == str(tmp_path / "2024")
    assert io.read_manifest(io.resolve("2024")) == emb
    assert cfg.output.path == "synalign_output" and cfg.data.path is None, "the caller's config is not changed"
    table = io.read_parts(io.resolve("2024"))
    want = sentence_model.encode(table.column("text").to_pylist(), normalize_embeddings=True)
    np.testing.assert_allclose(io.embeddings_from_arrow(table.column(io.EMBEDDING)), want, atol=1e-5)

    cfg.selection.max_groups = 5
    cfg.selection.k = 3
    sched = synalign_ray.select(cfg, embeddings="2024", output=tmp_path / "yes")
    assert sched["groups"] == 5 and sched["real_rows"] == 150
    groups = io.read_parts(io.resolve(str(tmp_path / "yes")))
    assert groups.num_rows == 5 and all(len(g) == 4 for g in groups.column("demo_row_ids").to_pylist())

    # On two shard actors (the partitioned engine, one label's GPs per actor) the schedule is the in-process one,
    # and num_shards is no result setting: the same output folder is reused as it stands.
    cfg.selection.engine, cfg.selection.partition_rows, cfg.selection.inducing_rows = "partitioned", 20, 8
    one = synalign_ray.select(cfg, embeddings="2024", output=tmp_path / "one")
    cfg.selection.num_shards, cfg.selection.num_cpus_per_shard = 2, 0.25
    two = synalign_ray.select(cfg, embeddings="2024", output=tmp_path / "two")
    assert two["groups"] == one["groups"] == 5
    same_schedule(io.read_parts(io.resolve(str(tmp_path / "two"))), io.read_parts(io.resolve(str(tmp_path / "one"))))
    assert synalign_ray.select(cfg, embeddings="2024", output=tmp_path / "one") == one
