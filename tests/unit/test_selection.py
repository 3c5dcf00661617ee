"""The selection tracker and `build_schedule` on real SST-2 / AG News rows: rule, determinism, resume, budgets, bad input."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from synalign_ray.config import SelectionConfig, build_config
from synalign_ray.errors import ConfigError, InputError
from synalign_ray.metrics import median_pairwise_distance
from synalign_ray.selection.gp import IncrementalGP
from synalign_ray.selection.schedule import build_schedule
from synalign_ray.selection.plan import AUTO_TAU_FACTOR, AUTO_TAU_SAMPLE, plan_quotas
from synalign_ray.selection.tracker import SelectionTracker

N_ROWS = 800


@pytest.fixture(scope="module")
def sst2(real_embeddings):
    rows, emb = real_embeddings("sst2_train.parquet", N_ROWS, 0)
    return emb, rows.column("label").to_pylist(), np.arange(1000, 1000 + N_ROWS, dtype=np.int64)


@pytest.fixture(scope="module")
def agnews(real_embeddings):
    rows, emb = real_embeddings("agnews_dev.parquet", N_ROWS, 0)
    return emb, rows.column("label").to_pylist(), np.arange(N_ROWS, dtype=np.int64)


def cfg(**kw) -> SelectionConfig:
    return SelectionConfig(**{"tau": 0.6, "max_groups": 12, **kw})


def test_schedule_table_columns_and_groups(sst2):
    emb, labels, ids = sst2
    table = build_schedule(cfg(k=4), emb, labels, ids)
    assert table.column_names == ["group_id", "label", "anchor_row_id", "demo_row_ids", "variance_at_selection", "tau"]
    assert table.schema.field("demo_row_ids").type == pa.list_(pa.int64())
    rows = table.to_pylist()
    assert [r["group_id"] for r in rows] == list(range(12))
    position = {int(i): p for p, i in enumerate(ids)}
    all_demo = [d for r in rows for d in r["demo_row_ids"]]
    assert len(all_demo) == len(set(all_demo)) == 12 * 5  # disjoint groups of k+1
    for r in rows:
        assert r["demo_row_ids"][0] == r["anchor_row_id"] and r["tau"] == 0.6
        assert {labels[position[d]] for d in r["demo_row_ids"]} == {r["label"]}


def test_first_group_is_argmax_and_cosine_neighbours(sst2):
    emb, labels, ids = sst2
    tracker = SelectionTracker(emb, None, ids, cfg(k=6))
    first, second = tracker.next_groups(2)
    # with every variance at the prior 1, the seeded permutation's first row is the anchor
    anchor = int(np.argmin(np.random.default_rng(0).permutation(N_ROWS)))
    assert first["anchor_row_id"] == ids[anchor] and first["variance_at_selection"] == 1.0
    similarity = emb @ emb[anchor]
    similarity[anchor] = -np.inf
    assert set(first["demo_row_ids"][1:]) == set(ids[np.argsort(-similarity)[:6]])
    # the second anchor is the argmax of the exact posterior after observing the first group
    gp = IncrementalGP(emb, "exponential", 0.6, 1.0)
    gp.add(np.searchsorted(ids, first["demo_row_ids"]))
    variance = np.where(np.isin(ids, first["demo_row_ids"]), -np.inf, gp.variance)
    assert second["anchor_row_id"] == ids[np.argmax(variance)]
    assert second["variance_at_selection"] == pytest.approx(variance.max(), abs=1e-6)


def test_unlabelled_variance_at_selection_never_increases(sst2):
    emb, _, ids = sst2
    v = build_schedule(cfg(k=9, max_groups=40), emb, None, ids).column("variance_at_selection").to_numpy()
    assert (np.diff(v) <= 1e-9).all() and v[-1] < v[0]


def test_same_inputs_same_schedule_and_seed_matters(sst2):
    emb, labels, ids = sst2
    a = build_schedule(cfg(), emb, labels, ids)
    assert a.equals(build_schedule(cfg(), emb, labels, ids))
    assert not a.equals(build_schedule(cfg(seed=1), emb, labels, ids))


@pytest.mark.parametrize("data", ["sst2", "agnews"])
def test_schedule_ids_do_not_depend_on_the_blas_thread_count(data, request, same_schedule):
    # A Ray actor gets one BLAS thread, a driver all cores; their float32 sums differ in the last bits.
    from threadpoolctl import threadpool_limits

    emb, labels, ids = request.getfixturevalue(data)
    config = cfg(max_groups=30, budget="average")
    with threadpool_limits(limits=1):
        single = build_schedule(config, emb, labels, ids)
    with threadpool_limits(limits=max(os.cpu_count() or 2, 2)):
        several = build_schedule(config, emb, labels, ids)
    same_schedule(single, several)


def test_a_restarted_tracker_selects_the_same_groups(agnews):
    # A resumed `generate` restarts the tracker and skips the groups its ledger holds: that needs the same groups,
    # whatever batch sizes the first run asked for.
    emb, labels, ids = agnews
    config = cfg(max_groups=20, budget="average")
    full = SelectionTracker(emb, labels, ids, config).next_groups(100)
    first = SelectionTracker(emb, labels, ids, config)
    head = first.next_groups(7)
    assert head + first.next_groups(100) == full == SelectionTracker(emb, labels, ids, config).next_groups(100)


def test_average_budget_gives_equal_groups_per_label(agnews):
    emb, labels, ids = agnews
    table = build_schedule(cfg(max_groups=12, budget="average"), emb, labels, ids)
    counts = {l: c for l, c in zip(*np.unique(table.column("label").to_pylist(), return_counts=True))}
    assert counts == {l: 3 for l in set(labels)}
    # turns go round the labels in sorted order
    assert table.column("label").to_pylist()[:4] == sorted(set(labels))


def test_proportional_budget_follows_label_frequency(sst2):
    emb, labels, ids = sst2
    max_groups = 15
    table = build_schedule(cfg(max_groups=max_groups, budget="proportional"), emb, labels, ids)
    got = dict(zip(*np.unique(table.column("label").to_pylist(), return_counts=True)))
    n_pos = labels.count("positive")
    share_pos = max_groups * n_pos / N_ROWS
    # largest remainder: the label with the larger fractional part takes the leftover group
    pos = int(share_pos) + (1 if share_pos % 1 > (max_groups - share_pos) % 1 else 0)
    assert got == {"positive": pos, "negative": max_groups - pos}


def test_plan_quotas_clamps_to_disjoint_groups_a_label_can_give():
    assert plan_quotas({"a": 25, "b": 100}, 40, "average", 4) == {"a": 5, "b": 20}
    assert plan_quotas({"a": 1, "b": 2}, 3, "proportional", 0) == {"a": 1, "b": 2}


def test_max_groups_beyond_possible_is_clamped(agnews):
    emb, labels, ids = agnews
    pick = np.flatnonzero(np.isin(labels, ["World", "Sports"]))[:47]
    sub_labels = [labels[i] for i in pick]
    table = build_schedule(cfg(k=4, max_groups=10_000, threshold=1e-6), emb[pick], sub_labels, ids[pick])
    expected = sum(sub_labels.count(l) // 5 for l in set(sub_labels))
    assert table.num_rows == expected


def test_threshold_stops_selection(sst2):
    emb, _, ids = sst2
    tracker = SelectionTracker(emb, None, ids, cfg(max_groups=500, threshold=0.6))
    # relative to the floor σ²/(1+σ²) = 1/2 of a row observed once
    assert tracker.stop_variance == pytest.approx(0.5 + 0.6 * 0.5)
    groups = tracker.next_groups(500)
    progress = tracker.progress()
    assert progress["done"] and progress["max_variance"] < tracker.stop_variance
    assert 0 < len(groups) < 500 and min(g["variance_at_selection"] for g in groups) >= tracker.stop_variance


def test_label_too_small_for_a_group_is_skipped_and_counted(sst2, caplog):
    emb, labels, ids = sst2
    rare = ["rare"] * 3 + labels[3:]
    with caplog.at_level("WARNING", logger="synalign_ray.selection.tracker"):
        tracker = SelectionTracker(emb, rare, ids, cfg(budget="average"))
    assert "label 'rare' has 3 rows" in caplog.text
    assert tracker.progress()["labels_skipped"] == {"rare": 3}
    groups = tracker.next_groups(100)
    # the other labels share the whole budget, and the rare rows are never issued
    assert len(groups) == 12 and {g["label"] for g in groups} == {"positive", "negative"}
    assert not set(ids[:3]) & {d for g in groups for d in g["demo_row_ids"]}


def test_noise_below_the_float32_floor_is_refused():
    with pytest.raises(ConfigError, match="selection.noise.*greater than or equal to 0.0001"):
        build_config({}, ["selection.noise=1e-6"])
    assert build_config({}, ["selection.noise=1e-4"]).selection.noise == 1e-4


def test_tau_auto_is_factor_times_median_distance(sst2):
    emb, labels, ids = sst2
    tracker = SelectionTracker(emb, labels, ids, cfg(tau="auto", seed=3))
    expected = AUTO_TAU_FACTOR * median_pairwise_distance(emb, AUTO_TAU_SAMPLE, 3)
    assert tracker.tau == pytest.approx(expected, rel=1e-6)
    assert tracker.next_groups(1)[0]["tau"] == tracker.tau


def test_string_row_ids_are_kept(sst2):
    emb, labels, _ = sst2
    ids = np.array([f"r{i}" for i in range(N_ROWS)])
    table = build_schedule(cfg(max_groups=2), emb, labels, ids)
    assert table.schema.field("anchor_row_id").type == pa.string()
    assert all(d.startswith("r") for d in table.column("demo_row_ids").to_pylist()[0])


@pytest.mark.parametrize("override,match", [
    ("selection.k=0", "selection.k"), ("selection.tau=0", "selection.tau"), ("selection.tau=-1", "selection.tau"),
    ("selection.threshold=0", "selection.threshold"), ("selection.threshold=1.5", "selection.threshold"),
    ("selection.max_groups=0", "selection.max_groups"), ("selection.kernel=matern", "selection.kernel"),
])
def test_bad_config_values_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        build_config({}, [override])


def test_bad_inputs_are_input_errors(sst2):
    emb, labels, ids = sst2
    nan = emb.copy()
    nan[17, 3] = np.nan
    with pytest.raises(InputError, match="NaN.*row 17"):
        build_schedule(cfg(), nan, labels, ids)
    with pytest.raises(InputError, match="empty label at row 5"):
        build_schedule(cfg(), emb, labels[:5] + [""] + labels[6:], ids)
    with pytest.raises(InputError, match="no label can form one group: label .* needs at least 10"):
        build_schedule(cfg(), emb[:12], labels[:12], ids[:12])
    with pytest.raises(InputError, match="not unique"):
        build_schedule(cfg(), emb, labels, np.zeros(N_ROWS, dtype=np.int64))
    with pytest.raises(InputError, match="labels has"):
        build_schedule(cfg(), emb, labels[:-1], ids)
    zero = emb.copy()
    zero[2] = 0.0
    with pytest.raises(InputError, match="row 2 is all zeros"):
        build_schedule(cfg(), zero, labels, ids)
    with pytest.raises(InputError, match="cannot form one group"):
        build_schedule(cfg(), emb[:5], None, ids[:5])
