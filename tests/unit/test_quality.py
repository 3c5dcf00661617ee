"""Quality measures: per-row checks on crafted junk and real rows, set-level scores on real MiniLM embeddings
against formulas and known-separated data sets, and the quality config's bounds."""

import math

import numpy as np
import pytest

from synalign_ray import quality
from synalign_ray.config import QualityConfig, build_config
from synalign_ray.errors import ConfigError
from synalign_ray.generation.presets import PRESETS
from synalign_ray.quality import (CHECK_REASONS, RowBounds, attribute_echo_terms, check_rows, distinct_n,
                                  label_agreement, mauve_score, mean_within_group_cosine, near_copy_max_cosine,
                                  real_ceiling, score_set, two_sample_auc)
from tests.conftest import sample_rows

SST2 = PRESETS["sst2"]
SST2_BOUNDS = RowBounds.from_config(QualityConfig(), SST2.max_sample_chars)
SST2_ECHOES = attribute_echo_terms(SST2.attributes)
# Default bounds with one check enabled, to test each check alone.
ONLY = {c: RowBounds.from_config(QualityConfig(checks=[c]), SST2.max_sample_chars) for c in CHECK_REASONS}


@pytest.fixture(scope="module")
def sst2_train(real_embeddings):
    return real_embeddings("sst2_train.parquet", 2000, 0)


@pytest.fixture(scope="module")
def sst2_dev(real_embeddings):
    return real_embeddings("sst2_dev.parquet", 300, 2)


@pytest.fixture(scope="module")
def agnews(real_embeddings):
    return real_embeddings("agnews_dev.parquet", 300, 0)


