"""Prompts, presets, schemas and parsing (pure: no engine)."""

import json

import pytest

from synalign_ray.config import build_config
from synalign_ray.errors import ConfigError
from synalign_ray.generation import modes as M, parsing, presets, prompts as P
from synalign_ray.generation.worker import _split_evenly, request_seed
from tests.conftest import sample_rows


@pytest.fixture(scope="module")
def demos():
    rows = sample_rows("sst2_dev.parquet", 8, seed=5).to_pylist()
    return [r["text"] for r in rows]


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_prompts_hold_every_demo_and_attribute(name, demos):
    preset = presets.PRESETS[name]
    stage1 = P.stage1_messages(preset, demos, "positive")[0]["content"]
    for text in demos:
        assert json.dumps(text, ensure_ascii=False) in stage1
    for attr in preset.attributes:
        assert attr in stage1 and presets.attribute_key(attr) in stage1
    summary = {presets.attribute_key(a): f"value of {a}" for a in preset.attributes}
    stage2 = P.stage2_messages(preset, summary, "positive", 4)[0]["content"]
    assert all(v in stage2 for v in summary.values()) and "4 unique" in stage2
    one = P.one_stage_messages(preset, demos, "positive", 3)[0]["content"]
    assert all(json.dumps(t, ensure_ascii=False) in one for t in demos)
    assert not any(t in P.simprompt_messages(preset, "positive", 3)[0]["content"] for t in demos)


def test_schemas_follow_the_preset():
    preset = presets.PRESETS["agnews"]
    schema = P.summary_schema(preset)
    assert schema["required"] == ["news_topic", "writing_style", "news_length", "subtopics", "location"]
    assert schema["additionalProperties"] is False
    assert all(v["maxLength"] == P.SUMMARY_MAX_CHARS for v in schema["properties"].values())
    s = P.samples_schema(5, 120)["properties"]["samples"]
    assert s["minItems"] == s["maxItems"] == 5 and s["items"]["maxLength"] == 120


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
@pytest.mark.parametrize("n, max_tokens", [(1, 64), (3, 160), (5, 1024), (8, 576), (5, 3072)])
def test_char_budgets_let_the_longest_admitted_answer_close_within_max_tokens(name, n, max_tokens):
    preset = presets.PRESETS[name]
    b = P.char_budgets(preset, n, max_tokens)
    keys = [presets.attribute_key(a) for a in preset.attributes]

    def summary_chars(width):
        return len(json.dumps({k: "x" * width for k in keys}, separators=(",", ":")))

    def samples_chars(width):
        return len(json.dumps({"samples": ["x" * width] * n}, separators=(",", ":")))

    # At one token per character the longest admitted answer plus end-of-sequence fits; one more character
    # per string would not, unless the limit is the preset's own (SUMMARY_MAX_CHARS, max_sample_chars).
    assert b.fits == (summary_chars(1) + 1 <= max_tokens and samples_chars(1) + 1 <= max_tokens)
    if not b.fits:  # the JSON skeleton alone overflows: strings get the 1-character floor
        assert b.summary_value == 1 or b.sample == 1
        return
    assert summary_chars(b.summary_value) + 1 <= max_tokens
    assert b.summary_value == P.SUMMARY_MAX_CHARS or summary_chars(b.summary_value + 1) + 1 > max_tokens
    assert samples_chars(b.sample) + 1 <= max_tokens
    assert b.sample == preset.max_sample_chars or samples_chars(b.sample + 1) + 1 > max_tokens
    assert b.sample_tokens_needed == samples_chars(preset.max_sample_chars) + 1
    assert P.char_budgets(preset, n, b.sample_tokens_needed).sample == preset.max_sample_chars


def test_parse_accepts_valid_and_fenced_json():
    preset = presets.PRESETS["sst2"]
    good = {presets.attribute_key(a): "x " + a for a in preset.attributes}
    assert parsing.parse_summary(json.dumps(good), preset) == good
    assert parsing.parse_summary("```json\n" + json.dumps(good) + "\n```", preset) == good
    assert parsing.parse_samples('{"samples": [" a ", "b"]}', 2) == ["a", "b"]


