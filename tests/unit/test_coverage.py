"""Coverage metrics: convex-hull coverage on a grid with hand-computed areas, k-NN-radius coverage vs scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull
from sklearn.neighbors import NearestNeighbors

from synalign_ray.metrics import (convex_hull_coverage, coverage_profile, knn_radii, knn_radii_of, knn_radius_coverage,
                                  tsne_map)

# a 10 × 10 integer grid: its hull is [0, 9]², area 81; a 3 × 3 block around an inner point is a k = 8 group
GRID = np.array([(x, y) for x in range(10) for y in range(10)], dtype=np.float64)


def at(x: int, y: int) -> int:
    return 10 * x + y


def test_single_group_hull_area():
    curve = convex_hull_coverage(GRID, np.array([at(2, 2)]), k=8)
    assert curve[0] == pytest.approx(4 / 81)  # block [1, 3]²


def test_disjoint_hulls_add_their_areas():
    curve = convex_hull_coverage(GRID, np.array([at(2, 2), at(6, 6)]), k=8)
    np.testing.assert_allclose(curve, [4 / 81, 8 / 81])


def test_overlapping_hulls_merge_into_the_hull_of_their_union():
    # [1, 3] × [1, 3] and [2, 4] × [1, 3] overlap: merged hull [1, 4] × [1, 3] has area 6, not 4 + 4
    curve = convex_hull_coverage(GRID, np.array([at(2, 2), at(3, 2)]), k=8)
    np.testing.assert_allclose(curve, [4 / 81, 6 / 81])


def test_merged_hull_reaching_a_third_hull_merges_it_too():
    # blocks around (2,2) and (6,2) are apart; the block around (4,2) overlaps both: one hull [1, 7] × [1, 3]
    curve = convex_hull_coverage(GRID, np.array([at(2, 2), at(6, 2), at(4, 2)]), k=8)
    np.testing.assert_allclose(curve, [4 / 81, 8 / 81, 12 / 81])


def test_tsne_map_is_seeded(real_embeddings):
    _, emb = real_embeddings("agnews_dev.parquet", 300, 0)
    points = tsne_map(emb[:120], seed=0)
    assert points.shape == (120, 2) and np.array_equal(points, tsne_map(emb[:120], seed=0))


def test_hull_coverage_on_real_map_is_monotone_and_reaches_one(real_embeddings):
    _, emb = real_embeddings("agnews_dev.parquet", 300, 0)
    centred = emb - emb.mean(axis=0)
    points = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T  # 2-D PCA map: as real, far cheaper
    anchors = np.random.default_rng(0).choice(300, size=60, replace=False)
    curve = convex_hull_coverage(points, anchors, k=9)
    assert (np.diff(curve) >= -1e-12).all() and 0 < curve[-1] < 1
    first = points[np.argsort(((points - points[anchors[0]]) ** 2).sum(1))[:10]]
    assert curve[0] == pytest.approx(ConvexHull(first).volume / ConvexHull(points).volume)
    # one group holding every point is the whole hull
    assert convex_hull_coverage(points, anchors[:1], k=299)[0] == pytest.approx(1.0)


def test_knn_radii_equal_sklearn(real_embeddings):
    _, emb = real_embeddings("agnews_dev.parquet", 300, 0)
    distances, _ = NearestNeighbors(n_neighbors=6).fit(emb.astype(np.float64)).kneighbors()
    np.testing.assert_allclose(knn_radii(emb, 5), distances[:, 4], atol=1e-6)


def test_knn_radius_coverage_equals_brute_force(real_embeddings):
    _, emb = real_embeddings("agnews_dev.parquet", 300, 0)
    x = emb.astype(np.float64)
    radii = knn_radii(x, 5)
    selected = np.random.default_rng(1).choice(300, size=25, replace=False)
    # closed balls: a selected row that is exactly a row's 5th neighbour covers it (1e-9 absorbs rounding)
    brute = np.mean([min(np.linalg.norm(x[i] - x[j]) for j in selected) <= radii[i] + 1e-9 for i in range(300)])
    assert knn_radius_coverage(x, x[selected], 5) == pytest.approx(brute)
    assert knn_radius_coverage(x, x, 5) == 1.0
    assert knn_radius_coverage(x, x[:0], 5) == 0.0


def test_knn_radii_of_a_subset_at_several_k_equal_sklearn(real_embeddings):
    _, emb = real_embeddings("agnews_dev.parquet", 300, 0)
    rows = np.arange(0, 300, 7)
    distances, _ = NearestNeighbors(n_neighbors=21).fit(emb.astype(np.float64)).kneighbors(emb[rows].astype(np.float64))
    # sklearn's first neighbour of a query that is a fitted row is the row itself
    np.testing.assert_allclose(knn_radii_of(emb, rows, [1, 5, 20]), distances[:, [1, 5, 20]].T, atol=1e-6)
    np.testing.assert_allclose(knn_radii_of(emb, np.arange(300), [5])[0], knn_radii(emb, 5), atol=1e-12)


def test_coverage_profile_equals_brute_force(real_embeddings):
    _, emb = real_embeddings("agnews_dev.parquet", 300, 0)
    x = emb.astype(np.float64)
    rows = np.arange(1, 300, 2)
    selected = np.random.default_rng(2).choice(300, size=30, replace=False)
    radii = knn_radii_of(x, rows, [1, 5])
    knn, fixed = coverage_profile(x, x[selected], rows, radii, [0.5, 1.0])
    nearest = np.array([min(np.linalg.norm(x[i] - x[j]) for j in selected) for i in rows])
    np.testing.assert_allclose(knn, [(nearest <= r + 1e-9).mean() for r in radii])
    np.testing.assert_allclose(fixed, [(nearest <= 0.5).mean(), (nearest <= 1.0).mean()])
    # over all rows, one k, it is knn_radius_coverage
    everything = np.arange(300)
    knn_all, _ = coverage_profile(x, x[selected], everything, knn_radii_of(x, everything, [5]), [])
    assert knn_all[0] == knn_radius_coverage(x, x[selected], 5)


def test_random_groups_are_same_label_neighbourhoods_of_distinct_anchors():
    from synalign_ray.metrics import random_groups

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(60, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array(["a", "b", "c"] * 20)
    groups = random_groups(emb, labels, 10, 4, seed=1)
    assert len({g[0] for g in groups}) == 10 and all(len(g) == 5 for g in groups)
    for g in groups:
        same = [i for i in range(60) if labels[i] == labels[g[0]] and i != g[0]]
        assert g[1:] == sorted(same, key=lambda i: -(emb[i] @ emb[g[0]]))[:4]
    assert random_groups(emb, labels, 10, 4, seed=1) == groups != random_groups(emb, labels, 10, 4, seed=2)
    assert all(len(g) == 5 for g in random_groups(emb, None, 10, 4, seed=1))
