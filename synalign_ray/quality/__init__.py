"""Quality of generated rows: per-row checks that name why a row is junk (checks.py), and set-level scores against
real rows with a real-vs-real ceiling (scores.py). `from synalign_ray import quality` offers both."""

from synalign_ray.quality.checks import (CHECK_REASONS, PROMPT_ECHO_TERMS, PROSE_PUNCTUATION, RowBounds, RowChecker,
                                         attribute_echo_terms, check_rows, copy_keys, letter_share, longest_char_run,
                                         ngram_repeat_share, words)
from synalign_ray.quality.scores import (MAX_SCORED_ROWS, distinct_n, fit_label_classifier, label_agreement,
                                         label_probability, mauve_buckets, mauve_score,
                                         mean_within_group_cosine, near_copy_max_cosine, own_label_probability,
                                         real_ceiling, score_set, two_sample_auc)

__all__ = ["CHECK_REASONS", "PROMPT_ECHO_TERMS", "PROSE_PUNCTUATION", "RowBounds", "RowChecker", "attribute_echo_terms",
           "check_rows", "copy_keys", "letter_share", "longest_char_run", "ngram_repeat_share", "words",
           "MAX_SCORED_ROWS", "distinct_n", "fit_label_classifier", "label_agreement", "label_probability",
           "mauve_buckets", "mauve_score",
           "mean_within_group_cosine", "near_copy_max_cosine", "own_label_probability", "real_ceiling", "score_set",
           "two_sample_auc"]