@pytest.mark.parametrize("text, finish, reason", [
    ('{"samples": ["a", "b"', "length", "truncated"),
    ('{"samples": ["a", "b"', "stop", "truncated"),
    ('```json\n{"samples": [a, b]}\n```', "stop", "invalid_json"),
    ('{"samples": ["a"]}', "stop", "schema"),
    ('{"samples": ["a", ""]}', "stop", "schema"),
    ('{"samples": ["a", 3]}', "stop", "schema"),
    ('["a", "b"]', "stop", "schema"),
    ("Sure! Here are two reviews: a, b", "stop", "invalid_json"),
])
def test_parse_samples_rejects_with_a_counted_reason(text, finish, reason):
    with pytest.raises(parsing.ParseFailure) as err:
        parsing.parse_samples(text, 2, finish)
    assert err.value.reason == reason


def test_parse_summary_rejects_missing_or_empty_attributes():
    preset = presets.PRESETS["sst2"]
    partial = {presets.attribute_key(preset.attributes[0]): "drama"}
    with pytest.raises(parsing.ParseFailure, match="missing attribute"):
        parsing.parse_summary(json.dumps(partial), preset)
    empty = {presets.attribute_key(a): " " for a in preset.attributes}
    with pytest.raises(parsing.ParseFailure, match="not non-empty strings"):
        parsing.parse_summary(json.dumps(empty), preset)


def test_user_presets_from_yaml(tmp_path):
    f = tmp_path / "presets.yaml"
    f.write_text("tickets:\n  description: customer support tickets\n  sample_noun: ticket\n"
                 "  attributes: [product, urgency, tone]\n"
                 "empty:\n  description: nothing\n  attributes: []\n"
                 "typo:\n  description: x\n  atributes: [a]\n"
                 "counted:\n  description: x\n  attributes: [a]\n  samples_per_summary: 4\n")
    p = presets.load_preset("tickets", str(f))
    assert p.attributes == ("product", "urgency", "tone")
    # How many samples a summary yields is a run setting; a preset that sets it is told where it goes.
    with pytest.raises(ConfigError, match="set generation.samples_per_summary"):
        presets.load_preset("counted", str(f))
    with pytest.raises(ConfigError, match="needs a non-empty list of attributes"):
        presets.load_preset("empty", str(f))
    with pytest.raises(ConfigError, match="unknown key"):
        presets.load_preset("typo", str(f))
    f2 = tmp_path / "lengths.yaml"
    f2.write_text("short:\n  description: d\n  attributes: [a]\n  max_sample_chars: 40\n"
                  "zero:\n  description: d\n  attributes: [a]\n  max_sample_chars: 0\n")
    assert presets.load_preset("short", str(f2)).max_sample_chars == 40
    assert p.max_sample_chars == presets.Preset.max_sample_chars
    with pytest.raises(ConfigError, match="max_sample_chars must be a positive integer"):
        presets.load_preset("zero", str(f2))
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        presets.load_preset("nope", str(f))
    with pytest.raises(ConfigError, match="presets_file not found"):
        presets.load_preset("tickets", str(tmp_path / "missing.yaml"))


def test_the_mode_table_covers_every_configurable_mode():
    from typing import get_args

    from synalign_ray.config import GenerationConfig

    assert set(get_args(GenerationConfig.model_fields["mode"].annotation)) == set(M.MODES)
    assert M.MODE_STAGES == {"two_stage": (M.SUMMARY_STAGE, M.SAMPLE_STAGE), "one_stage": (M.SAMPLE_STAGE,),
                             "simprompt": (M.SAMPLE_STAGE,)}
    assert all(set(stages) <= set(M.STAGES) for stages in M.MODE_STAGES.values())


def test_samples_per_summary_must_be_positive():
    with pytest.raises(ConfigError, match="generation.samples_per_summary"):
        build_config({}, ["generation.samples_per_summary=0"])


def test_request_seeds_and_token_shares():
    assert request_seed(0, 5, "stage1", 0) == request_seed(0, 5, "stage1", 0)
    assert len({request_seed(0, 5, "stage1", a) for a in range(4)}) == 4
    assert request_seed(0, 5, "stage1", 0) != request_seed(0, 6, "stage1", 0)
    for total, n in [(10, 3), (0, 4), (7, 7), (100, 1)]:
        shares = _split_evenly(total, n)
        assert sum(shares) == total and max(shares) - min(shares) <= 1


