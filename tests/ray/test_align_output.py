"""`align(...)` end to end on shard actors: parts and manifest on a local folder and on moto S3, bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from synalign_ray.alignment.align import align
from synalign_ray.alignment.plan import plan_fit
from synalign_ray.config import StorageConfig, build_config
from synalign_ray.errors import ConfigError, InputError
from synalign_ray.io import read_manifest, read_parts, resolve
from synalign_ray.run_folder import RunFolder

SIZE = 400


@pytest.fixture(scope="module")
def inputs(real_embeddings):
    real, real_emb = real_embeddings("sst2_train.parquet", 300, 3)
    dev, dev_emb = real_embeddings("sst2_dev.parquet", 150, 3)
    news, news_emb = real_embeddings("agnews_dev.parquet", 150, 3)
    # AG News rows get seeded random SST-2 labels: off-distribution rows the alignment should mostly skip.
    news_labels = np.random.default_rng(0).choice(["negative", "positive"], size=news.num_rows)
    synthetic = pa.concat_tables([pa.table({"text": news.column("text"), "label": pa.array(news_labels)}),
                                  dev.select(["text", "label"])])
    synthetic = synthetic.append_column("group_id", pa.array(np.arange(synthetic.num_rows) // 5))
    return real, real_emb, synthetic, np.vstack([news_emb, dev_emb])


def _config(*overrides: str):
    return build_config({}, ["alignment.projections=200", "alignment.steps=150", f"alignment.size={SIZE}",
                             "alignment.num_shards=2", "alignment.weighting=both", "alignment.mix_real=true",
                             "alignment.entropy=0.001", *overrides])


@pytest.fixture(scope="module")
def s3_storage(s3_server):
    """A fresh bucket on the moto server and a StorageConfig carrying test keys explicitly: shard actors run in
    worker processes that never see a test's environment variables."""
    import uuid

    import boto3

    keys = {"aws_access_key_id": "testing-key-id", "aws_secret_access_key": "testing-secret-key"}
    bucket = f"synalign-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", **keys).create_bucket(Bucket=bucket)
    return StorageConfig(endpoint_url=s3_server, region="us-east-1", access_key_id=keys["aws_access_key_id"],
                         secret_access_key=keys["aws_secret_access_key"]), bucket


@pytest.fixture(scope="module")
def outputs(ray_local, inputs, s3_storage, tmp_path_factory):
    """The same run written to a local folder and to moto S3: where -> (location, manifest)."""
    storage, bucket = s3_storage
    runs = {}
    for where, loc, store in (("local", resolve(str(tmp_path_factory.mktemp("align") / "out")), None),
                              ("s3", resolve(f"s3://{bucket}/runs/aligned", storage), storage)):
        runs[where] = loc, align(_config(), *inputs, loc, store)
    return runs


