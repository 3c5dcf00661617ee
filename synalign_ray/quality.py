"""Quality of generated rows: per-row checks that name why a row is junk, and set-level scores against real rows
(two-sample AUC, label agreement, MAUVE, nearest-real cosine, diversity) with a real-vs-real ceiling. Pure numpy;
scikit-learn and mauve-text (which imports torch when installed) load inside the functions that use them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from synalign_ray.config import QualityCheck
from synalign_ray.errors import ConfigError

if TYPE_CHECKING:
    from synalign_ray.config import QualityConfig

CHECK_REASONS: tuple[str, ...] = get_args(QualityCheck)

# Characters a sentence of prose is made of besides letters and whitespace. Digits, slashes, braces, '_', '=',
# '#', '@' are not: digit runs, URLs and JSON fragments are what the letter-share check exists to catch.
PROSE_PUNCTUATION = frozenset("'\"`-,.!?;:()")

# Echoes of this project's prompts and schemas, whatever the preset. Terms holding a character other than a letter
# or space match anywhere in a row; plain words match only a row that is nothing but that word (see check_rows).
PROMPT_ECHO_TERMS: tuple[str, ...] = (
    "[task]", "[sample data]", "[instructions]", "[demonstration summary]", "now, begin", "{", "}",
    '"samples"', '"text"', '"label"', "samples", "sample data",
)

# snake_case identifiers: the schema's attribute keys are written this way ('movie_genre'); real rows almost never
# are (none of SST-2 train, 3 of 10,000 AG News leads).
_IDENTIFIER = re.compile(r"[^\W\d_]+_[^\W\d_]+")
_WORD = re.compile(r"[^\W_]+")
_NOT_WORD = re.compile(r"[\W_]+")

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


# ----------------------------------------------------------------------------------------------- per-row checks


@dataclass(frozen=True)
class RowBounds:
    """Bounds of the per-row checks (defaults: QualityConfig's); `checks` names the enabled ones."""

    min_chars: int
    max_chars: int
    min_letter_share: float
    max_char_run: int
    repeat_ngram: int
    max_ngram_repeat_share: float
    checks: frozenset[str]

    def __post_init__(self) -> None:
        if self.min_chars >= self.max_chars:
            raise ConfigError(f"quality: min_chars ({self.min_chars}) must be below max_chars ({self.max_chars}); "
                              f"no row could pass")
        unknown = set(self.checks) - set(CHECK_REASONS)
        if unknown:
            raise ConfigError(f"quality: unknown check(s) {sorted(unknown)}; known: {list(CHECK_REASONS)}")

    @classmethod
    def from_config(cls, config: QualityConfig, preset_max_chars: int) -> RowBounds:
        """Bounds for one run: the config's, with max_chars defaulting to the preset's longest sample."""
        return cls(min_chars=config.min_chars, max_chars=config.max_chars or preset_max_chars,
                   min_letter_share=config.min_letter_share, max_char_run=config.max_char_run,
                   repeat_ngram=config.repeat_ngram, max_ngram_repeat_share=config.max_ngram_repeat_share,
                   checks=frozenset(config.checks))


def attribute_echo_terms(attributes: Sequence[str]) -> tuple[str, ...]:
    """Echo terms for a preset's attributes: the name alone as a whole row ('topic') and as a key ('topic:').

    The snake_case keys themselves ('movie_genre') are caught by the identifier rule of check_rows.
    """
    return tuple(term for a in attributes for term in (a, f"{a}:"))


def letter_share(text: str) -> float:
    """Share of characters that are letters (any script), whitespace or prose punctuation; 0 for ''."""
    if not text:
        return 0.0
    return sum(c.isalpha() or c.isspace() or c in PROSE_PUNCTUATION for c in text) / len(text)


def longest_char_run(text: str) -> int:
    """Longest run of one repeated non-whitespace character (news leads indent with runs of spaces)."""
    best = run = 0
    prev = ""
    for c in text:
        run = run + 1 if c == prev and not c.isspace() else 1
        prev = c
        best = max(best, run)
    return best


def words(text: str) -> list[str]:
    """Casefolded runs of letters and digits; '_' and punctuation separate words ('a_b' is two)."""
    return _WORD.findall(text.casefold())


def ngram_repeat_share(text: str, n: int = 3) -> float:
    """Share of the words that lie inside a word n-gram occurring at least twice in the text: 1.0 for a loop
    ('a b c a b c'), 0 for prose whose n-grams are all distinct, 0 for texts of fewer than n words."""
    tokens = words(text)
    if len(tokens) < n:
        return 0.0
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    counts = Counter(grams)
    covered = np.zeros(len(tokens), dtype=bool)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i:i + n] = True
    return float(covered.mean())


def _normalised_words(text: str) -> str:
    return _NOT_WORD.sub(" ", text.casefold()).strip()


def _copy_key(text: str) -> str:
    return " ".join(text.casefold().split())