def test_normalised_duplicates():
    assert parsing.normalise_text("  A  Great\tMovie ") == parsing.normalise_text("a great movie")


# ------------------------------------------------------------------------------------------- plain-text format


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_text_format_two_stage_carries_the_summary_and_continues_the_groups_list(name, demos):
    preset = presets.PRESETS[name]
    budgets = P.char_budgets(preset, 5, 1024)
    first = M.stage1_prompt(preset, demos, "positive", "text", budgets)
    assert first.schema is None and first.answer_prefix == f"{P.attribute_title(preset.attributes[0])}:"
    assert all(f"{i + 1}. {P.one_line(t)}" in first.messages[0]["content"] for i, t in enumerate(demos))
    summary = {presets.attribute_key(a): f"value of {a}" for a in preset.attributes}
    second = M.stage2_prompt(preset, "two_stage", "text", 5, budgets, demos, "positive", summary)
    assert all(f"{P.attribute_title(a)}: value of {a}" in second.messages[0]["content"] for a in preset.attributes)
    assert second.answer_prefix.endswith(f"\n{len(demos) + 1}.") and "\n1. " in second.answer_prefix
    assert second.answer_prefix.startswith(P.attribute_title(f"{preset.sample_noun}s with {preset.label_text('positive')}:"))
    assert second.n == 5 and second.stop == ("\n",) and second.max_tokens == P.text_sample_tokens(preset)
    one = M.stage2_prompt(preset, "one_stage", "text", 5, budgets, demos, "positive")
    assert "value of" not in one.messages[0]["content"] and one.answer_prefix == second.answer_prefix
    zero = M.stage2_prompt(preset, "simprompt", "text", 5, budgets, demos, "positive")
    assert zero.answer_prefix.endswith(":\n1.") and not any(P.one_line(t) in zero.messages[0]["content"] for t in demos)
    json_first = M.stage1_prompt(preset, demos, "positive", "json", budgets)
    assert json_first.schema == P.summary_schema(preset, budgets.summary_value) and not json_first.answer_prefix


def test_text_summary_parse_is_lenient_but_needs_an_attribute():
    preset = presets.PRESETS["sst2"]
    answer = (" Drama, romance\n- Topic: love and loss.\nsomething unrelated\nLanguage habits: ...\n"
              "Review length: short sentences\nMovie genre: repeated, ignored")
    assert parsing.parse_summary_text(answer, preset) == {"movie_genre": "Drama, romance", "topic": "love and loss",
                                                    "review_length": "short sentences"}
    # a line cut off by max_tokens is not trusted
    assert parsing.parse_summary_text(" comedy\nTopic: fam", preset, "length") == {"movie_genre": "comedy"}
    long = " " + "word " * 40
    assert len(parsing.parse_summary_text(long, preset)["movie_genre"]) <= P.SUMMARY_MAX_CHARS
    with pytest.raises(parsing.ParseFailure) as err:
        parsing.parse_summary_text(" ...\nnothing here", preset)
    assert err.value.reason == "no_attributes"


def test_text_samples_parse_keeps_finished_lines_only():
    got = parsing.parse_samples_text([' "A warm, funny film."', " cut off in the midd", "  ", " fine\n", " 1. I am a fan"],
                               ["stop", "length", "stop", "stop", "stop"])
    assert got == ["A warm, funny film.", "fine", "I am a fan"]
    for answers, finishes, reason in ((["x", "y"], ["length", "length"], "truncated"),
                                      ([" ", ""], ["stop", "stop"], "empty")):
        with pytest.raises(parsing.ParseFailure) as err:
            parsing.parse_samples_text(answers, finishes)
        assert err.value.reason == reason


def test_prompt_fingerprint_changes_with_mode_and_format():
    preset = presets.PRESETS["sst2"]
    hashes = {M.prompt_fingerprint(preset, mode, fmt, 5, 1024) for mode in M.MODE_STAGES for fmt in M.OUTPUT_FORMATS}
    assert len(hashes) == len(M.MODE_STAGES) * len(M.OUTPUT_FORMATS)
    assert M.prompt_fingerprint(preset, "two_stage", "text", 5, 1024) == M.prompt_fingerprint(
        preset, "two_stage", "text", 5, 1024)
