"""IMP-Loss importance weights on real MiniLM embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from synalign_ray.alignment.importance import importance_weights


def test_identical_real_and_synthetic_sets_give_weight_one(real_embeddings):
    rows, emb = real_embeddings("sst2_train.parquet", 300, 2)
    labels = np.asarray(rows.column("label").to_pylist())
    # Both checkers are the same model trained on the same rows, so P_real(y|x) / P_syn(y|x) = 1 exactly.
    np.testing.assert_array_equal(importance_weights(emb, labels, emb, labels, seed=0), np.ones(len(labels)))


def test_rows_with_flipped_labels_get_lower_weight(real_embeddings):
    rows, emb = real_embeddings("sst2_train.parquet", 300, 2)
    labels = np.asarray(rows.column("label").to_pylist())
    syn_rows, syn_emb = real_embeddings("sst2_dev.parquet", 300, 2)
    syn_labels = np.asarray(syn_rows.column("label").to_pylist())
    flipped = np.random.default_rng(0).random(len(syn_labels)) < 0.3
    syn_labels = np.where(flipped, np.where(syn_labels == "positive", "negative", "positive"), syn_labels)
    w = importance_weights(emb, labels, syn_emb, syn_labels, seed=0)
    assert np.all(w >= 0)
    # The quality checker (real rows) disagrees with a flipped label; the diversity checker partly learned it.
    # Measured on these rows: median 0.74 for flipped rows against 1.00 for the rest (light, regularised models).
    assert np.median(w[flipped]) < 0.85 * np.median(w[~flipped])


def test_importance_needs_two_labels_on_each_side(real_embeddings):
    _, emb = real_embeddings("sst2_train.parquet", 300, 2)
    with pytest.raises(ValueError, match="two labels"):
        importance_weights(emb, np.array(["a"] * len(emb)), emb, np.array(["a", "b"] * (len(emb) // 2)))