@pytest.mark.parametrize("where", ["local", "s3"])
def test_align_writes_readable_parts_and_manifest(inputs, outputs, where):
    real, real_emb, synthetic, syn_emb = inputs
    loc, manifest = outputs[where]
    assert read_manifest(loc) == manifest
    table = read_parts(loc)
    counts = manifest["counts"]
    assert table.num_rows == SIZE + real.num_rows == counts["rows"]
    assert table.column_names[:7] == ["text", "label", "source", "weight", "row_index", "importance_weight",
                                      "group_id"]
    syn = table.filter(pa.compute.equal(table.column("source"), "synthetic"))
    mixed = table.filter(pa.compute.equal(table.column("source"), "real"))
    assert syn.num_rows == SIZE and mixed.num_rows == real.num_rows
    # Resampled rows are the input rows they point to.
    idx = np.asarray(syn.column("row_index"))
    assert syn.column("text").to_pylist() == synthetic.column("text").take(pa.array(idx)).to_pylist()
    assert syn.column("group_id").to_pylist() == (idx // 5).tolist()
    assert counts["distinct_resampled"] == np.unique(idx).size
    # Label counts follow the real label shares (largest-remainder rounding).
    for label, c in counts["per_label"].items():
        assert abs(c["resampled"] - SIZE * c["real"] / real.num_rows) < 1
        assert syn.filter(pa.compute.equal(syn.column("label"), label)).num_rows == c["resampled"]
    assert mixed.column("weight").null_count == real.num_rows
    assert set(mixed.column("importance_weight").to_pylist()) == {1.0}
    # The aligned resample is closer to the real rows than all rows and than a uniform resample.
    m = manifest["metrics"]
    assert m["aligned"]["mmd2_rbf"] < 0.5 * m["random"]["mmd2_rbf"]
    assert m["aligned"]["mmd2_rbf"] < 0.5 * m["all"]["mmd2_rbf"]
    assert manifest["fit"]["mmd_after"] < manifest["fit"]["mmd_before"]
    # AG News rows (input rows 0..149) are mostly skipped.
    assert (idx < 150).mean() < 0.2
    # Held-out metrics sit beside the in-sample ones, each labelled; the held-out rows are a fifth of each label.
    held = manifest["metrics_held_out"]
    assert {held[k]["reference"] for k in ("all", "random", "aligned")} == {"held_out"}
    assert {m[k]["reference"] for k in ("all", "random", "aligned")} == {"in_sample"}
    assert held["aligned"]["mmd2_rbf"] < 0.5 * held["random"]["mmd2_rbf"]
    for c in counts["per_label"].values():
        assert c["real_held_out"] == int(np.floor(0.2 * c["real"] + 0.5)) == c["real"] - c["real_fitted"]
    assert manifest["metrics_real_rows"]["held_out"] == sum(c["real_held_out"] for c in counts["per_label"].values())
    search = manifest["fit"]["entropy_search"]
    assert search["mode"] == "fixed" and search["entropy"] == manifest["fit"]["entropy"] == 0.001


def test_local_and_s3_outputs_hold_identical_content(outputs):
    local, s3 = (read_parts(outputs[w][0]) for w in ("local", "s3"))
    assert local.num_rows > 0 and local.equals(s3)
    assert outputs["local"][1]["parts"] == outputs["s3"][1]["parts"]


def test_uniform_importance_weighting_keeps_label_shares(ray_local, inputs, tmp_path):
    real, real_emb, synthetic, syn_emb = inputs
    loc = resolve(str(tmp_path / "imp"))
    manifest = align(_config("alignment.weighting=importance", "alignment.mix_real=false"), real, real_emb,
                     synthetic, syn_emb, loc, None)
    table = read_parts(loc)
    assert manifest["fit"] == {}
    assert table.column("importance_weight").null_count == 0
    per_label = manifest["counts"]["per_label"]
    for v in per_label.values():
        assert abs(v["resampled"] - SIZE * v["real"] / real.num_rows) < 1


@pytest.mark.parametrize("checker_rows", [None, 100])
def test_importance_weights_written_by_the_shards_equal_the_one_process_twin(ray_local, inputs, tmp_path,
                                                                             monkeypatch, checker_rows):
    # The checkers train on the driver on seeded samples (all rows here, or 100 a side with the cap lowered), each
    # shard weighs its own rows: every written weight equals the in-process computation on the same sample.
    from synalign_ray.alignment import importance

    if checker_rows is not None:
        monkeypatch.setattr(importance, "CHECKER_ROWS", checker_rows)
    real, real_emb, synthetic, syn_emb = inputs
    cfg = _config("alignment.weighting=importance", "alignment.mix_real=false")
    loc = resolve(str(tmp_path / "imp"))
    align(cfg, real, real_emb, synthetic, syn_emb, loc, None)
    table = read_parts(loc)
    seen = np.flatnonzero(~plan_fit(cfg, real, synthetic).held_out)
    seen = seen[importance.checker_sample(len(seen), cfg.alignment.seed)]
    syn_sample = importance.checker_sample(len(syn_emb), cfg.alignment.seed)
    if checker_rows is not None:  # 240 fit rows and 300 synthetic rows, each cut to a sample of 100
        assert len(seen) == len(syn_sample) == checker_rows
    real_labels = np.asarray(real.column("label").to_pylist())
    syn_labels = np.asarray(synthetic.column("label").to_pylist())
    checkers = importance.fit_checkers(real_emb[seen], real_labels[seen], syn_emb[syn_sample],
                                       syn_labels[syn_sample], seed=cfg.alignment.seed)
    expected = importance.checker_weights(checkers, syn_emb.astype(np.float32), syn_labels)
    if checker_rows is None:
        np.testing.assert_allclose(expected, importance.importance_weights(
            real_emb[seen], real_labels[seen], syn_emb.astype(np.float32), syn_labels, seed=cfg.alignment.seed))
    idx = np.asarray(table.column("row_index"))
    # rtol 1e-6: a shard's predict_proba runs over its slice, and BLAS blocks a product by the row count (seen: 8e-8)
    np.testing.assert_allclose(table.column("importance_weight").to_numpy(), expected[idx], rtol=1e-6)
    assert np.unique(idx).size > 100


BAD_INPUTS = [
    ("empty real", lambda r, re, s, se: (r.slice(0, 0), re[:0], s, se), InputError, "real set is empty"),
    ("empty synthetic", lambda r, re, s, se: (r, re, s.slice(0, 0), se[:0]), InputError, "synthetic set is empty"),
    ("dimensions", lambda r, re, s, se: (r, re, s, se[:, :100]), InputError, "dimensions differ"),
    ("nan", lambda r, re, s, se: (r, re, s, np.where(np.arange(len(se))[:, None] == 7, np.nan, se)), InputError,
     "NaN"),
    ("no labels", lambda r, re, s, se: (r.drop_columns(["label"]), re, s, se), InputError, "needs labels"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_fails_before_any_output(inputs, tmp_path, case):
    _, make, error, message = case
    args = make(*inputs)
    loc = resolve(str(tmp_path / "never"))
    with pytest.raises(error, match=message):
        align(_config(), *args, loc, None)
    assert not loc.exists()


@pytest.mark.parametrize("overrides, message", [
    (["alignment.entropy=auto", "alignment.min_distinct=0.9"], "min_distinct=0.9 cannot be met"),
    (["alignment.entropy=auto", "alignment.min_ess=301"], "min_ess=301.0 cannot be met"),
    (["alignment.holdout_fraction=0.999"], "leaving none for the fit"),
])
def test_unreachable_target_or_empty_fit_fails_before_any_output(inputs, tmp_path, overrides, message):
    loc = resolve(str(tmp_path / "never"))
    with pytest.raises(InputError, match=message):
        align(_config(*overrides), *inputs, loc, None)
    assert not loc.exists()


@pytest.mark.parametrize("override", ["alignment.size=0", "alignment.projections=0", "alignment.size=-3"])
def test_non_positive_size_or_projections_is_a_config_error(override):
    with pytest.raises(ConfigError, match="greater than 0"):
        _config(override)


def test_real_label_without_synthetic_rows_gets_no_share_but_stays_in_mix(ray_local, inputs, tmp_path):
    real, real_emb, synthetic, syn_emb = inputs
    negative = np.asarray(pa.compute.equal(synthetic.column("label"), "negative"))
    loc = resolve(str(tmp_path / "negatives"))
    manifest = align(_config("alignment.weighting=mmd"), real, real_emb, synthetic.filter(pa.array(negative)),
                     syn_emb[negative], loc, None)
    counts = manifest["counts"]
    assert counts["labels_without_synthetic_rows"] == ["positive"]
    assert counts["per_label"]["negative"]["resampled"] == SIZE
    table = read_parts(loc)
    assert table.filter(pa.compute.equal(table.column("source"), "real")).num_rows == real.num_rows


def test_synthetic_label_unknown_to_the_real_set_is_an_input_error(inputs, tmp_path):
    real, real_emb, synthetic, syn_emb = inputs
    relabelled = synthetic.set_column(1, "label", pa.array(["Sports"] * synthetic.num_rows))
    with pytest.raises(InputError, match="do not occur in the real set"):
        align(_config("alignment.weighting=mmd"), real, real_emb, relabelled, syn_emb,
              resolve(str(tmp_path / "x")), None)


def _without_timings(fit: dict) -> dict:
    return {k: v for k, v in fit.items() if k != "seconds"}


def test_held_out_rows_never_reach_the_fit(ray_local, inputs, tmp_path):
    real, real_emb, synthetic, syn_emb = inputs
    cfg = _config("alignment.weighting=mmd", "alignment.mix_real=false")
    held = plan_fit(cfg, real, synthetic).held_out
    # Every held-out row's embedding swapped for an AG News row's: a fit that read them would change.
    swapped = real_emb.copy()
    swapped[held] = syn_emb[:held.sum()]
    runs = []
    for name, emb in (("real", real_emb), ("swapped", swapped)):
        loc = resolve(str(tmp_path / name))
        runs.append((align(cfg, real, emb, synthetic, syn_emb, loc, None), read_parts(loc)))
    (a, rows_a), (b, rows_b) = runs
    assert _without_timings(a["fit"]) == _without_timings(b["fit"])
    assert rows_a.equals(rows_b)
    for name in ("all", "random", "aligned"):
        assert a["metrics"][name] == b["metrics"][name]
    # The held-out figures do read those rows: against AG News stand-ins the aligned draw looks far worse.
    assert b["metrics_held_out"]["aligned"]["mmd2_rbf"] > 2 * a["metrics_held_out"]["aligned"]["mmd2_rbf"]


def test_auto_entropy_meets_the_distinct_target(ray_local, inputs, tmp_path):
    real, real_emb, synthetic, syn_emb = inputs
    loc = resolve(str(tmp_path / "auto"))
    manifest = align(_config("alignment.weighting=mmd", "alignment.mix_real=false", "alignment.entropy=auto",
                             "alignment.min_distinct=0.4"), real, real_emb, synthetic, syn_emb, loc, None)
    search = manifest["fit"]["entropy_search"]
    assert search["mode"] == "auto" and search["met"]
    assert search["achieved"]["expected_distinct"] >= 0.4
    assert manifest["fit"]["entropy"] == search["entropy"]
    assert 1 <= search["fits"] == len(search["frontier"]) <= _config().alignment.search_fits
    assert search["entropy"] in [p["entropy"] for p in search["frontier"]]
    # One draw of 400 rows lands near the expectation the search steered by.
    assert abs(manifest["counts"]["distinct_fraction"] - search["achieved"]["expected_distinct"]) < 0.05


def _run_folders(inputs, base: str, storage, real_emb=None):
    """The inputs stored as a run stores them: an embeddings folder of three parts whose id ranges interleave (as
    parallel writers leave them), and generated rows in parts with every fourth row dropped. Returns (real folder,
    generated folder, the real rows as stored, the dropped mask)."""
    from synalign_ray import io

    real, emb, synthetic, syn_emb = inputs
    real_ids = np.arange(real.num_rows) * 2 + 1  # sparse ids, as a sampled input has
    stored_real = real.append_column(io.ROW_ID, pa.array(real_ids)).append_column(
        io.EMBEDDING, io.embeddings_to_arrow(emb if real_emb is None else real_emb))
    real_loc = resolve(f"{base}/embeddings", storage)
    parts = [io.write_part(stored_real.filter(pa.array(np.arange(real.num_rows) % 3 == k)), real_loc,
                           f"part-{k:04d}.parquet", storage) for k in (2, 0, 1)]
    io.write_manifest(real_loc, {"kind": "embeddings", "parts": parts, "order": io.ROW_ID}, storage)
    dropped = np.arange(synthetic.num_rows) % 4 == 0
    stored_gen = synthetic.append_column(io.ROW_ID, pa.array(np.arange(synthetic.num_rows))).append_column(
        "drop_reason", pa.array(["near_copy" if d else None for d in dropped], pa.string())).append_column(
        io.EMBEDDING, io.embeddings_to_arrow(syn_emb))
    gen_loc = resolve(f"{base}/generated_embeddings", storage)
    parts = [io.write_part(stored_gen.slice(lo, 100), gen_loc, f"part-{lo:04d}.parquet", storage)
             for lo in range(0, synthetic.num_rows, 100)]
    io.write_manifest(gen_loc, {"kind": "embeddings", "parts": parts}, storage)
    return real_loc, gen_loc, stored_real.drop_columns([io.EMBEDDING]), dropped


def _align_folders(cfg, real_loc, gen_loc, out, storage):
    from synalign_ray.alignment.align import align_folders
    from synalign_ray.alignment.rows import FolderRows
    from synalign_ray.run_folder import RunFolder, settings_for

    real_rows = FolderRows.of(real_loc.url, storage, "embeddings")
    generated = FolderRows.of(gen_loc.url, storage, "generated rows", kept_column="drop_reason",
                              rename={"row_id": "generated_id"})
    with RunFolder(out, storage).open(settings_for(cfg, ("data", "alignment")), False) as folder:
        return align_folders(cfg, real_rows, generated, folder)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_shards_that_read_run_folders_give_the_output_of_rows_held_by_the_driver(ray_local, inputs, s3_storage,
                                                                                  tmp_path, where, monkeypatch):
    """align_folders, as `synalign run` aligns: the driver scans ids and labels only (its own slice reader fails if
    called), and each shard reads its row-id range of the parts, leaving the dropped generated rows out. Rows,
    weights and metrics equal `align` over the same rows held in memory."""
    import uuid

    from synalign_ray.alignment import rows as rows_mod

    real, real_emb, synthetic, syn_emb = inputs
    storage, bucket = s3_storage if where == "s3" else (None, None)
    base = f"s3://{bucket}/folders-{uuid.uuid4().hex[:8]}" if where == "s3" else str(tmp_path)
    real_loc, gen_loc, stored_real, dropped = _run_folders(inputs, base, storage)
    kept = synthetic.append_column("generated_id", pa.array(np.arange(synthetic.num_rows))).filter(pa.array(~dropped))
    cfg = _config()
    expected = align(cfg, stored_real, real_emb, kept, syn_emb[~dropped], resolve(f"{base}/in_memory", storage),
                     storage)

    def driver_must_not(self):
        raise AssertionError("the driver read a shard's rows")

    monkeypatch.setattr(rows_mod.FolderSlice, "load", driver_must_not)
    out = resolve(f"{base}/from_folders", storage)
    got = _align_folders(cfg, real_loc, gen_loc, out, storage)
    for key in ("counts", "metrics", "metrics_held_out", "columns"):
        assert got[key] == expected[key], key
    assert {k: v for k, v in got["fit"].items() if k != "seconds"} == \
        {k: v for k, v in expected["fit"].items() if k != "seconds"}
    assert read_parts(out, got).equals(read_parts(resolve(f"{base}/in_memory", storage), expected))


def test_a_bad_row_a_shard_finds_is_one_input_error_and_no_manifest(ray_local, inputs, tmp_path):
    """A NaN embedding inside a folder is found by the shard that loads it: one InputError line naming the row's
    position, and the output folder gets no manifest."""
    real_emb = inputs[1].copy()
    real_emb[250, 3] = np.nan
    real_loc, gen_loc, _, _ = _run_folders(inputs, str(tmp_path), None, real_emb=real_emb)
    out = resolve(str(tmp_path / "out"))
    with pytest.raises(InputError, match=r"embeddings has NaN or infinite values \(first at row 250\)") as err:
        _align_folders(_config(), real_loc, gen_loc, out, None)
    assert "\n" not in str(err.value) and read_manifest(out) is None


def test_align_command_on_two_embedded_folders_leaves_their_rows_in_place(ray_local, inputs, tmp_path, monkeypatch):
    """`synalign align --real <embeddings folder> --synthetic <embedded folder>`: the shards read the folders
    themselves (the driver's slice reader fails if called) and give what the same rows as plain Parquet files give,
    which the driver reads."""
    import pyarrow.parquet as pq

    from synalign_ray import io
    from synalign_ray.alignment import rows as rows_mod
    from synalign_ray.stages.align import align_stage

    real_loc, gen_loc, _, _ = _run_folders(inputs, str(tmp_path), None)
    for name, loc in (("real", real_loc), ("synthetic", gen_loc)):
        table = io.read_parts(loc)
        pq.write_table(table.take(pa.compute.sort_indices(table, sort_keys=[(io.ROW_ID, "ascending")])),
                       tmp_path / f"{name}.parquet")
    cfg = _config("alignment.weighting=mmd", f"output.path={tmp_path / 'from_files'}")
    expected = align_stage(cfg, str(tmp_path / "real.parquet"), str(tmp_path / "synthetic.parquet"))

    def driver_must_not(self):
        raise AssertionError("the driver read a shard's rows")

    monkeypatch.setattr(rows_mod.FolderSlice, "load", driver_must_not)
    monkeypatch.setattr("synalign_ray.stages.align.read_rows", driver_must_not)
    cfg = _config("alignment.weighting=mmd", f"output.path={tmp_path / 'from_folders'}")
    got = align_stage(cfg, real_loc.url, gen_loc.url)
    for key in ("counts", "metrics", "metrics_held_out", "columns"):
        assert got[key] == expected[key], key
    assert read_parts(resolve(str(tmp_path / "from_folders")), got).equals(
        read_parts(resolve(str(tmp_path / "from_files")), expected))


def test_align_command_on_raw_files_embeds_them_into_the_output_without_the_driver(ray_local, inputs, tmp_path,
                                                                                 monkeypatch):
    """`synalign align --real <raw Parquet> --synthetic <raw Parquet>`: each side is embedded file to file into the
    output's _embedded_<side> folder, whose shards read their rows (the driver's readers fail if called); the
    embeddings are the encoder's, and the result equals the in-memory path on the same embedded rows."""
    import pyarrow.parquet as pq

    from synalign_ray import io
    from synalign_ray.alignment import rows as rows_mod
    from synalign_ray.stages import align as align_mod

    real, real_emb, synthetic, syn_emb = inputs
    pq.write_table(real.select(["text", "label"]), tmp_path / "real_raw.parquet")
    pq.write_table(synthetic, tmp_path / "synthetic_raw.parquet")

    def driver_must_not(*args, **kwargs):
        raise AssertionError("the driver read or embedded rows")

    with monkeypatch.context() as m:
        m.setattr(rows_mod.FolderSlice, "load", driver_must_not)
        m.setattr(align_mod, "read_rows", driver_must_not)
        m.setattr(align_mod, "ensure_embedded", driver_must_not)
        cfg = _config("alignment.weighting=mmd", f"output.path={tmp_path / 'raw'}")
        got = align_mod.align_stage(cfg, str(tmp_path / "real_raw.parquet"), str(tmp_path / "synthetic_raw.parquet"))
        assert align_mod.align_stage(cfg, str(tmp_path / "real_raw.parquet"),
                                     str(tmp_path / "synthetic_raw.parquet")) == got  # reused
    out = resolve(str(tmp_path / "raw"))
    for side, table, emb in (("real", real.select(["text", "label"]), real_emb), ("synthetic", synthetic, syn_emb)):
        stored = RunFolder(out.join(f"_embedded_{side}")).read()
        assert stored.column(io.ROW_ID).to_pylist() == list(range(table.num_rows))
        assert stored.select(table.column_names).equals(table)
        np.testing.assert_allclose(io.embeddings_from_arrow(stored.column(io.EMBEDDING)), emb, rtol=0, atol=1e-5)
        pq.write_table(stored, tmp_path / f"{side}_embedded.parquet")
    expected = align_mod.align_stage(_config("alignment.weighting=mmd", f"output.path={tmp_path / 'in_memory'}"),
                                     str(tmp_path / "real_embedded.parquet"),
                                     str(tmp_path / "synthetic_embedded.parquet"))
    for key in ("counts", "metrics", "metrics_held_out", "columns"):
        assert got[key] == expected[key], key
    assert read_parts(out, got).equals(read_parts(resolve(str(tmp_path / "in_memory")), expected))
