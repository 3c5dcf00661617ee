"""The selection tracker as a Ray actor: same schedule as the plain class, and the same again when restarted; its
partitions on two concurrent shard actors: the same schedule as in process; the tracker actor of `generate`/`run`,
which loads its rows itself."""

from __future__ import annotations

import numpy as np
import pytest

from synalign_ray.config import SelectionConfig
from synalign_ray.selection.schedule import build_schedule
from synalign_ray.selection.steps import actor_shards, call_shard
from synalign_ray.selection.tracker import SelectionTracker

N_ROWS = 600


def test_actor_schedule_equals_plain_class_and_resumes(ray_local, real_embeddings, same_schedule):
    rows, emb = real_embeddings("agnews_dev.parquet", N_ROWS, 0)
    labels = rows.column("label").to_pylist()
    ids = np.arange(N_ROWS, dtype=np.int64)
    cfg = SelectionConfig(k=9, max_groups=24, budget="average")
    plain = build_schedule(cfg, emb, labels, ids)

    TrackerActor = ray_local.remote(SelectionTracker)
    actor = TrackerActor.remote(emb, labels, ids, cfg)
    groups = []
    while batch := ray_local.get(actor.next_groups.remote(5)):
        groups.extend(batch)
    # The actor runs with one BLAS thread, the driver with several: same ids, variances to float32 accuracy.
    same_schedule(groups, plain)
    progress = ray_local.get(actor.progress.remote())
    assert progress["groups_issued"] == 24 and progress["done"]

    # a fresh actor after a killed one selects the same groups (what a resumed `generate` relies on)
    first = TrackerActor.remote(emb, labels, ids, cfg)
    head = ray_local.get(first.next_groups.remote(10))
    ray_local.kill(first)
    again = ray_local.get(TrackerActor.remote(emb, labels, ids, cfg).next_groups.remote(100))
    same_schedule(again[:10], head)
    same_schedule(again, groups)


@pytest.mark.parametrize("scope", ["per_label", "shared"])
def test_two_concurrent_shard_actors_give_the_in_process_schedule(ray_local, real_embeddings, same_schedule, scope):
    rows, emb = real_embeddings("agnews_dev.parquet", N_ROWS, 0)
    labels = rows.column("label").to_pylist()
    ids = np.arange(N_ROWS, dtype=np.int64)
    # inducing rows make every group's block of h travel to the unit's other shards (the cross-partition term);
    # per_label: each label's partitions on one actor, the labels' steps run on both at once; shared: one unit,
    # its partitions round robin over both actors, stale partitions refreshed on both at once
    cfg = SelectionConfig(k=9, max_groups=30, budget="average", engine="partitioned", partition_rows=60,
                          rule="density_weighted", inducing_rows=32, gp_scope=scope)
    plain = SelectionTracker(emb, labels, ids, cfg)
    spread = SelectionTracker(emb, labels, ids, cfg, num_shards=2, make_shard=actor_shards(ray_local, num_cpus=0.5))
    assert plain.n_partitions == spread.n_partitions >= 8
    assert min(call_shard(shard, "state_bytes").result() for shard in spread._shards) > 0, "both actors hold partitions"
    units_on = [{spread._part_unit[pid] for pid in range(spread.n_partitions) if spread._shard_of[pid] == s}
                for s in range(2)]
    if scope == "per_label":
        assert not units_on[0] & units_on[1], "each label's GP lives on one actor"
    else:
        assert units_on[0] == units_on[1] == {0}, "the one shared GP spans both actors"
    # asked in small batches, so issuing and computing ahead interleave
    spread_groups = [g for _ in range(10) for g in spread.next_groups(4)]
    same_schedule(spread_groups, plain.next_groups(100))
    assert spread.progress()["done"] and spread.state_bytes() == plain.state_bytes()


