"""IMP-Loss importance weights (Kuo et al. 2024): P_real(y|x) / P_syn(y|x) from two light classifiers on the
embeddings, a quality checker trained on the real rows and a diversity checker trained on the synthetic rows.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

# A floor on the diversity checker's probability keeps one confidently wrong row from an unbounded weight.
_MIN_PROBABILITY = 1e-3
# Rows each checker trains on at most (a seeded sample of its side): the training set is gathered in one process, so
# this bounds it (2 × 20,000 × 384 × 4 B = 59 MiB with MiniLM) whatever the row counts; the weights themselves are
# computed where the rows are.
CHECKER_ROWS = 20_000


def label_probability(model: LogisticRegression, emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P(label_j | x_j) under `model`; 0 for labels the model never saw."""
    proba = model.predict_proba(emb)
    column = {c: i for i, c in enumerate(model.classes_)}
    out = np.zeros(len(labels))
    known = np.array([lab in column for lab in labels], dtype=bool)
    idx = np.array([column[lab] for lab in labels[known]], dtype=np.int64)
    out[known] = proba[np.flatnonzero(known), idx]
    return out


def checker_sample(n: int, seed: int) -> np.ndarray:
    """Sorted positions of the rows a checker trains on: all n rows up to CHECKER_ROWS, else a seeded sample."""
    if n <= CHECKER_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=CHECKER_ROWS, replace=False))


def fit_checkers(real_emb: np.ndarray, real_labels: np.ndarray, syn_emb: np.ndarray, syn_labels: np.ndarray,
                 seed: int = 0) -> tuple[LogisticRegression, LogisticRegression]:
    """(quality checker on the real rows, diversity checker on the synthetic rows)."""
    real_labels = np.asarray(real_labels).astype(str)
    syn_labels = np.asarray(syn_labels).astype(str)
    if np.unique(real_labels).size < 2 or np.unique(syn_labels).size < 2:
        raise ValueError("importance weights need at least two labels in both the real and the synthetic rows")
    return tuple(LogisticRegression(max_iter=1000, random_state=seed).fit(emb, labels)
                 for emb, labels in ((real_emb, real_labels), (syn_emb, syn_labels)))


def checker_weights(checkers: tuple[LogisticRegression, LogisticRegression], syn_emb: np.ndarray,
                    syn_labels: np.ndarray) -> np.ndarray:
    """Per synthetic row P̂_real(y|x) / max(P̂_syn(y|x), 1e-3) under fitted checkers (fit_checkers); row by row, so any
    slice of the rows gets its share of the whole set's weights."""
    quality, diversity = checkers
    syn_labels = np.asarray(syn_labels).astype(str)
    p_real = label_probability(quality, syn_emb, syn_labels)
    p_syn = label_probability(diversity, syn_emb, syn_labels)
    return p_real / np.maximum(p_syn, _MIN_PROBABILITY)


def importance_weights(real_emb: np.ndarray, real_labels: np.ndarray, syn_emb: np.ndarray,
                       syn_labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per synthetic row P̂_real(y|x) / max(P̂_syn(y|x), 1e-3), the checkers trained on all rows given; mean over rows
    is reported, not forced to 1."""
    return checker_weights(fit_checkers(real_emb, real_labels, syn_emb, syn_labels, seed), syn_emb, syn_labels)
