"""The run's generated_embeddings stage on real rows (SST-2 dev rows stand in for generated ones): it marks a copy
of an input row as near_copy, keeps the dropped folder's rows with their reasons, reuses its complete folder under
the same settings and refuses it, naming the changed key, under other quality settings."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from synalign_ray import io
from synalign_ray.alignment.rows import FolderRows
from synalign_ray.config import build_config
from synalign_ray.errors import InputError
from synalign_ray.run_folder import RunFolder
from synalign_ray.generation.ledger import DROPPED_SCHEMA, GENERATED_SCHEMA, dropped_location
from synalign_ray.stages.common import DROP_REASON, write_table
from synalign_ray.quality import near_copy_max_cosine
from synalign_ray.stages.score import _generated_embeddings_stage
from tests.conftest import sample_rows

KEPT, DROPPED = 30, 2


def _generated(texts: list[str], labels: list[str], schema: pa.Schema, **extra) -> pa.Table:
    return pa.Table.from_pylist([{"text": t, "label": lab, "group_id": i // 5, "demo_row_ids": [0, 1], "summary": "",
                                  "model": "m", "prompt_tokens": 1, "completion_tokens": 1, **extra}
                                 for i, (t, lab) in enumerate(zip(texts, labels))], schema=schema)


@pytest.fixture
def run_inputs(tmp_path, real_embeddings, ray_local):
    real_rows, real_emb = real_embeddings("sst2_train.parquet", 200, 0)
    embedded = real_rows.select(["text", "label"]).append_column(
        io.ROW_ID, pa.array(np.arange(200), pa.int64())).append_column(io.EMBEDDING, io.embeddings_to_arrow(real_emb))
    gen = sample_rows("sst2_dev.parquet", KEPT + DROPPED, seed=4)
    texts, labels = gen.column("text").to_pylist(), gen.column("label").to_pylist()
    texts[0] = real_rows.column("text")[7].as_py()  # the generator repeated an input row word for word
    run_dir = io.resolve(str(tmp_path / "run"))
    cfg = build_config({}, ["quality.label_min_probability=0", "output.rows_per_part=70"])
    # The input stays in its folder (three parts): the stage sends a task to each part.
    write_table(embedded, run_dir.join("embeddings"), cfg, {"kind": "embeddings"})
    gen_loc = run_dir.join("generated")
    write_table(_generated(texts[KEPT:], labels[KEPT:], DROPPED_SCHEMA, drop_reason="too_short"),
                dropped_location(gen_loc), cfg, {"kind": "generated_dropped"})
    gen_manifest = write_table(_generated(texts[:KEPT], labels[:KEPT], GENERATED_SCHEMA), gen_loc, cfg,
                               {"kind": "generated", "dropped_rows": DROPPED, "failed_checks": {"too_short": DROPPED}})
    return run_dir, gen_loc, gen_manifest, FolderRows.of(run_dir.join("embeddings").url, None, "embeddings")


def _stage_cfg(run_dir: io.Location, *overrides: str):
    cfg = build_config({}, ["quality.label_min_probability=0", *overrides])
    return lambda name: cfg.model_copy(update={"output": cfg.output.model_copy(
        update={"path": run_dir.join(name).url})})


def test_marks_reuses_and_refuses_changed_settings(run_inputs):
    run_dir, gen_loc, gen_manifest, real = run_inputs
    manifest = _generated_embeddings_stage(run_dir, gen_loc, gen_manifest, real, _stage_cfg(run_dir))
    out = RunFolder(run_dir.join("generated_embeddings")).read()
    reasons = out.column(DROP_REASON).to_pylist()
    assert out.num_rows == KEPT + DROPPED
    assert reasons[0] == "near_copy" and reasons[KEPT:] == ["too_short"] * DROPPED
    assert manifest["failed_checks"]["near_copy"] == reasons.count("near_copy")
    assert manifest["failed_checks"]["too_short"] == DROPPED
    assert manifest["kept_rows"] == reasons.count(None)
    assert out.column(io.ROW_ID).to_pylist() == list(range(KEPT + DROPPED))
    # The per-part tasks' maximum equals one pass over all input rows.
    real_emb = io.embeddings_from_arrow(io.read_parts(run_dir.join("embeddings")).column(io.EMBEDDING))
    np.testing.assert_allclose(out.column("nearest_input_cosine").to_numpy(),
                               near_copy_max_cosine(io.embeddings_from_arrow(out.column(io.EMBEDDING)), real_emb),
                               rtol=0, atol=1e-6)

    # Same settings: the complete folder is read back, not rewritten.
    folder = run_dir.join("generated_embeddings")
    stamps = {p: os.stat(folder.join(p).path).st_mtime_ns for p in manifest["parts"]}
    again = _generated_embeddings_stage(run_dir, gen_loc, gen_manifest, real, _stage_cfg(run_dir))
    assert again == manifest
    assert {p: os.stat(folder.join(p).path).st_mtime_ns for p in manifest["parts"]} == stamps

    # Another near-copy threshold would mark other rows: the folder is refused, the key named, nothing lost.
    with pytest.raises(InputError, match=r"quality\.near_copy_cosine"):
        _generated_embeddings_stage(run_dir, gen_loc, gen_manifest, real,
                                    _stage_cfg(run_dir, "quality.near_copy_cosine=0.9"))
    assert io.read_manifest(folder) == manifest


def test_with_filter_false_the_checks_count_and_drop_nothing(run_inputs):
    """quality.filter false: the near-copy is counted in failed_checks but keeps a null drop_reason, and kept_rows
    counts the rows alignment uses (every row the generation kept), not the rows that passed every check."""
    run_dir, gen_loc, gen_manifest, real = run_inputs
    manifest = _generated_embeddings_stage(run_dir, gen_loc, gen_manifest, real,
                                           _stage_cfg(run_dir, "quality.filter=false"))
    out = RunFolder(run_dir.join("generated_embeddings")).read()
    assert out.column(DROP_REASON).to_pylist() == [None] * KEPT + ["too_short"] * DROPPED
    copies = int((out.column("nearest_input_cosine").to_numpy()[:KEPT]
                  >= build_config({}).quality.near_copy_cosine).sum())
    assert copies >= 1 and manifest["failed_checks"] == {"near_copy": copies, "too_short": DROPPED}
    assert manifest["kept_rows"] == KEPT


def test_marker_units_equal_one_pass_over_all_rows(tmp_path, real_embeddings, sentence_model, ray_local):
    """Three kept parts and the dropped part, checked by two marker actors one unit each, give every row the
    embedding, nearest input cosine and drop reason that one pass over all rows gives (label check and
    near-duplicate check on; a near-duplicate and a near-copy planted)."""
    from synalign_ray.generation.dedup import near_duplicate_keep
    from synalign_ray.quality import own_label_probability
    from synalign_ray.stages.score import _quality_reference_split

    real_rows, real_emb = real_embeddings("sst2_train.parquet", 200, 0)
    embedded = real_rows.select(["text", "label"]).append_column(
        io.ROW_ID, pa.array(np.arange(200), pa.int64())).append_column(io.EMBEDDING, io.embeddings_to_arrow(real_emb))
    gen = sample_rows("sst2_dev.parquet", KEPT + DROPPED, seed=4)
    texts, labels = gen.column("text").to_pylist(), gen.column("label").to_pylist()
    texts[0] = real_rows.column("text")[7].as_py()
    texts[3] = texts[2] + " !"  # a near-duplicate of an earlier row of group 0
    labels[12] = "negative" if labels[12] == "positive" else "positive"
    run_dir = io.resolve(str(tmp_path / "run"))
    write_cfg = build_config({}, ["output.rows_per_part=10"])
    write_table(embedded, run_dir.join("embeddings"), write_cfg, {"kind": "embeddings"})
    gen_loc = run_dir.join("generated")
    write_table(_generated(texts[KEPT:], labels[KEPT:], DROPPED_SCHEMA, drop_reason="too_short"),
                dropped_location(gen_loc), write_cfg, {"kind": "generated_dropped"})
    gen_manifest = write_table(_generated(texts[:KEPT], labels[:KEPT], GENERATED_SCHEMA), gen_loc, write_cfg,
                               {"kind": "generated", "dropped_rows": DROPPED, "failed_checks": {"too_short": DROPPED}})
    assert len(gen_manifest["parts"]) == 3
    overrides = ["quality.label_min_probability=0.5", "generation.dedup_near_threshold=0.9", "output.rows_per_part=12",
                 "embedding.num_actors=2"]
    stage_cfg = lambda name: build_config({}, overrides).model_copy(update={"output": build_config(  # noqa: E731
        {}, overrides).output.model_copy(update={"path": run_dir.join(name).url})})
    real = FolderRows.of(run_dir.join("embeddings").url, None, "embeddings")
    manifest = _generated_embeddings_stage(run_dir, gen_loc, gen_manifest, real, stage_cfg)
    assert len(manifest["parts"]) == 4  # one unit per kept part (10 + 10 > 12) and the dropped part
    out = RunFolder(run_dir.join("generated_embeddings")).read(manifest)
    assert out.column(io.ROW_ID).to_pylist() == list(range(KEPT + DROPPED))
    assert out.column("text").to_pylist() == texts

    # The one-process twin: every row embedded at once, every check over all live rows at once.
    emb = sentence_model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    np.testing.assert_allclose(io.embeddings_from_arrow(out.column(io.EMBEDDING)), emb, rtol=0, atol=2e-6)
    nearest = near_copy_max_cosine(emb, real_emb)
    np.testing.assert_allclose(out.column("nearest_input_cosine").to_numpy(), nearest, rtol=0, atol=2e-6)
    reasons: list = [None] * KEPT + ["too_short"] * DROPPED
    for i in np.flatnonzero(nearest[:KEPT] >= stage_cfg("x").quality.near_copy_cosine):
        reasons[i] = "near_copy"
    live = np.flatnonzero([r is None for r in reasons])
    ids = np.arange(200)
    train = ids[~np.isin(ids, _quality_reference_split(stage_cfg("x"), ids, {0, 1})[0])]
    own = own_label_probability(real_emb[train], np.asarray(real_rows.column("label").to_pylist())[train], emb[live],
                                [labels[i] for i in live], seed=0)
    for i in live[own < 0.5]:
        reasons[i] = "label_mismatch"
    live = np.flatnonzero([r is None for r in reasons])
    keep = near_duplicate_keep(emb[live], np.arange(KEPT + DROPPED)[live] // 5, 0.9)
    for i in live[~keep]:
        reasons[i] = "near_duplicate"
    assert out.column(DROP_REASON).to_pylist() == reasons
    assert {"near_copy", "label_mismatch", "near_duplicate"} <= set(reasons)
    assert manifest["kept_rows"] == reasons.count(None)
    assert manifest["failed_checks"] == {r: reasons.count(r) for r in set(reasons) if r}
