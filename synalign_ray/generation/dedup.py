"""Near-duplicate removal by embedding cosine: within each demonstration group, a row whose cosine similarity
to an earlier kept row of the same group exceeds the threshold is dropped. Pure numpy."""

from __future__ import annotations

import numpy as np


def near_duplicate_keep(embeddings: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean keep-mask over rows (first occurrence wins, in row order). Rows of one group come from one summary,
    which is where near-copies arise; comparing within groups keeps the cost linear in the number of groups."""
    emb = np.asarray(embeddings, dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    keep = np.ones(len(emb), dtype=bool)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        kept: list[int] = []
        for r in rows:
            if kept and float((emb[kept] @ emb[r]).max()) > threshold:
                keep[r] = False
            else:
                kept.append(r)
    return keep