def test_generate_stage_tracker_with_shard_actors_gives_the_in_process_schedule(ray_local, real_embeddings,
                                                                                same_schedule, tmp_path):
    """The tracker actor as `synalign run` starts it, over an embeddings folder, with selection.num_shards = 2: two
    block actors read the folder's row-id ranges (the tracker actor scans only ids, texts and labels), the shard
    actors receive their partitions' rows from them, and the tracker issues the schedule `synalign select` builds in
    process with each group's demonstration texts, and gives the input's copy keys. A NaN in the second block's rows
    is one InputError naming its row."""
    import pyarrow as pa

    from synalign_ray import io
    from synalign_ray.config import build_config
    from synalign_ray.errors import InputError
    from synalign_ray.quality import copy_keys
    from synalign_ray.stages.common import write_table
    from synalign_ray.stages.select import start_tracker

    n = 2000  # two blocks of 1,024-row chunks
    rows, emb = real_embeddings("sst2_train.parquet", n, 0)
    labels = rows.column("label").to_pylist()
    ids = np.arange(n, dtype=np.int64) * 2
    embedded = rows.append_column(io.ROW_ID, pa.array(ids)).append_column(io.EMBEDDING, io.embeddings_to_arrow(emb))
    cfg = build_config({}, [f"output.path={tmp_path / 'emb'}", "output.rows_per_part=300", "data.label_column=label",
                            "selection.k=9", "selection.max_groups=30", "selection.engine=partitioned",
                            "selection.partition_rows=200", "selection.inducing_rows=32", "selection.num_shards=2",
                            "selection.num_cpus_per_shard=0.25", "selection.rule=density_weighted"])
    # parts in shuffled id order, as parallel writers leave them
    shuffled = embedded.take(np.random.default_rng(0).permutation(n))
    write_table(shuffled, io.resolve(str(tmp_path / "emb")), cfg, {"kind": "embeddings", "dim": 384})
    tracker, facts = start_tracker(ray_local, cfg, str(tmp_path / "emb"))
    assert facts["rows"] == n and facts["groups_planned"] == 30 and facts["blocks"] == [1024, 976]
    groups = []
    while batch := ray_local.get(tracker.next_groups.remote(7, with_texts=True)):
        groups.extend(batch)
    same_schedule(groups, build_schedule(cfg.selection, emb, labels, ids))
    text_of = dict(zip(ids.tolist(), rows.column("text").to_pylist()))
    assert all(g["demo_texts"] == [text_of[i] for i in g["demo_row_ids"]] for g in groups)
    assert np.array_equal(ray_local.get(tracker.copy_keys.remote()), copy_keys(text_of.values()))
    assert ray_local.get(tracker.state_bytes.remote()) > 0
    ray_local.kill(tracker)

    bad = emb.copy()
    bad[1500] = np.nan
    broken = rows.append_column(io.ROW_ID, pa.array(ids)).append_column(io.EMBEDDING, io.embeddings_to_arrow(bad))
    write_table(broken, io.resolve(str(tmp_path / "bad")), cfg, {"kind": "embeddings", "dim": 384})
    with pytest.raises(InputError, match="row 1500") as err:
        start_tracker(ray_local, cfg, str(tmp_path / "bad"))
    assert "\n" not in str(err.value)


