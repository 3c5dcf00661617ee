"""Near-duplicate removal within groups, on real MiniLM embeddings."""

import numpy as np

from synalign_ray.generation.dedup import near_duplicate_keep


def test_near_copies_within_a_group_are_dropped(real_embeddings):
    _, emb = real_embeddings("sst2_dev.parquet", 40, 3)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -1)
    threshold = float(sims.max()) + 1e-3  # no two distinct real rows are this close
    rng = np.random.default_rng(0)
    copy = emb[[0, 1]] + rng.normal(scale=1e-3, size=(2, emb.shape[1])).astype(np.float32)
    rows = np.vstack([emb[:10], copy, emb[10:20]])
    groups = np.array([0] * 12 + [1] * 10)
    keep = near_duplicate_keep(rows, groups, threshold)
    assert keep.tolist() == [True] * 10 + [False, False] + [True] * 10
    # The same copies in another group are kept: comparison is within groups only.
    keep = near_duplicate_keep(rows, np.array([0] * 10 + [1, 1] + [2] * 10), threshold)
    assert keep.all()
    # A threshold of 1 keeps everything that is not an exact copy; -1 keeps one row per group.
    assert near_duplicate_keep(rows, groups, 1.0).all()
    assert near_duplicate_keep(rows, groups, -1.0).sum() == 2
