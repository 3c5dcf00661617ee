"""Selection engines and scopes on real AG News / SST-2 rows, each against an exact reference: partitions by bisection,
the partitioned engine vs independent exact GPs per partition, per-label vs shared GP state, the density rule, the
state budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synalign_ray.config import SelectionConfig, build_config, load_config
from synalign_ray.errors import ConfigError, InputError
from synalign_ray.metrics import knn_radii, knn_radius_coverage
from synalign_ray.selection.blocks import RowBlock, bisect, block_ranges
from synalign_ray.selection.gp import TIE_TOLERANCE, IncrementalGP, cross_kernel
from synalign_ray.selection.partitions import INDUCING_JITTER, _descending, grown_inverse
from synalign_ray.selection.schedule import build_schedule
from synalign_ray.selection.plan import DENSITY_BANDWIDTH, DENSITY_POWER, resolve_engine, state_bytes_needed
from synalign_ray.selection.tracker import SelectionTracker

N_ROWS = 1200
TAU = 0.6


@pytest.fixture(scope="module")
def agnews(real_embeddings):
    rows, emb = real_embeddings("agnews_dev.parquet", N_ROWS, 0)
    return emb, rows.column("label").to_pylist(), np.arange(N_ROWS, dtype=np.int64)


def cfg(**kw) -> SelectionConfig:
    return SelectionConfig(**{"tau": TAU, "max_groups": 16, "budget": "average", "threshold": 1e-6, **kw})


def bisect_partitions(emb: np.ndarray, rows: np.ndarray, max_rows: int, seed: int) -> list[np.ndarray]:
    """blocks.bisect over one in-process block holding all rows."""
    return bisect([RowBlock(emb)], np.array([0]), rows, max_rows, seed)


def test_bisection_covers_every_row_once_in_bounded_parts(agnews):
    emb, _, _ = agnews
    rows = np.arange(3, N_ROWS, 2)  # 599 rows
    parts = bisect_partitions(emb, rows, 100, seed=0)
    assert np.array_equal(np.sort(np.concatenate(parts)), rows)
    assert all(50 < len(p) <= 100 for p in parts) and all((np.diff(p) > 0).all() for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, bisect_partitions(emb, rows, 100, seed=0)))
    # compact: rows sit closer to their own part's centroid than to the others' on average
    centroids = np.stack([emb[p].mean(axis=0) for p in parts])
    own = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    dist = ((emb[np.concatenate(parts)][:, None, :] - centroids[None]) ** 2).sum(-1)
    assert (dist.argmin(axis=1) == own).mean() > 0.6


@pytest.mark.parametrize("num_blocks", [2, 5])
def test_rows_cut_into_blocks_give_the_same_partitions_and_schedule(agnews, num_blocks):
    # The tracker built from blocks (what shard actors read from a folder) holds positions only; the bisection's
    # sums go chunk by chunk and projections row by row, so any cut into blocks gives the one-block partitions and,
    # with density weights and inducing rows gathered from the blocks, the one-array schedule.
    emb, labels, ids = agnews
    chunk = 128
    ranges = block_ranges(N_ROWS, num_blocks, chunk)
    assert len(ranges) == num_blocks and all(lo % chunk == 0 for lo, _ in ranges) and ranges[-1][1] == N_ROWS
    blocks = [RowBlock(emb[lo:hi], lo, chunk_rows=chunk) for lo, hi in ranges]
    starts = np.array([lo for lo, _ in ranges])
    one = bisect([RowBlock(emb, chunk_rows=chunk)], np.array([0]), ids, 100, 0)
    many = bisect(blocks, starts, ids, 100, 0)
    assert len(one) == len(many) > 8 and all(np.array_equal(a, b) for a, b in zip(one, many))
    config = cfg(engine="partitioned", partition_rows=120, max_groups=24, inducing_rows=32, rule="density_weighted")
    whole = SelectionTracker(emb, labels, ids, config).next_groups(100)
    assert len(whole) == 24
    assert SelectionTracker(blocks, labels, ids, config, num_shards=2).next_groups(100) == whole


def test_a_block_names_a_bad_row_by_its_position(agnews):
    emb, _, _ = agnews
    bad = emb[200:300].copy()
    bad[17] = 0.0
    with pytest.raises(InputError, match="embedding of row 217 is all zeros"):
        RowBlock(bad, 200)


@pytest.mark.parametrize("scope", ["per_label", "shared"])
def test_one_partition_gives_the_exact_schedule(agnews, scope, same_schedule):
    emb, labels, ids = agnews
    exact = build_schedule(cfg(engine="exact", gp_scope=scope), emb, labels, ids)
    one_part = build_schedule(cfg(engine="partitioned", gp_scope=scope, partition_rows=N_ROWS), emb, labels, ids)
    assert exact.equals(one_part)
    same_schedule(exact, one_part)


def test_partitioned_schedule_equals_independent_exact_gps_per_partition(agnews):
    emb, labels, ids = agnews
    config = cfg(engine="partitioned", partition_rows=120, max_groups=24, inducing_rows=0)
    tracker = SelectionTracker(emb, labels, ids, config)
    assert tracker.engine == "partitioned" and tracker.n_partitions > 8
    label_arr = np.asarray(labels)
    parts = [p for l in sorted(set(labels)) for p in bisect_partitions(emb, np.flatnonzero(label_arr == l), 120, 0)]
    part_of = np.empty(N_ROWS, dtype=np.int64)
    for pid, p in enumerate(parts):
        part_of[p] = pid
    rank = np.random.default_rng(0).permutation(N_ROWS)
    observed = {pid: [] for pid in range(len(parts))}
    issued = np.zeros(N_ROWS, dtype=bool)
    for record in tracker.next_groups(100):
        group = np.asarray(record["demo_row_ids"])
        pid = part_of[group[0]]
        assert (part_of[group] == pid).all(), "a group stays inside its anchor's partition"
        # reference: each of the label's partitions as its own exact GP over the groups it received, from scratch
        best, tied = -np.inf, []
        for q, rows in enumerate(parts):
            if label_arr[rows[0]] != record["label"] or (~issued[rows]).sum() < config.k + 1:
                continue
            gp = IncrementalGP(emb[rows], "exponential", TAU, 1.0, sync_rows=1)
            for g in observed[q]:
                gp.add(np.searchsorted(rows, g))
            variance = np.where(issued[rows], -np.inf, gp.variance)
            top = variance.max()
            if top > best + TIE_TOLERANCE:
                best, tied = top, []
            if top >= best - TIE_TOLERANCE:
                tied.extend(rows[variance >= top - TIE_TOLERANCE])
        assert group[0] == min(tied, key=lambda r: rank[r])
        assert record["variance_at_selection"] == pytest.approx(best, abs=1e-6)
        observed[pid].append(group)
        issued[group] = True


def test_per_label_gp_sees_only_its_own_label_and_shared_sees_all(agnews):
    emb, labels, ids = agnews
    label_arr = np.asarray(labels)
    for scope in ("per_label", "shared"):
        schedule = build_schedule(cfg(gp_scope=scope, max_groups=12), emb, labels, ids).to_pylist()
        for i, record in enumerate(schedule):
            before = [np.asarray(r["demo_row_ids"]) for r in schedule[:i]]
            rows = np.flatnonzero(label_arr == record["label"]) if scope == "per_label" else np.arange(N_ROWS)
            gp = IncrementalGP(emb[rows], "exponential", TAU, 1.0)
            for g in before:
                if scope == "shared" or label_arr[g[0]] == record["label"]:
                    gp.add(np.searchsorted(rows, g))
            anchor = np.searchsorted(rows, record["anchor_row_id"])
            assert record["variance_at_selection"] == pytest.approx(gp.variance[anchor], abs=1e-6)


def test_per_label_state_covers_each_label_better_when_labels_share_the_space(agnews):
    # Two labels over the same region (label b: label a's rows moved by a 0.01 jitter), 10 groups each. A shared GP
    # lets a's groups lower b's variances where b's prompts never went, so the labels split the space between them;
    # one GP per label lets each cover all of it. Under the density rule (measured here: 0.505 / 0.505 per label vs
    # 0.402 / 0.428 shared); under max-variance the two scopes measured within noise of each other.
    emb, _, _ = agnews
    a = emb[:600]
    jitter = np.random.default_rng(3).standard_normal(a.shape).astype(np.float32) * np.float32(0.01 / np.sqrt(384))
    b = (a + jitter) / np.linalg.norm(a + jitter, axis=1, keepdims=True)
    points, labels = np.concatenate([a, b]), ["a"] * 600 + ["b"] * 600
    coverage = {}
    for scope in ("per_label", "shared"):
        schedule = build_schedule(cfg(gp_scope=scope, max_groups=20, k=4, rule="density_weighted"), points, labels,
                                  np.arange(1200)).to_pylist()
        for label, offset in (("a", 0), ("b", 600)):
            own = points[offset:offset + 600]
            chosen = [d - offset for r in schedule if r["label"] == label for d in r["demo_row_ids"]]
            coverage[scope, label] = knn_radius_coverage(own, own[chosen], 5, knn_radii(own, 5))
    for label in ("a", "b"):
        assert coverage["per_label", label] > coverage["shared", label] + 0.05, coverage


def test_density_rule_anchor_is_the_argmax_of_variance_times_density(agnews):
    emb, labels, ids = agnews
    schedule = build_schedule(cfg(rule="density_weighted", max_groups=8), emb, labels, ids).to_pylist()
    label_arr = np.asarray(labels)
    issued = np.zeros(N_ROWS, dtype=bool)
    for i, record in enumerate(schedule):
        rows = np.flatnonzero(label_arr == record["label"])
        sample = np.sort(np.random.default_rng(0).choice(rows, size=min(1000, len(rows)), replace=False))
        density = cross_kernel(emb[rows], emb[sample], "exponential", DENSITY_BANDWIDTH * TAU).mean(axis=1)
        weight = (density / density.max()) ** DENSITY_POWER
        gp = IncrementalGP(emb[rows], "exponential", TAU, 1.0)
        for r in schedule[:i]:
            if r["label"] == record["label"]:
                gp.add(np.searchsorted(rows, r["demo_row_ids"]))
        score = np.where(issued[rows], -np.inf, gp.variance * weight)
        anchor = np.searchsorted(rows, record["anchor_row_id"])
        assert score[anchor] >= score.max() - 1e-5  # float32 density against this float64 one
        assert record["variance_at_selection"] == pytest.approx(gp.variance[anchor], abs=1e-6)
        issued[record["demo_row_ids"]] = True
    assert len({r["anchor_row_id"] for r in schedule} & {r["anchor_row_id"] for r in build_schedule(
        cfg(max_groups=8), emb, labels, ids).to_pylist()}) < 8, "the rule changes anchors"


def test_state_budget_chooses_the_engine_and_refuses_with_the_arithmetic(agnews):
    emb, labels, ids = agnews
    # per label: 4 labels × ~300 rows × 40 selected rows × 4 B ≈ 0.19 MB exact
    small = 0.1 / 1024
    auto = SelectionTracker(emb, labels, ids, cfg(max_state_gib=small, partition_rows=100, inducing_rows=0))
    assert auto.engine == "partitioned" and auto.progress()["engine"] == "partitioned"
    # a unit cut into partitions adds n·M float32 features and |S|·M float64 of h (M ≤ n); a unit in one adds none
    assert state_bytes_needed([3000, 500], [400, 50], "partitioned", 1000, 256) == (
        4 * 1.25 * (1000 * 400 + 500 * 50) + (4 * 3000 + 8 * 400) * 256)
    assert SelectionTracker(emb, labels, ids, cfg()).engine == "exact"
    with pytest.raises(ConfigError, match=r"exact needs 192,000 B = 0.00 GiB .*4 GP scope unit.*"
                                          r"max_state_gib is 9.76563e-05 GiB = 104,857 B"):
        SelectionTracker(emb, labels, ids, cfg(engine="exact", max_state_gib=small))
    with pytest.raises(ConfigError, match="selection.engine=partitioned needs .*partition_rows=100"):
        SelectionTracker(emb, labels, ids, cfg(max_state_gib=1e-6, partition_rows=100))


def test_huge_selection_is_refused_before_any_allocation():
    # the case: 242,456 rows, 8,000 groups of 10 under one shared GP is 72 GiB; refused from the sizes alone
    rows = 242_456
    emb = np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)
    config = cfg(engine="exact", gp_scope="shared", max_groups=8000)
    with pytest.raises(ConfigError, match=r"needs 77,585,920,000 B = 72.26 GiB .*max_state_gib is 4 GiB"):
        SelectionTracker(emb, None, np.arange(rows), config)
    # auto takes the partitioned engine there: at most 2,000 rows × 80,000 selected × 4 B = 0.6 GiB
    assert resolve_engine(config.model_copy(update={"engine": "auto"}), [rows], [80_000]) == "partitioned"


def test_production_config_selection_fits_its_state_budget():
    # the README's production arithmetic: a 2M-query log, one unlabelled unit, 50,000 groups of k+1 rows
    cfg = load_config(Path(__file__).resolve().parents[2] / "jobs/configs/queries_production.yaml").selection
    rows, selected = 2_000_000, cfg.max_groups * (cfg.k + 1)
    assert cfg.engine == "partitioned" and resolve_engine(cfg, [rows], [selected]) == "partitioned"
    needed = state_bytes_needed([rows], [selected], "partitioned", cfg.partition_rows, cfg.inducing_rows)
    assert needed == 4 * 1.25 * cfg.partition_rows * selected + (4 * rows + 8 * selected) * cfg.inducing_rows
    assert needed <= cfg.max_state_gib * 2**30
    # the README's per-shard figure: a share of the state plus the shard's rows, twice while it receives them
    per_shard = (needed + 2 * rows * 384 * 4) / cfg.num_shards
    assert cfg.num_shards == 4 and 3.2 * 2**30 < per_shard < 3.4 * 2**30


def test_partition_rows_must_hold_two_groups():
    with pytest.raises(ConfigError, match="partition_rows=15 must be at least"):
        build_config({}, ["selection.partition_rows=15"])


def test_unlabelled_rows_partition_too(agnews):
    emb, _, ids = agnews
    tracker = SelectionTracker(emb, None, ids, cfg(engine="partitioned", partition_rows=300, max_groups=10))
    parts = bisect_partitions(emb, ids, 300, 0)
    part_of = {int(r): pid for pid, p in enumerate(parts) for r in p}
    groups = tracker.next_groups(100)
    assert tracker.n_partitions == len(parts) == 4 and len(groups) == 10
    assert all(g["label"] is None and len({part_of[d] for d in g["demo_row_ids"]}) == 1 for g in groups)
    assert tracker.progress()["labels_skipped"] == {}


def pic_variance(points: np.ndarray, parts: list[np.ndarray], observed: np.ndarray, inducing: np.ndarray,
                 noise: float) -> np.ndarray:
    """Exact GP posterior variance under the PIC prior from scratch (float64, dense): κ within a partition, the
    Nyström Q = κ_xZ (κ_ZZ + jitter)⁻¹ κ_Zx across partitions."""
    k = cross_kernel(points, points, "exponential", TAU)
    k_xz = cross_kernel(points, inducing, "exponential", TAU)
    q = k_xz @ np.linalg.solve(cross_kernel(inducing, inducing, "exponential", TAU)
                               + INDUCING_JITTER * np.eye(len(inducing)), k_xz.T)
    part_of = np.empty(len(points), dtype=np.int64)
    for pid, p in enumerate(parts):
        part_of[p] = pid
    prior = np.where(part_of[:, None] == part_of[None, :], k, q)
    if len(observed) == 0:
        return np.diag(prior).copy()
    k_so = prior[:, observed]
    return np.diag(prior) - np.einsum("ij,ji->i", k_so, np.linalg.solve(prior[np.ix_(observed, observed)]
                                                                          + noise * np.eye(len(observed)), k_so.T))


@pytest.mark.parametrize("rule, threshold", [("max_variance", 1e-6), ("density_weighted", 1e-6),
                                             ("density_weighted", 0.45)])
def test_pic_engine_anchors_are_the_argmax_of_the_dense_pic_posterior(agnews, rule, threshold):
    # unlabelled 600 rows, 4 partitions of 150, 40 inducing rows: every anchor and its variance against the PIC
    # GP recomputed from scratch after every group (only the lazy refreshes and the incremental state differ); with
    # a threshold that fires, the selection stops exactly when no row that can still anchor a group reaches the
    # stop level (the density rule settles that side of the level from the rows its weighted search evaluates)
    emb, _, _ = agnews
    points, ids = emb[:600] / np.linalg.norm(emb[:600], axis=1, keepdims=True), np.arange(600)
    config = cfg(engine="partitioned", partition_rows=150, inducing_rows=40, max_groups=30, rule=rule,
                 threshold=threshold)
    tracker = SelectionTracker(points, None, ids, config)
    parts = bisect_partitions(points, ids, 150, 0)
    inducing = points[np.sort(np.random.default_rng(0).choice(600, size=40, replace=False))]
    weights = np.ones(600)
    if rule == "density_weighted":  # the tracker's static density weights (tested against their formula above)
        for part in tracker._shards[0]._parts.values():
            weights[part.rows] = part.weights
    assert tracker.n_partitions == len(parts) == 4
    observed, issued = [], np.zeros(600, dtype=bool)

    def largest_anchorable(variance: np.ndarray) -> float:  # rows of partitions that can still form a group
        return max((variance[p][~issued[p]].max() for p in parts if np.count_nonzero(~issued[p]) > config.k),
                   default=-np.inf)

    records = tracker.next_groups(100)
    for record in records:
        variance = pic_variance(points, parts, np.asarray(observed, dtype=np.int64), inducing, 1.0)
        assert largest_anchorable(variance) >= tracker.stop_variance
        score = np.where(issued, -np.inf, variance * weights)
        anchor = record["anchor_row_id"]
        assert score[anchor] >= score.max() - 1e-5
        assert record["variance_at_selection"] == pytest.approx(variance[anchor], abs=1e-5)
        observed.extend(record["demo_row_ids"])
        issued[record["demo_row_ids"]] = True
    variance = pic_variance(points, parts, np.asarray(observed, dtype=np.int64), inducing, 1.0)
    if threshold > 1e-3:
        assert 5 < len(records) < 30, "the stopping rule fires"
        assert largest_anchorable(variance) < tracker.stop_variance
    else:
        assert len(records) == 30


@pytest.mark.parametrize("labelled, scope, inducing, rule", [
    (False, "per_label", 40, "max_variance"), (False, "per_label", 40, "density_weighted"),
    (True, "shared", 40, "max_variance"), (True, "shared", 0, "max_variance"), (True, "per_label", 40, "max_variance")])
def test_shards_in_process_give_the_one_shard_schedule_up_to_the_stop(agnews, same_schedule, labelled, scope,
                                                                      inducing, rule):
    # Spread over 2 and 3 shards, each shard answers for its own partitions (refreshing its stale ones itself) and,
    # where a unit spans shards, is asked for its new answer with each group (the block of h passed on, the anchor's
    # partition left stale): the same groups, and the same stop (the threshold fires before max_groups), as one
    # shard evaluating every partition.
    emb, labels, ids = agnews
    # the density rule leaves sparse rows above the level longer: a higher threshold makes it fire
    config = cfg(engine="partitioned", partition_rows=150, inducing_rows=inducing, max_groups=100,
                 threshold=0.35 if rule == "max_variance" else 0.44, gp_scope=scope, rule=rule)
    schedules = []
    for num_shards in (1, 2, 3):
        tracker = SelectionTracker(emb, labels if labelled else None, ids, config, num_shards=num_shards)
        schedules.append(tracker.next_groups(200))
        assert tracker.progress()["done"]
    assert 10 < len(schedules[0]) < 100, "the stopping rule fires"
    same_schedule(schedules[0], schedules[1])
    same_schedule(schedules[0], schedules[2])


def test_pic_with_every_row_inducing_is_the_exact_gp(agnews):
    # Q = κ when Z holds every row of the unit: the PIC prior is the exact kernel, so after the PIC schedule's groups
    # every partition's variances are the exact GP's over the label's rows given the same observed rows
    emb, labels, ids = agnews
    points = emb[:400] / np.linalg.norm(emb[:400], axis=1, keepdims=True)
    labels = np.asarray(labels[:400])
    tracker = SelectionTracker(points, labels.tolist(), ids[:400],
                               cfg(engine="partitioned", partition_rows=60, inducing_rows=400, max_groups=12))
    records = tracker.next_groups(100)
    assert tracker.n_partitions > 4 and len(records) == 12
    for label in set(labels):
        rows = np.flatnonzero(labels == label)
        observed = np.searchsorted(rows, [d for r in records if r["label"] == label for d in r["demo_row_ids"]])
        k_so = cross_kernel(points[rows], points[rows[observed]], "exponential", TAU)
        exact = 1.0 - np.einsum("ij,ji->i", k_so, np.linalg.solve(k_so[observed] + np.eye(len(observed)), k_so.T))
        for shard in tracker._shards:
            for part in shard._parts.values():
                if part.labels[0] == label:
                    local = np.arange(part.rows.shape[0])
                    np.testing.assert_allclose(shard._variance(part, local), exact[np.searchsorted(rows, part.rows)],
                                               atol=1e-5)


@pytest.mark.parametrize("count", [1, 5, 16, 40, 64, 200])
def test_descending_head_is_the_head_of_the_stable_sort(count):
    # the lazy top's order: values with many ties (a partition's bounds start at 1 and repeat), the head that
    # _descending returns is the stable argsort's, at least `count` long, every tie of its last value included
    rng = np.random.default_rng(3)
    for values in (rng.integers(0, 12, size=64).astype(float), rng.random(64), np.ones(64)):
        head = _descending(values, count)
        full = np.argsort(-values, kind="stable")
        assert head.shape[0] >= min(count, 64)
        np.testing.assert_array_equal(head, full[:head.shape[0]])
        assert head.shape[0] == 64 or values[full[head.shape[0]]] < values[head[-1]]


def test_a_shard_with_no_group_left_holds_no_block_of_h_back(agnews):
    # 600 unlabelled rows in 4 partitions of 150 on 2 shards, 60 groups of 10: every row is used, and one shard runs
    # out of groups before the other. Its answer is None from then on and it is never asked again, so the blocks of h
    # the coordinator keeps for the unit's shards stay at most the last group's (before: one more per group).
    emb, _, _ = agnews
    points, ids = emb[:600] / np.linalg.norm(emb[:600], axis=1, keepdims=True), np.arange(600)
    tracker = SelectionTracker(points, None, ids, cfg(engine="partitioned", partition_rows=150, inducing_rows=40,
                                                      max_groups=60), num_shards=2)
    finished_early = False
    for _ in range(60):
        assert len(tracker.next_groups(1)) == 1
        finished_early |= None in tracker._summaries[""].values()
        assert len(tracker._blocks[0]) <= 1
    assert finished_early, "a shard ran out of groups while the other still had some"
    assert tracker.next_groups(1) == []


@pytest.mark.parametrize("batch", [1, 3, 40])
def test_grown_inverse_equals_the_inverse_of_the_grown_matrix(batch):
    # Λ = I + Σ BᵀB over 240 blocks of 10 rows of h's scale, kept as Λ⁻¹ by Woodbury steps `batch` blocks at a
    # time (a shard applies every other shard's blocks at once when asked): against inverting Λ itself
    rng = np.random.default_rng(batch)
    m = 64
    lam, inverse = np.eye(m), np.eye(m)
    blocks = [rng.normal(scale=0.3, size=(10, m)) for _ in range(240)]
    for start in range(0, len(blocks), batch):
        rows = np.concatenate(blocks[start:start + batch])
        lam += rows.T @ rows
        inverse = grown_inverse(inverse, rows)
    reference = np.linalg.inv(lam)
    assert np.abs(reference - np.eye(m)).max() > 0.9 and np.linalg.eigvalsh(lam).max() > 100  # far from where it began
    np.testing.assert_allclose(inverse, reference, rtol=0, atol=1e-14)  # its entries are ≈ 5e-3 here
    np.testing.assert_array_equal(inverse, inverse.T)
