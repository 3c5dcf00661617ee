"""IMP-Loss importance weights (Kuo et al. 2024): P_real(y|x) / P_syn(y|x) from two light classifiers on the
embeddings, a quality checker trained on the real rows and a diversity checker trained on the synthetic rows.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

# A floor on the diversity checker's probability keeps one confidently wrong row from an unbounded weight.
_MIN_PROBABILITY = 1e-3


def label_probability(model: LogisticRegression, emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P(label_j | x_j) under `model`; 0 for labels the model never saw."""
    proba = model.predict_proba(emb)
    column = {c: i for i, c in enumerate(model.classes_)}
    out = np.zeros(len(labels))
    known = np.array([lab in column for lab in labels], dtype=bool)
    idx = np.array([column[lab] for lab in labels[known]], dtype=np.int64)
    out[known] = proba[np.flatnonzero(known), idx]
    return out


def _checker(emb: np.ndarray, labels: np.ndarray, seed: int) -> LogisticRegression:
    return LogisticRegression(max_iter=1000, random_state=seed).fit(emb, labels)


def importance_weights(real_emb: np.ndarray, real_labels: np.ndarray, syn_emb: np.ndarray,
                       syn_labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per synthetic row P̂_real(y|x) / max(P̂_syn(y|x), 1e-3); mean over rows is reported, not forced to 1."""
    real_labels = np.asarray(real_labels).astype(str)
    syn_labels = np.asarray(syn_labels).astype(str)
    if np.unique(real_labels).size < 2 or np.unique(syn_labels).size < 2:
        raise ValueError("importance weights need at least two labels in both the real and the synthetic rows")
    quality = _checker(real_emb, real_labels, seed)
    diversity = _checker(syn_emb, syn_labels, seed)
    p_real = label_probability(quality, syn_emb, syn_labels)
    p_syn = label_probability(diversity, syn_emb, syn_labels)
    return p_real / np.maximum(p_syn, _MIN_PROBABILITY)