def test_generate_without_schedule_embeds_the_input_into_its_output_for_the_tracker(ray_local, tmp_path,
                                                                                   sentence_model, monkeypatch):
    """`synalign generate` without a schedule: the checked input is embedded file to file into the output's
    _embeddings folder (the in-memory encoder path fails if called), which the tracker actor reads; every group
    shows rows of its own label, by their ids, and the folder holds the encoder's embeddings of the input."""
    import pyarrow.parquet as pq

    from synalign_ray import io
    from synalign_ray.config import build_config
    from synalign_ray.real_input import plan_input
    from synalign_ray.run_folder import RunFolder
    from synalign_ray.stages import embed
    from synalign_ray.stages.generate import embed_for_tracker
    from synalign_ray.stages.select import start_tracker
    from tests.conftest import sample_rows

    def driver_must_not(*args, **kwargs):
        raise AssertionError("rows embedded in memory")

    monkeypatch.setattr(embed, "embed_rows", driver_must_not)
    rows = sample_rows("sst2_dev.parquet", 120, seed=1)
    pq.write_table(rows, tmp_path / "real.parquet", row_group_size=50)
    cfg = build_config({}, [f"data.path={tmp_path / 'real.parquet'}", "selection.k=4", "selection.max_groups=6",
                            "embedding.num_actors=1", "embedding.batch_size=32"])
    plan = plan_input(cfg.data, cfg.storage)
    out = io.resolve(str(tmp_path / "generated"))
    path = embed_for_tracker(cfg, out, plan)
    assert path == out.join("_embeddings").url
    tracker, facts = start_tracker(ray_local, cfg, path)
    groups = ray_local.get(tracker.next_groups.remote(100, with_texts=True))
    ray_local.kill(tracker)
    assert facts["rows"] == 120 and len(groups) == facts["groups_planned"] == 6
    texts, labels = rows.column("text").to_pylist(), rows.column("label").to_pylist()
    for g in groups:
        assert g["demo_texts"] == [texts[i] for i in g["demo_row_ids"]] and len(g["demo_row_ids"]) == 5
        assert {str(labels[i]) for i in g["demo_row_ids"]} == {str(g["label"])}
    stored = RunFolder(out.join("_embeddings")).read()
    assert stored.column(io.ROW_ID).to_pylist() == list(range(120))
    np.testing.assert_allclose(io.embeddings_from_arrow(stored.column(io.EMBEDDING)),
                               sentence_model.encode(texts, normalize_embeddings=True), rtol=0, atol=1e-5)


def test_select_command_with_shard_actors_reads_the_rows_in_the_tracker_actor(ray_local, real_embeddings,
                                                                             same_schedule, tmp_path, monkeypatch):
    """`synalign select` with selection.num_shards = 2: the tracker actor reads the embeddings folder (the driver's
    own reader fails if called) and the schedule equals the in-process one; a bad input there is one InputError."""
    import pyarrow as pa

    from synalign_ray import io
    from synalign_ray.config import build_config
    from synalign_ray.errors import InputError
    from synalign_ray.stages import select
    from synalign_ray.stages.common import write_table

    rows, emb = real_embeddings("agnews_dev.parquet", N_ROWS, 0)
    ids = np.arange(N_ROWS, dtype=np.int64) * 3  # sparse ids, as a sampled input has
    embedded = rows.append_column(io.ROW_ID, pa.array(ids)).append_column(io.EMBEDDING, io.embeddings_to_arrow(emb))
    cfg = build_config({}, [f"output.path={tmp_path / 'emb'}", "output.rows_per_part=250"])
    write_table(embedded, io.resolve(str(tmp_path / "emb")), cfg, {"kind": "embeddings", "dim": 384})
    cfg = build_config({}, [f"output.path={tmp_path / 'schedule'}", "selection.max_groups=30",
                            "selection.engine=partitioned", "selection.partition_rows=60",
                            "selection.inducing_rows=32", "selection.num_shards=2", "selection.num_cpus_per_shard=0.25"])

    def driver_must_not(*args, **kwargs):
        raise AssertionError("the driver read the rows")

    monkeypatch.setattr(select, "read_embedded", driver_must_not)
    manifest = select.select_stage(cfg, str(tmp_path / "emb"))
    assert manifest["real_rows"] == N_ROWS and manifest["groups"] == 30
    same_schedule(select.read_schedule(str(tmp_path / "schedule"), cfg),
                  build_schedule(cfg.selection, emb, rows.column("label").to_pylist(), ids))

    # every label too small for one group (k + 1 = 31 rows): found by the tracker actor, raised here as itself
    small = embedded.slice(0, 12)
    write_table(small, io.resolve(str(tmp_path / "small")), cfg, {"kind": "embeddings", "dim": 384})
    strict = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"k": 30})})
    strict.output.path = str(tmp_path / "schedule_small")
    with pytest.raises(InputError) as err:
        select.select_stage(strict, str(tmp_path / "small"))
    assert "\n" not in str(err.value) and not io.exists(io.resolve(str(tmp_path / "schedule_small")).join(io.MANIFEST))