def _echo_matchers(echo_terms: Iterable[str]) -> tuple[re.Pattern[str] | None, frozenset[str]]:
    """(regex of terms that match anywhere, normalised plain-word terms that match a whole row)."""
    anywhere, whole = [], set()
    for term in (*PROMPT_ECHO_TERMS, *echo_terms):
        term = term.strip()
        if not term:
            continue
        whole.add(_normalised_words(term))
        if any(not (c.isalpha() or c.isspace()) for c in term):
            # Word-ish: a term that starts or ends with a word character must not continue a longer word.
            left = r"(?<!\w)" if re.match(r"\w", term[0]) else ""
            right = r"(?!\w)" if re.match(r"\w", term[-1]) else ""
            anywhere.append(left + re.escape(term.casefold()) + right)
    whole.discard("")
    pattern = re.compile("|".join(sorted(set(anywhere), key=len, reverse=True))) if anywhere else None
    return pattern, frozenset(whole)


class RowChecker:
    """Per-row checks with the echo patterns and the input rows' copy keys prepared once, for a job that checks
    batch after batch against the same input."""

    def __init__(self, bounds: RowBounds, echo_terms: Sequence[str] = (), input_texts: Iterable[str] = ()):
        self.bounds = bounds
        self.echo_anywhere, self.echo_whole = _echo_matchers(echo_terms)
        self.inputs = (frozenset(_copy_key(t) for t in input_texts) if "copy_of_input" in bounds.checks
                       else frozenset())
        self.enabled = [c for c in CHECK_REASONS if c in bounds.checks]

    def _fails(self, check: str, text: str) -> bool:
        b = self.bounds
        if check == "empty":
            return not text
        if check == "too_short":
            return len(text) < b.min_chars
        if check == "too_long":
            return len(text) > b.max_chars
        if check == "low_letter_share":
            return letter_share(text) < b.min_letter_share
        if check == "repetition":
            return (longest_char_run(text) > b.max_char_run
                    or ngram_repeat_share(text, b.repeat_ngram) > b.max_ngram_repeat_share)
        if check == "prompt_echo":
            return (_IDENTIFIER.search(text) is not None
                    or (self.echo_anywhere is not None and self.echo_anywhere.search(text.casefold()) is not None)
                    or _normalised_words(text) in self.echo_whole)
        return _copy_key(text) in self.inputs  # copy_of_input

    def __call__(self, texts: Sequence[str]) -> list[str | None]:
        """The first failing check per row (None: the row passes every enabled check); see check_rows."""
        out: list[str | None] = []
        for raw in texts:
            text = (raw or "").strip()
            out.append(next((c for c in self.enabled if self._fails(c, text)), None))
        return out


def check_rows(texts: list[str], bounds: RowBounds, echo_terms: Sequence[str] = (),
               input_texts: Iterable[str] = ()) -> list[str | None]:
    """The first failing check per row, in CHECK_REASONS order (None: the row passes every enabled check).

    - empty: nothing but whitespace;
    - too_short / too_long: fewer than min_chars or more than max_chars characters (of the stripped text);
    - low_letter_share: letter_share below min_letter_share (SST-2 rows: 0.98 letters and spaces on average);
    - repetition: one non-space character repeated more than max_char_run times in a row, or more than
      max_ngram_repeat_share of the words inside repeated word n-grams (ngram_repeat_share);
    - prompt_echo: a snake_case identifier, a prompt/schema term of PROMPT_ECHO_TERMS or echo_terms anywhere in
      the row (case-insensitive; terms with a character other than letters and spaces, e.g. '[Task]', '{',
      'topic:'), or a row that is nothing but one term's words (plain-word terms such as 'topic' only this way,
      so a review that mentions a topic passes);
    - copy_of_input: equal to an input row after casefolding and collapsing whitespace.
    """
    return RowChecker(bounds, echo_terms, input_texts)(texts)


# --------------------------------------------------------------------------------------------- set-level scores