def _halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(0).permutation(n)
    return perm[: n // 2], perm[n // 2:]


# ----------------------------------------------------------------------------------------------- per-row checks

# Rows written by the packaged model under strict JSON (issue 12), each with the first check it fails.
ISSUE_12_JUNK = [
    ("1,001,001,3,1,1,1,3,1,3,1,1,1,1,3,1,1", "low_letter_share"),
    ("nothray_sentence_word_nothray_sentence_word_nothray_sentence_word", "repetition"),
    ("123-123-12345678901234.com/TuBSAB7S/1234.com/", "low_letter_share"),
    ("movie_genre", "prompt_echo"),
    ("topic", "prompt_echo"),
    ("review_length", "prompt_echo"),
    (",{", "too_short"),
    ("},", "too_short"),
    ("sample_data:MovieGenreActionMovie.11.2s,", "prompt_echo"),
]


@pytest.mark.parametrize("text, reason", ISSUE_12_JUNK)
def test_issue_12_junk_fails_with_its_reason(text, reason):
    assert check_rows([text], SST2_BOUNDS, SST2_ECHOES) == [reason]


def test_check_order_is_the_config_order():
    assert CHECK_REASONS == ("empty", "too_short", "too_long", "low_letter_share", "repetition", "prompt_echo",
                             "copy_of_input")
    assert QualityConfig().checks == list(CHECK_REASONS)


@pytest.mark.parametrize("text, fails", [
    ("", True), ("   \n\t", True), ("ok", False),
])
def test_empty(text, fails):
    assert check_rows([text], ONLY["empty"]) == ["empty" if fails else None]


def test_length_bounds_count_stripped_characters():
    bounds = RowBounds.from_config(QualityConfig(min_chars=3, max_chars=10), SST2.max_sample_chars)
    texts = ["ab", "  abc  ", "abcdefghij", "abcdefghijk"]
    assert check_rows(texts, bounds) == ["too_short", None, None, "too_long"]


@pytest.mark.parametrize("text, fails", [
    ("it 's a charming and often affecting journey . ", False),
    ("« Très émouvant », d'après l'équipe — ça marche !", False),  # letters of any script count
    ("`` the country bears '' -- wastes its time ?", False),
    ("1234567890 12345", True),
    ('{"a":[1,2],"b":[3]}', True),
    ("http://x.co/a=1&b=2#3", True),
])
def test_letter_share(text, fails):
    assert check_rows([text], ONLY["low_letter_share"]) == ["low_letter_share" if fails else None]


def test_letter_share_formula():
    # 'ab1 ' : a, b and the space are accepted, the digit is not.
    assert quality.letter_share("ab1 ") == pytest.approx(3 / 4)
    assert quality.letter_share("") == 0.0


@pytest.mark.parametrize("text, fails", [
    ("this is one baaaaaaaaad movie .", False),   # 9 a's: the longest run in SST-2 train
    ("this is one baaaaaaaaaad movie .", True),   # 10
    ("word    word    indented    lead", False),  # runs of spaces are not loops
    ("nothray_sentence_word_nothray_sentence_word_nothray_sentence_word", True),
    ("1,001,001,3,1,1,1,3,1,3,1,1,1,1,3,1,1", True),
    ("the film is good the film is good the film is good", True),
    ("an intelligent , moving and invigorating film that lays bare the tragedies of its setting with a sharp "
     "eye for detail , a confident cast , and a score that never tells you how to feel about any of it", False),
])
def test_repetition(text, fails):
    assert check_rows([text], ONLY["repetition"]) == ["repetition" if fails else None]


def test_ngram_repeat_share_formula():
    # 'x a b c y a b c': both occurrences of 'a b c' cover 6 of 8 words; all-distinct prose covers none.
    assert quality.ngram_repeat_share("x a b c y a b c", 3) == pytest.approx(6 / 8)
    assert quality.ngram_repeat_share("one two three four five", 3) == 0.0
    assert quality.ngram_repeat_share("a b", 3) == 0.0


@pytest.mark.parametrize("text, fails", [
    ("[Task] Write 5 unique reviews", True),
    ("Now, begin writing: a fine film", True),
    ('{"samples": ["a good film"]}', True),
    ("Movie genre: drama. A slow burn that pays off.", True),
    ("the movie_genre is drama", True),
    ("Topic", True),
    ("  Review length. ", True),
    ("the topic of the film is grief , handled with care", False),
    ("a refreshing take on the horror movie genre", False),
    ("samples of old newsreels are cut into the story", False),
])
def test_prompt_echo(text, fails):
    assert check_rows([text], ONLY["prompt_echo"], SST2_ECHOES) == ["prompt_echo" if fails else None]


def test_extra_echo_terms_match_word_ish():
    bounds = ONLY["prompt_echo"]
    assert check_rows(["7. a fine film", "17. a fine film"], bounds, ["7."]) == ["prompt_echo", None]


def test_copy_of_input_ignores_case_and_spacing():
    inputs = ["A charming   film .", "another row"]
    texts = ["a charming film .", "  A CHARMING\tFILM .", "a charming film"]
    assert check_rows(texts, ONLY["copy_of_input"], input_texts=inputs) == [
        "copy_of_input", "copy_of_input", None]


def test_copy_keys_find_the_same_rows_as_the_input_texts_themselves():
    """The copy check looks up 8-byte keys instead of holding the input: on 2,000 real rows (half of them inputs) it
    flags exactly the rows a set of the normalised input texts flags."""
    from synalign_ray.quality import RowChecker, copy_keys

    texts = sample_rows("sst2_train.parquet", 2000, seed=4).column("text").to_pylist()
    inputs = texts[::2]
    keys = copy_keys(inputs + inputs[:10])  # repeated rows give one key each
    assert keys.dtype == np.uint64 and np.all(np.diff(keys) > 0) and len(keys) == len(set(inputs))
    reference = {" ".join(t.casefold().split()) for t in inputs}
    candidates = [t.upper() if i % 3 else t for i, t in enumerate(texts)]
    flagged = RowChecker(ONLY["copy_of_input"], (), keys)(candidates)
    assert flagged == ["copy_of_input" if " ".join(t.casefold().split()) in reference else None for t in candidates]
    assert flagged.count("copy_of_input") >= 1000


def test_disabled_checks_are_skipped():
    enabled = [c for c in CHECK_REASONS if c not in ("too_short", "prompt_echo")]
    bounds = RowBounds.from_config(QualityConfig(checks=enabled), SST2.max_sample_chars)
    assert check_rows(["topic", ",{"], bounds, SST2_ECHOES) == [None, "low_letter_share"]


@pytest.mark.parametrize("name, preset", [("sst2_train.parquet", "sst2"), ("agnews_dev.parquet", "agnews")])
def test_real_rows_pass_the_default_checks(name, preset):
    # Measured on these 2,000-row samples: SST-2 train 99.2% pass (15 rows longer than the preset's 192
    # characters), AG News dev 98.7% (22 longer than 450); on the whole files 98.9% and 99.0%.
    texts = sample_rows(name, 2000, 0).column("text").to_pylist()
    bounds = RowBounds.from_config(QualityConfig(), PRESETS[preset].max_sample_chars)
    reasons = check_rows(texts, bounds, attribute_echo_terms(PRESETS[preset].attributes), input_texts=["x y z"])
    passed = sum(r is None for r in reasons) / len(reasons)
    assert passed >= 0.97, {r: reasons.count(r) for r in set(reasons)}
    # Apart from length, every check is nearly silent on real rows.
    assert sum(r not in (None, "too_long") for r in reasons) / len(reasons) <= 0.01


# ----------------------------------------------------------------------------------------------- set-level scores


def test_near_copy_max_cosine_equals_brute_force_in_any_chunking():
    rng = np.random.default_rng(3)
    gen = rng.normal(size=(37, 16)).astype(np.float32)
    ref = rng.normal(size=(53, 16)).astype(np.float32)
    gen /= np.linalg.norm(gen, axis=1, keepdims=True)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    brute = (gen @ ref.T).max(axis=1)
    for chunk in (1, 7, 4096):
        np.testing.assert_allclose(near_copy_max_cosine(gen, ref, chunk=chunk), brute, rtol=0, atol=1e-6)


def test_near_copy_max_cosine_is_one_for_copies(sst2_train):
    _, emb = sst2_train
    np.testing.assert_allclose(near_copy_max_cosine(emb[:50], emb[:500], chunk=64), 1.0, atol=1e-5)


def test_two_sample_auc_of_one_set_is_chance(sst2_train):
    _, emb = sst2_train
    a, b = _halves(len(emb))
    auc = two_sample_auc(emb[a], emb[b], seed=0)
    assert abs(auc - 0.5) <= 0.08  # measured 0.52 (seeds 0-2: 0.52, 0.52, 0.53)
    assert two_sample_auc(emb[a], emb[b], seed=0) == auc


def test_two_sample_auc_of_sst2_against_agnews_is_separated(sst2_train, agnews):
    assert two_sample_auc(sst2_train[1][:300], agnews[1], seed=0) >= 0.98  # measured 0.994


def test_two_sample_auc_balances_sides_before_folds(sst2_train):
    # 40 rows against 1,960: both sides are cut to 40, so 5 folds of 16 held-out rows each still hold both sides.
    _, emb = sst2_train
    assert abs(two_sample_auc(emb[:40], emb[40:], seed=1) - 0.5) <= 0.2


def test_label_agreement_of_real_dev_rows(sst2_train, sst2_dev):
    (train_rows, train_emb), (dev_rows, dev_emb) = sst2_train, sst2_dev
    train_y, dev_y = train_rows.column("label").to_pylist(), dev_rows.column("label").to_pylist()
    agreement = label_agreement(train_emb, train_y, dev_emb, dev_y, seed=0)
    assert agreement >= 0.80  # measured 0.837 (0.85 before balanced class weights)
    # Binary labels: the same classifier agrees with exactly the rows it disagreed with once they are flipped.
    flipped = ["negative" if y == "positive" else "positive" for y in dev_y]
    assert label_agreement(train_emb, train_y, dev_emb, flipped, seed=0) == pytest.approx(1 - agreement)
    # A label no real row has is never predicted.
    assert label_agreement(train_emb, train_y, dev_emb, ["neutral"] * len(dev_y), seed=0) == 0.0


def test_label_agreement_needs_two_real_labels(sst2_train):
    _, emb = sst2_train
    with pytest.raises(ValueError, match="two labels"):
        label_agreement(emb[:100], ["positive"] * 100, emb[100:110], ["positive"] * 10, seed=0)


def test_own_label_probability_is_the_filter_twin_of_label_agreement(sst2_train, sst2_dev):
    (train_rows, train_emb), (dev_rows, dev_emb) = sst2_train, sst2_dev
    train_y, dev_y = train_rows.column("label").to_pylist(), dev_rows.column("label").to_pylist()
    own = quality.own_label_probability(train_emb, train_y, dev_emb, dev_y, seed=0)
    # Two labels, the same classifier: rows at 0.5 or more are the agreeing ones, and they agree completely.
    assert (own >= 0.5).mean() == pytest.approx(label_agreement(train_emb, train_y, dev_emb, dev_y, seed=0))
    kept = np.flatnonzero(own >= 0.5)
    assert label_agreement(train_emb, train_y, dev_emb[kept], [dev_y[i] for i in kept], seed=0) == 1.0
    # The other label's probability is the complement.
    flipped = ["negative" if y == "positive" else "positive" for y in dev_y]
    np.testing.assert_allclose(quality.own_label_probability(train_emb, train_y, dev_emb, flipped, seed=0), 1 - own,
                               atol=1e-6)  # float32 embeddings


def test_label_check_keeps_the_genuine_rows_of_a_rare_label(real_embeddings):
    """AG News with 'Sports' cut to 20 of 1,766 training rows (about 1%): held-out real Sports rows must still
    mostly pass the 0.5 check, and rows given a wrong label must still fail it. With the label shares as the prior
    (no class weights) every genuine Sports row failed and 85% of the wrong labels were caught."""
    rows, emb = real_embeddings("agnews_dev.parquet", 3000, 0)
    y = np.asarray(rows.column("label").to_pylist(), dtype=object)
    held_out = np.arange(len(y)) >= 2300
    sports = np.flatnonzero(~held_out & (y == "Sports"))
    train = np.concatenate([np.flatnonzero(~held_out & (y != "Sports")), sports[:20]])
    clf = quality.fit_label_classifier(emb[train], y[train], seed=0)
    own = quality.label_probability(clf, emb[held_out], y[held_out])
    passed = {label: float((own[y[held_out] == label] >= 0.5).mean()) for label in np.unique(y)}
    assert passed["Sports"] >= 0.6, passed  # measured 0.733 (0.0 without class weights)
    assert min(passed.values()) >= 0.6, passed  # measured 0.773-0.846 for the others
    classes = list(clf.classes_)
    wrong = [classes[(classes.index(label) + 1) % len(classes)] for label in y[held_out]]
    caught = float((quality.label_probability(clf, emb[held_out], wrong) < 0.5).mean())
    assert caught >= 0.9  # measured 0.944 (0.849 without class weights)


def test_own_label_probability_cannot_judge_unknown_labels_or_one_training_label(sst2_train):
    rows, emb = sst2_train
    y = rows.column("label").to_pylist()
    assert (quality.own_label_probability(emb[:500], y[:500], emb[500:520], ["neutral"] * 20, seed=0) == 1).all()
    assert (quality.own_label_probability(emb[:100], ["positive"] * 100, emb[100:120], ["negative"] * 20,
                                          seed=0) == 1).all()
    assert quality.own_label_probability(emb[:100], y[:100], emb[:0], [], seed=0).shape == (0,)


def test_mauve_of_identical_sets_is_one(sst2_train):
    _, emb = sst2_train
    assert mauve_score(emb[:300], emb[:300], seed=0) == pytest.approx(1.0, abs=1e-6)


def test_mauve_of_other_real_rows_is_high_and_of_agnews_low(sst2_train, sst2_dev, agnews):
    reference = sst2_train[1]
    assert mauve_score(sst2_dev[1][:120], reference, seed=0) >= 0.9  # measured 0.99 (seeds 0-2: 0.99-1.00)
    assert mauve_score(agnews[1][:120], reference, seed=0) <= 0.1  # measured 0.014


def test_mauve_buckets_follow_mauve_auto():
    assert [quality.mauve_buckets(n, 2000) for n in (5, 24, 25, 120, 5000)] == [2, 2, 2, 12, 200]


def test_distinct_n_closed_form():
    texts = ["a b c", "A b, d"]  # words: a b c | a b d
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab bc ab bd
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(["a"], 2) == 0.0


def test_mean_within_group_cosine_on_known_vectors():
    e1, e2 = np.eye(2)
    diag = (e1 + e2) / math.sqrt(2)
    emb = np.stack([e1, e2, diag, e1, e1 * 3, e2])
    groups = ["a", "a", "a", "b", "b", "singleton"]
    # group a: cos(e1,e2)=0, cos(e1,d)=cos(e2,d)=1/√2 -> √2/3; group b: parallel -> 1; singletons are skipped.
    assert mean_within_group_cosine(emb, groups) == pytest.approx((math.sqrt(2) / 3 + 1) / 2)
    assert math.isnan(mean_within_group_cosine(emb[:2], ["x", "y"]))


def test_mean_within_group_cosine_equals_pairwise_mean(sst2_train):
    _, emb = sst2_train
    x, groups = emb[:30], [i // 10 for i in range(30)]
    brute = np.mean([np.mean([x[i] @ x[j] for i in range(g * 10, g * 10 + 10) for j in range(i + 1, g * 10 + 10)])
                     for g in range(3)])
    assert mean_within_group_cosine(x, groups) == pytest.approx(brute, abs=1e-6)


def test_score_set_and_real_ceiling(sst2_train, sst2_dev, agnews):
    (train_rows, reference), (dev_rows, dev_emb) = sst2_train, sst2_dev
    train_y = train_rows.column("label").to_pylist()
    dev_y, dev_texts = dev_rows.column("label").to_pylist(), dev_rows.column("text").to_pylist()

    ceiling = real_ceiling(dev_emb, dev_y, dev_texts, reference, train_y, size=120, seed=0)
    assert ceiling["rows"] == ceiling["scored_rows"] == ceiling["two_sample_rows"] == 120
    assert ceiling["reference_rows"] == len(reference)
    assert ceiling["two_sample_auc"] <= 0.65 and ceiling["mauve"] >= 0.9 and ceiling["label_agreement"] >= 0.75
    assert ceiling["nearest_real_cosine_p10"] <= ceiling["nearest_real_cosine_median"] <= \
        ceiling["nearest_real_cosine_p90"] < 1.0
    assert ceiling["near_copy_rate"] is None and ceiling["within_group_cosine"] is None

    # AG News rows scored as if they were SST-2 generations: every score says so.
    ag_rows, ag_emb = agnews
    groups = [i // 5 for i in range(120)]
    junk = score_set(ag_emb[:120], ["positive"] * 120, ag_rows.column("text").to_pylist()[:120], reference, train_y,
                     seed=0, group_ids=groups,
                     input_cosine=near_copy_max_cosine(ag_emb[:120], ag_emb[:10]))
    assert junk["two_sample_auc"] >= 0.98 and junk["mauve"] <= 0.1
    assert junk["nearest_real_cosine_median"] < ceiling["nearest_real_cosine_median"]
    assert junk["near_copy_rate"] == pytest.approx(10 / 120)  # the 10 input rows are among the scored ones
    assert junk["within_group_cosine"] == pytest.approx(mean_within_group_cosine(ag_emb[:120], groups))
    assert score_set(ag_emb[:120], ["positive"] * 120, ag_rows.column("text").to_pylist()[:120], reference,
                     train_y, seed=0, group_ids=groups,
                     input_cosine=near_copy_max_cosine(ag_emb[:120], ag_emb[:10])) == junk


def test_score_set_caps_rows_and_reports_it(sst2_train, monkeypatch):
    rows, emb = sst2_train
    monkeypatch.setattr(quality.scores, "MAX_SCORED_ROWS", 500)
    labels, texts = rows.column("label").to_pylist(), rows.column("text").to_pylist()
    out = score_set(emb[:1200], labels[:1200], texts[:1200], emb[1200:], labels[1200:], seed=0)
    assert (out["rows"], out["scored_rows"], out["reference_rows"], out["two_sample_rows"]) == (1200, 500, 500, 500)
    # A caller that passes a sample of a larger set (scored_sample's) names the set's size; the sample's stays.
    sampled = score_set(emb[:1200], labels[:1200], texts[:1200], emb[1200:], labels[1200:], seed=0, rows=90_000)
    assert (sampled["rows"], sampled["sample_rows"]) == (90_000, 1200)
    assert {k: v for k, v in sampled.items() if k not in ("rows", "sample_rows")} == \
        {k: v for k, v in out.items() if k not in ("rows", "sample_rows")}


def test_scored_sample_takes_whole_groups_until_the_size():
    from synalign_ray.quality.scores import scored_sample

    groups = np.repeat(np.arange(300), np.random.default_rng(0).integers(1, 12, size=300))
    np.testing.assert_array_equal(scored_sample(groups[:40], 40, seed=1), np.arange(40))
    picked = scored_sample(groups, 500, seed=1)
    chosen = np.unique(groups[picked])
    assert np.isin(groups, chosen).sum() == len(picked)  # every row of a chosen group, no other row
    assert len(picked) >= 500 and np.all(np.diff(picked) > 0)
    # The fewest groups in the seeded order: without the last one chosen the sample falls short of the size.
    order = np.random.default_rng(1).permutation(300)
    assert set(chosen) == set(order[:len(chosen)])
    assert np.isin(groups, order[:len(chosen) - 1]).sum() < 500
    np.testing.assert_array_equal(scored_sample(groups, 500, seed=1), picked)
    assert not np.array_equal(scored_sample(groups, 500, seed=2), picked)


def test_score_set_without_labels_or_with_one_real_label(sst2_train):
    rows, emb = sst2_train
    texts = rows.column("text").to_pylist()
    unlabelled = score_set(emb[:50], None, texts[:50], emb[50:300], None, seed=0)
    assert unlabelled["label_agreement"] is None and "label_agreement_skipped" not in unlabelled
    one_label = score_set(emb[:50], ["positive"] * 50, texts[:50], emb[50:300], ["positive"] * 250, seed=0)
    assert one_label["label_agreement"] is None and "two labels" in one_label["label_agreement_skipped"]


# ------------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("override, key", [
    ("quality.min_letter_share=1.5", "quality.min_letter_share"),
    ("quality.max_ngram_repeat_share=-0.1", "quality.max_ngram_repeat_share"),
    ("quality.near_copy_cosine=0", "quality.near_copy_cosine"),
    ("quality.min_chars=0", "quality.min_chars"),
    ("quality.checks=[empty,spelling]", "quality.checks"),
    ("quality.min_length=3", "quality.min_length: unknown config key"),
])
def test_quality_config_rejects_bad_values(override, key):
    with pytest.raises(ConfigError) as err:
        build_config({}, [override])
    assert key in str(err.value)


def test_quality_config_rejects_min_chars_not_below_max_chars():
    with pytest.raises(ConfigError, match="min_chars"):
        build_config({"quality": {"min_chars": 50, "max_chars": 50}})
    assert build_config({"quality": {"min_chars": 5, "max_chars": 50}}).quality.max_chars == 50


def test_row_bounds_reject_a_preset_shorter_than_min_chars():
    with pytest.raises(ConfigError, match="no row could pass"):
        RowBounds.from_config(QualityConfig(min_chars=100), preset_max_chars=64)
    assert RowBounds.from_config(QualityConfig(), 64).max_chars == 64
    assert RowBounds.from_config(QualityConfig(max_chars=80), 64).max_chars == 80


def test_two_sample_auc_is_not_fooled_by_repeated_rows(real_embeddings):
    # A resample that repeats rows: with repeats split across folds the classifier recognises them and the AUC
    # rises although the rows come from the same distribution.
    _, emb = real_embeddings("sst2_train.parquet", 2000, 0)
    rng = np.random.default_rng(4)
    drawn = emb[rng.choice(60, size=400, replace=True)]  # 60 distinct rows, each about 7 times
    other = emb[1000:1400]
    assert quality.two_sample_auc(drawn, other, seed=0) < 0.7
