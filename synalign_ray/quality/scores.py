"""Set-level scores of generated rows against real rows, on embeddings: two-sample AUC, label agreement (and its
filter twin, own_label_probability), MAUVE, nearest-real cosine, near-copies, diversity, and the real-vs-real
ceiling. Pure numpy; scikit-learn and mauve-text (which imports torch when installed) load inside the functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from synalign_ray.quality.checks import words

# Set-level scores subsample each side to at most this many rows (seeded): the two-sample test, MAUVE's k-means
# and the label classifier grow faster than linearly, and at 5,000 rows a side the AUC's standard error is already
# about 0.006 (Hanley-McNeil at 0.5).
MAX_SCORED_ROWS = 5000


def _one_thread() -> Any:
    """BLAS and OpenMP (faiss) pools at one thread for the small iterative fits of the set-level scores: on shared
    cores their threads wait on each other. Measured on the 2-core machine beside vLLM: MAUVE of 120 vs 1,880 rows
    took 10 s on 2 threads and 0.5 s on one (same value), a 1,000 vs 1,000 two-sample AUC 3.2 s and 0.12 s.
    Call after importing the library, so that its pools are loaded and limited too."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def seeded_subsample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded sample of `size` of n rows (all rows when size ≥ n)."""
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def scored_sample(groups: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Positions of the rows a set is scored on: all of them when there are at most `size`, else whole groups
    (`groups`: each row's group id) in a seeded order until there are at least `size` rows, so that the
    within-group cosine still sees every row of a group. Sorted."""
    groups = np.asarray(groups)
    if len(groups) <= size:
        return np.arange(len(groups))
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(counts))
    chosen = order[:int(np.searchsorted(np.cumsum(counts[order]), size)) + 1]
    return np.flatnonzero(np.isin(inverse, chosen))


def near_copy_max_cosine(gen_emb: np.ndarray, reference_emb: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """For each generated row, the largest cosine to any reference row (rows L2-normalised).

    Blocks of chunk × chunk products keep memory at chunk² floats whatever the sizes (100k × 60k included).
    Near-copy rate: `(near_copy_max_cosine(gen, inputs) >= threshold).mean()`.
    """
    gen = np.asarray(gen_emb, dtype=np.float32)
    ref = np.asarray(reference_emb, dtype=np.float32)
    if ref.shape[0] == 0:
        raise ValueError("near_copy_max_cosine needs at least one reference row")
    best = np.full(gen.shape[0], -np.inf, dtype=np.float32)
    for i in range(0, gen.shape[0], chunk):
        rows = gen[i:i + chunk]
        for j in range(0, ref.shape[0], chunk):
            np.maximum(best[i:i + chunk], (rows @ ref[j:j + chunk].T).max(axis=1), out=best[i:i + chunk])
    return best


def two_sample_auc(a: np.ndarray, b: np.ndarray, seed: int, folds: int = 5,
                   max_rows: int = MAX_SCORED_ROWS) -> float:
    """Classifier two-sample test: ROC AUC of a logistic regression telling rows of `a` from rows of `b`, on
    held-out folds (StratifiedKFold, shuffled with the seed), averaged over folds.

    Both sides are first cut to the same size, min(len(a), len(b), max_rows), by seeded subsampling, so the AUC
    does not reward predicting the larger side. Identical rows stay in one fold (StratifiedGroupKFold): a weighted
    resample repeats rows, and a repeat seen in training would be recognised, not classified. 0.5: the classifier
    cannot tell them apart; 1.0: separated.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(seed)
    n = min(len(a), len(b), max_rows)
    if n < 2:
        raise ValueError(f"two_sample_auc needs at least 2 rows on each side, got {len(a)} and {len(b)}")
    x = np.vstack([np.asarray(a)[seeded_subsample(len(a), n, rng)], np.asarray(b)[seeded_subsample(len(b), n, rng)]])
    y = np.repeat([0, 1], n)
    same_row = np.unique(x, axis=0, return_inverse=True)[1].ravel()
    aucs = []
    splits = StratifiedGroupKFold(n_splits=min(folds, n), shuffle=True, random_state=seed).split(x, y, same_row)
    with _one_thread():
        for train, test in splits:
            clf = LogisticRegression(max_iter=2000).fit(x[train], y[train])
            aucs.append(roc_auc_score(y[test], clf.decision_function(x[test])))
    return float(np.mean(aucs))


def label_agreement(real_emb: np.ndarray, real_labels: Sequence[Any], gen_emb: np.ndarray,
                    gen_labels: Sequence[Any], seed: int, max_rows: int = MAX_SCORED_ROWS) -> float:
    """Share of generated rows whose label a classifier fit on real rows predicts (logistic regression on the
    embeddings, fit on a seeded sample of at most max_rows real rows). Labels compare as strings; a generated
    label that no real row has can never be predicted, so it counts as disagreement.

    Raises ValueError when the real rows hold fewer than two labels: there is no classifier to agree with.
    """
    real_y = np.asarray([str(v) for v in real_labels], dtype=object)
    gen_y = np.asarray([str(v) for v in gen_labels], dtype=object)
    if len(gen_y) != len(gen_emb) or len(real_y) != len(real_emb):
        raise ValueError("label_agreement: labels and embeddings differ in length")
    if len(np.unique(real_y)) < 2:
        raise ValueError(f"label_agreement needs at least two labels among the real rows, got {sorted(set(real_y))}")
    if len(gen_y) == 0:
        raise ValueError("label_agreement needs at least one generated row")
    clf = fit_label_classifier(real_emb, real_y, seed, max_rows)
    with _one_thread():
        return float(np.mean(clf.predict(np.asarray(gen_emb)) == gen_y))


def own_label_probability(train_emb: np.ndarray, train_labels: Sequence[Any], gen_emb: np.ndarray,
                          gen_labels: Sequence[Any], seed: int, max_rows: int = MAX_SCORED_ROWS) -> np.ndarray:
    """Per generated row, the probability that a classifier fit on `train` rows (logistic regression on the
    embeddings, a seeded sample of at most max_rows) gives the row's own label. A label that no training row has
    cannot be judged and reads 1.0, as does every row when the training rows hold fewer than two labels.

    The filter twin of label_agreement (with two labels, probability ≥ 0.5 is agreement): fit it on input rows
    only, never on the rows a run is scored against. fit_label_classifier + label_probability, for callers that fit
    once and judge rows in several places.
    """
    return label_probability(fit_label_classifier(train_emb, train_labels, seed, max_rows), gen_emb, gen_labels)


def fit_label_classifier(train_emb: np.ndarray, train_labels: Sequence[Any], seed: int,
                         max_rows: int = MAX_SCORED_ROWS) -> Any | None:
    """own_label_probability's classifier (None when the training rows hold fewer than two labels)."""
    from sklearn.linear_model import LogisticRegression

    train_y = np.asarray([str(v) for v in train_labels], dtype=object)
    if len(train_y) != len(train_emb):
        raise ValueError("own_label_probability: labels and embeddings differ in length")
    if len(np.unique(train_y)) < 2:
        return None
    keep = seeded_subsample(len(train_y), max_rows, np.random.default_rng(seed))
    with _one_thread():
        # Balanced class weights: with the rows' own label shares as the prior, a label of 1% of the rows loses most
        # of its genuine rows to the 0.5 threshold (AG News, 'Sports' cut to 1% of the training rows: 88% of held-out
        # Sports rows fell below it, against 12% with balanced weights; wrong-label rows caught 93-100% either way).
        return LogisticRegression(max_iter=2000, class_weight="balanced").fit(np.asarray(train_emb)[keep], train_y[keep])


def label_probability(clf: Any | None, gen_emb: np.ndarray, gen_labels: Sequence[Any]) -> np.ndarray:
    """Per row, the probability `clf` (fit_label_classifier's) gives the row's own label; 1.0 where it cannot judge
    (no classifier, or a label it never saw)."""
    gen_y = np.asarray([str(v) for v in gen_labels], dtype=object)
    if len(gen_y) != len(gen_emb):
        raise ValueError("own_label_probability: labels and embeddings differ in length")
    out = np.ones(len(gen_y), dtype=np.float64)
    if len(gen_y) == 0 or clf is None:
        return out
    with _one_thread():
        proba = clf.predict_proba(np.asarray(gen_emb))
    column = {c: i for i, c in enumerate(clf.classes_)}
    known = np.flatnonzero([y in column for y in gen_y])
    out[known] = proba[known, [column[y] for y in gen_y[known]]]
    return out


def mauve_buckets(n_p: int, n_q: int) -> int:
    """MAUVE's histogram size: mauve-text's own 'auto' rule, a tenth of the smaller side, at least 2."""
    return max(2, int(round(min(n_p, n_q) / 10)))


def mauve_score(p_emb: np.ndarray, q_emb: np.ndarray, seed: int, max_rows: int = MAX_SCORED_ROWS) -> float:
    """MAUVE (mauve-text) between two sets of precomputed embeddings, each cut to at most max_rows rows (seeded).

    num_buckets follows mauve_buckets (12 buckets for 120 rows, 2 below 25 rows, where MAUVE says little);
    mauve-text L2-normalises, keeps 90% of the variance by PCA and quantises by k-means (faiss), all seeded.
    Near 1: the sets fill the same clusters in the same proportions; near 0: disjoint.
    """
    import mauve

    rng = np.random.default_rng(seed)
    p = np.asarray(p_emb, dtype=np.float32)
    q = np.asarray(q_emb, dtype=np.float32)
    if len(p) < 2 or len(q) < 2:
        raise ValueError(f"mauve_score needs at least 2 rows on each side, got {len(p)} and {len(q)}")
    p = p[seeded_subsample(len(p), max_rows, rng)]
    q = q[seeded_subsample(len(q), max_rows, rng)]
    with _one_thread():
        out = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=mauve_buckets(len(p), len(q)), seed=seed,
                                  verbose=False)
    return float(out.mauve)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique word n-grams over all word n-grams of the set (words as in `words`); 0 when there are none."""
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        tokens = words(text)
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def mean_within_group_cosine(emb: np.ndarray, group_ids: Sequence[Any]) -> float:
    """Mean pairwise cosine within each group of at least 2 rows, averaged over those groups (nan: none).

    Per group, the mean over pairs i < j is (‖Σx‖² − Σ‖x‖²) / (n(n − 1)) on the normalised rows: linear time.
    """
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    ids = np.asarray([str(g) for g in group_ids], dtype=object)
    if len(ids) != len(x):
        raise ValueError("mean_within_group_cosine: group_ids and embeddings differ in length")
    means = []
    for gid in np.unique(ids):
        rows = x[ids == gid]
        n = len(rows)
        if n >= 2:
            total = rows.sum(axis=0)
            means.append((total @ total - np.einsum("ij,ij->", rows, rows)) / (n * (n - 1)))
    return float(np.mean(means)) if means else float("nan")


def score_set(gen_emb: np.ndarray, gen_labels: Sequence[Any] | None, gen_texts: Sequence[str],
              real_emb: np.ndarray, real_labels: Sequence[Any] | None, seed: int,
              group_ids: Sequence[Any] | None = None, input_cosine: np.ndarray | None = None,
              near_copy_cosine: float = 0.95, rows: int | None = None) -> dict[str, Any]:
    """The set-level table for one set of generated rows against real (held-out) rows; `rows`: the set's size when
    the rows given are a sample of it (scored_sample's), else their number.

    Keys: rows; sample_rows (the rows given: nearest-real cosine, near-copy rate, distinct-2 and within-group cosine
    are theirs); scored_rows and reference_rows (generated and real rows MAUVE and label agreement used, after
    seeded subsampling to MAX_SCORED_ROWS); two_sample_rows (rows per side of the balanced two-sample test);
    two_sample_auc; label_agreement (None without labels on both sides, or with one real label:
    label_agreement_skipped says why); mauve; nearest_real_cosine_median/_p10/_p90; near_copy_rate (share with
    cosine ≥ near_copy_cosine to an input row, from `input_cosine`: each row's near_copy_max_cosine to the input
    rows, which a caller may compute where the input lives; None without it); distinct_2; within_group_cosine (None
    without group_ids or groups of 2+). Two-sample AUC and MAUVE are None below 2 rows on either side.
    """
    gen = np.asarray(gen_emb, dtype=np.float32)
    real = np.asarray(real_emb, dtype=np.float32)
    sample = len(gen)
    out: dict[str, Any] = {
        "rows": sample if rows is None else rows, "sample_rows": sample, "scored_rows": min(sample, MAX_SCORED_ROWS),
        "reference_rows": min(len(real), MAX_SCORED_ROWS),
        "two_sample_rows": min(sample, len(real), MAX_SCORED_ROWS), "two_sample_auc": None,
        "label_agreement": None, "mauve": None,
        "nearest_real_cosine_median": None, "nearest_real_cosine_p10": None, "nearest_real_cosine_p90": None,
        "near_copy_rate": None, "distinct_2": distinct_n(list(gen_texts), 2), "within_group_cosine": None,
    }
    if sample >= 1 and len(real) >= 1:
        nearest = near_copy_max_cosine(gen, real)
        p10, median, p90 = np.percentile(nearest, [10, 50, 90])
        out.update(nearest_real_cosine_median=float(median), nearest_real_cosine_p10=float(p10),
                   nearest_real_cosine_p90=float(p90))
    if sample >= 1 and input_cosine is not None:
        out["near_copy_rate"] = float(np.mean(np.asarray(input_cosine) >= near_copy_cosine))
    if sample >= 2 and len(real) >= 2:
        out["two_sample_auc"] = two_sample_auc(gen, real, seed)
        out["mauve"] = mauve_score(gen, real, seed)
    if gen_labels is not None and real_labels is not None and sample >= 1:
        if len(set(map(str, real_labels))) < 2:
            out["label_agreement_skipped"] = "the real rows hold fewer than two labels"
        else:
            keep = seeded_subsample(sample, MAX_SCORED_ROWS, np.random.default_rng(seed))
            labels = list(gen_labels)
            out["label_agreement"] = label_agreement(real, real_labels, gen[keep], [labels[i] for i in keep], seed)
    if group_ids is not None and sample >= 2:
        within = mean_within_group_cosine(gen, group_ids)
        out["within_group_cosine"] = None if np.isnan(within) else within
    return out


def real_ceiling(real_pool_emb: np.ndarray, real_pool_labels: Sequence[Any] | None, real_pool_texts: Sequence[str],
                 reference_emb: np.ndarray, reference_labels: Sequence[Any] | None, size: int,
                 seed: int) -> dict[str, Any]:
    """score_set for `size` real rows (a seeded sample of a real pool that shares no row with the reference):
    what each score reads when the 'generated' rows are real, on the same sizes."""
    keep = seeded_subsample(len(real_pool_emb), size, np.random.default_rng(seed))
    pool_texts = list(real_pool_texts)
    pool_labels = None if real_pool_labels is None else list(real_pool_labels)
    labels = None if pool_labels is None else [pool_labels[i] for i in keep]
    return score_set(np.asarray(real_pool_emb)[keep], labels, [pool_texts[i] for i in keep], reference_emb,
                     reference_labels, seed)