def _subsample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded sample of `size` of n rows (all rows when size ≥ n)."""
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


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
    x = np.vstack([np.asarray(a)[_subsample(len(a), n, rng)], np.asarray(b)[_subsample(len(b), n, rng)]])
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
    from sklearn.linear_model import LogisticRegression

    real_y = np.asarray([str(v) for v in real_labels], dtype=object)
    gen_y = np.asarray([str(v) for v in gen_labels], dtype=object)
    if len(gen_y) != len(gen_emb) or len(real_y) != len(real_emb):
        raise ValueError("label_agreement: labels and embeddings differ in length")
    if len(np.unique(real_y)) < 2:
        raise ValueError(f"label_agreement needs at least two labels among the real rows, got {sorted(set(real_y))}")
    if len(gen_y) == 0:
        raise ValueError("label_agreement needs at least one generated row")
    keep = _subsample(len(real_y), max_rows, np.random.default_rng(seed))
    with _one_thread():
        clf = LogisticRegression(max_iter=2000).fit(np.asarray(real_emb)[keep], real_y[keep])
        return float(np.mean(clf.predict(np.asarray(gen_emb)) == gen_y))


def own_label_probability(train_emb: np.ndarray, train_labels: Sequence[Any], gen_emb: np.ndarray,
                          gen_labels: Sequence[Any], seed: int, max_rows: int = MAX_SCORED_ROWS) -> np.ndarray:
    """Per generated row, the probability that a classifier fit on `train` rows (logistic regression on the
    embeddings, a seeded sample of at most max_rows) gives the row's own label. A label that no training row has
    cannot be judged and reads 1.0, as does every row when the training rows hold fewer than two labels.

    The filter twin of label_agreement (with two labels, probability ≥ 0.5 is agreement): fit it on input rows
    only, never on the rows a run is scored against.
    """
    from sklearn.linear_model import LogisticRegression

    train_y = np.asarray([str(v) for v in train_labels], dtype=object)
    gen_y = np.asarray([str(v) for v in gen_labels], dtype=object)
    if len(gen_y) != len(gen_emb) or len(train_y) != len(train_emb):
        raise ValueError("own_label_probability: labels and embeddings differ in length")
    out = np.ones(len(gen_y), dtype=np.float64)
    if len(gen_y) == 0 or len(np.unique(train_y)) < 2:
        return out
    keep = _subsample(len(train_y), max_rows, np.random.default_rng(seed))
    with _one_thread():
        clf = LogisticRegression(max_iter=2000).fit(np.asarray(train_emb)[keep], train_y[keep])
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
    p = p[_subsample(len(p), max_rows, rng)]
    q = q[_subsample(len(q), max_rows, rng)]
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
              group_ids: Sequence[Any] | None = None, input_emb: np.ndarray | None = None,
              near_copy_cosine: float = 0.95) -> dict[str, Any]:
    """The set-level table for one set of generated rows against real (held-out) rows.

    Keys: rows; scored_rows and reference_rows (generated and real rows MAUVE and label agreement used, after
    seeded subsampling to MAX_SCORED_ROWS); two_sample_rows (rows per side of the balanced two-sample test);
    two_sample_auc; label_agreement (None without labels on both sides, or with one real label:
    label_agreement_skipped says why); mauve; nearest_real_cosine_median/_p10/_p90; near_copy_rate (share with
    cosine ≥ near_copy_cosine to an input row; None without input_emb); distinct_2; within_group_cosine (None
    without group_ids or groups of 2+). Two-sample AUC and MAUVE are None below 2 rows on either side.
    """
    gen = np.asarray(gen_emb, dtype=np.float32)
    real = np.asarray(real_emb, dtype=np.float32)
    rows = len(gen)
    out: dict[str, Any] = {
        "rows": rows, "scored_rows": min(rows, MAX_SCORED_ROWS), "reference_rows": min(len(real), MAX_SCORED_ROWS),
        "two_sample_rows": min(rows, len(real), MAX_SCORED_ROWS), "two_sample_auc": None,
        "label_agreement": None, "mauve": None,
        "nearest_real_cosine_median": None, "nearest_real_cosine_p10": None, "nearest_real_cosine_p90": None,
        "near_copy_rate": None, "distinct_2": distinct_n(list(gen_texts), 2), "within_group_cosine": None,
    }
    if rows >= 1 and len(real) >= 1:
        nearest = near_copy_max_cosine(gen, real)
        p10, median, p90 = np.percentile(nearest, [10, 50, 90])
        out.update(nearest_real_cosine_median=float(median), nearest_real_cosine_p10=float(p10),
                   nearest_real_cosine_p90=float(p90))
    if rows >= 1 and input_emb is not None and len(input_emb):
        out["near_copy_rate"] = float(np.mean(near_copy_max_cosine(gen, input_emb) >= near_copy_cosine))
    if rows >= 2 and len(real) >= 2:
        out["two_sample_auc"] = two_sample_auc(gen, real, seed)
        out["mauve"] = mauve_score(gen, real, seed)
    if gen_labels is not None and real_labels is not None and rows >= 1:
        if len(set(map(str, real_labels))) < 2:
            out["label_agreement_skipped"] = "the real rows hold fewer than two labels"
        else:
            keep = _subsample(rows, MAX_SCORED_ROWS, np.random.default_rng(seed))
            labels = list(gen_labels)
            out["label_agreement"] = label_agreement(real, real_labels, gen[keep], [labels[i] for i in keep], seed)
    if group_ids is not None and rows >= 2:
        within = mean_within_group_cosine(gen, group_ids)
        out["within_group_cosine"] = None if np.isnan(within) else within
    return out


def real_ceiling(real_pool_emb: np.ndarray, real_pool_labels: Sequence[Any] | None, real_pool_texts: Sequence[str],
                 reference_emb: np.ndarray, reference_labels: Sequence[Any] | None, size: int,
                 seed: int) -> dict[str, Any]:
    """score_set for `size` real rows (a seeded sample of a real pool that shares no row with the reference):
    what each score reads when the 'generated' rows are real, on the same sizes."""
    keep = _subsample(len(real_pool_emb), size, np.random.default_rng(seed))
    pool_texts = list(real_pool_texts)
    pool_labels = None if real_pool_labels is None else list(real_pool_labels)
    labels = None if pool_labels is None else [pool_labels[i] for i in keep]
    return score_set(np.asarray(real_pool_emb)[keep], labels, [pool_texts[i] for i in keep], reference_emb,
                     reference_labels, seed)
