"""Prompts and JSON schemas for the two prompting stages (paper Figures 6 and 7), in the JSON and plain-text formats.

Pure: no vLLM, no Ray. Stage 1 summarises a demonstration group's key attributes; stage 2 writes n new samples
from that summary. `one_stage` and `simprompt` are the paper's comparison modes (their table is modes.py).
"""


from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from synalign_ray.generation.presets import Preset, attribute_key


# ------------------------------------------------------------------------------------------------- schemas


SUMMARY_MAX_CHARS = 80  # one attribute's summary: a phrase, not an essay


@dataclass(frozen=True)
class CharBudgets:
    """Longest string the schemas admit: per stage-1 attribute value and per stage-2 sample."""

    summary_value: int
    sample: int
    sample_tokens_needed: int  # max_tokens that would let samples reach the preset's max_sample_chars
    fits: bool  # False when max_tokens cannot hold even the JSON skeleton with one-character strings


def char_budgets(preset: Preset, n: int, max_tokens: int) -> CharBudgets:
    """Character limits under which a compact JSON answer always closes within `max_tokens`.

    A token decodes to at least one character for nearly all text (the exceptions are characters split into
    several byte tokens, e.g. emoji), so the JSON skeleton plus the strings' limits, counted in characters,
    bounds the answer's token count; one token is kept for the end-of-sequence token.
    """
    keys = [attribute_key(a) for a in preset.attributes]
    summary_skeleton = len(json.dumps({k: "" for k in keys}, separators=(",", ":")))
    samples_skeleton = len(json.dumps({"samples": [""] * n}, separators=(",", ":")))
    value = min(SUMMARY_MAX_CHARS, (max_tokens - 1 - summary_skeleton) // len(keys))
    sample = min(preset.max_sample_chars, (max_tokens - 1 - samples_skeleton) // n)
    return CharBudgets(summary_value=max(value, 1), sample=max(sample, 1),
                       sample_tokens_needed=samples_skeleton + 1 + n * preset.max_sample_chars,
                       fits=value >= 1 and sample >= 1)


def summary_schema(preset: Preset, max_chars: int = SUMMARY_MAX_CHARS) -> dict[str, Any]:
    """Stage 1 output: one short string field per attribute, all required, nothing else."""
    props = {attribute_key(a): {"type": "string", "minLength": 1, "maxLength": max_chars} for a in preset.attributes}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def samples_schema(n: int, max_chars: int) -> dict[str, Any]:
    """Stage 2 output: exactly n non-empty strings of at most max_chars characters."""
    return {"type": "object",
            "properties": {"samples": {"type": "array",
                                       "items": {"type": "string", "minLength": 1, "maxLength": max_chars},
                                       "minItems": n, "maxItems": n}},
            "required": ["samples"], "additionalProperties": False}


# ------------------------------------------------------------------------------------------------- prompts

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Prompt:
    """One request to the engine: chat messages, optionally the start of the answer (prefilled after the chat
    template's generation prompt), a JSON schema or stop strings, how many answers to sample, and their length."""

    messages: Messages
    answer_prefix: str = ""
    schema: dict[str, Any] | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    max_tokens: int | None = None  # per answer, capped by the sampling config's max_tokens (None: that)


def _examples_block(texts: list[str], label: str | None) -> str:
    rows = [{"text": t, **({"label": label} if label is not None else {})} for t in texts]
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)


def stage1_messages(preset: Preset, texts: list[str], label: str | None) -> Messages:
    """Figure 6: analyse the demonstrations and summarise their key attributes as JSON."""
    attrs = "\n".join(f"- {a} (key \"{attribute_key(a)}\")" for a in preset.attributes)
    label_line = f"All examples have the label \"{label}\" ({preset.label_text(label)}).\n" if label else ""
    content = (
        f"[Task]\nYou are provided with examples from {preset.description}. Analyze the examples and summarize "
        f"their key characteristics, which will guide the generation of new data.\n\n"
        f"[Sample Data]\nHere are examples in JSON format from the dataset:\n{_examples_block(texts, label)}\n"
        f"{label_line}\n"
        f"[Instructions]\n1. Summarize the following characteristics:\n{attrs}\n"
        f"2. Provide the summary as one JSON object with exactly these keys, each a short string.\n\n"
        f"Now, begin summarizing:"
    )
    return [{"role": "user", "content": content}]


def stage2_messages(preset: Preset, summary: dict[str, str], label: str | None, n: int) -> Messages:
    """Figure 7: write n new samples that keep the summarised attributes but vary content and wording."""
    target = f" with {preset.label_text(label)}" if label else ""
    rules = "\n".join(f"{i + 3}. {r}" for i, r in enumerate(preset.instructions))
    content = (
        f"[Task]\nWrite {n} unique {preset.sample_noun}s{target}, like those in {preset.description}.\n\n"
        f"[Demonstration summary]\nHere is the summary of the examples provided:\n"
        f"{json.dumps(summary, ensure_ascii=False, indent=1)}\n\n"
        f"[Instructions]\n1. Follow the attributes described in the summary.\n"
        f"2. Each {preset.sample_noun} must differ in content and wording from the others.\n"
        f"{rules + chr(10) if rules else ''}"
        f"Answer with a JSON object {{\"samples\": [...]}} holding exactly {n} strings.\n\nNow, begin writing:"
    )
    return [{"role": "user", "content": content}]


def one_stage_messages(preset: Preset, texts: list[str], label: str | None, n: int) -> Messages:
    """Ablation (paper Table 4): write new samples straight from the demonstrations, no attribute summary."""
    target = f" with {preset.label_text(label)}" if label else ""
    content = (
        f"[Task]\nHere are examples from {preset.description}:\n{_examples_block(texts, label)}\n\n"
        f"Write {n} new, unique {preset.sample_noun}s{target} similar to these examples but different in content "
        f"and wording.\nAnswer with a JSON object {{\"samples\": [...]}} holding exactly {n} strings."
    )
    return [{"role": "user", "content": content}]


def simprompt_messages(preset: Preset, label: str | None, n: int) -> Messages:
    """SimPrompt baseline: class-conditional, zero-shot; no demonstrations."""
    target = f" with {preset.label_text(label)}" if label else ""
    content = (f"Write {n} {preset.sample_noun}s{target}, like those in {preset.description}.\n"
               f"Answer with a JSON object {{\"samples\": [...]}} holding exactly {n} strings.")
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------------------- plain-text format
# Measured on the packaged SmolLM2-135M (jobs/benchmarks/benchmark_quality.py): under a JSON grammar with length caps it writes
# digit runs and echoed keys; continuing a numbered list of real rows, one line per answer, it writes rows a
# classifier barely tells from real ones. The text format keeps both stages: stage 1 answers "Attribute: value"
# lines (parsed leniently), stage 2 shows that summary and continues the group's numbered list with n answers.


def attribute_title(attribute: str) -> str:
    """'movie genre' -> 'Movie genre': how an attribute opens its line in the text format."""
    return attribute[:1].upper() + attribute[1:]


def one_line(text: str) -> str:
    return " ".join(text.split())


def numbered(texts: list[str]) -> str:
    return "\n".join(f"{i + 1}. {one_line(t)}" for i, t in enumerate(texts))


def text_sample_tokens(preset: Preset) -> int:
    """Token limit of one text-format sample: a sample of max_sample_chars characters takes about a quarter as many
    tokens; half leaves room for odd tokenisation, and a runaway answer stops there instead of at max_tokens."""
    return max(16, preset.max_sample_chars // 2)


def stage1_text(preset: Preset, texts: list[str], label: str | None) -> Prompt:
    """Figure 6 in plain text: the group as a numbered list, the answer prefilled with the first attribute."""
    label_line = f"All of them have {preset.label_text(label)}.\n" if label else ""
    lines = "\n".join(f"{attribute_title(a)}: ..." for a in preset.attributes)
    content = (
        f"Here are examples from {preset.description}:\n{numbered(texts)}\n{label_line}\n"
        f"Summarize the key characteristics these examples share, to guide writing new ones. "
        f"Answer with one short line per characteristic, exactly in this form:\n{lines}"
    )
    return Prompt([{"role": "user", "content": content}], answer_prefix=f"{attribute_title(preset.attributes[0])}:",
                  stop=("\n\n",), max_tokens=24 * len(preset.attributes))


def _characteristics(summary: dict[str, str], preset: Preset) -> str:
    titles = {attribute_key(a): attribute_title(a) for a in preset.attributes}
    return "\n".join(f"- {titles.get(k, k)}: {v}" for k, v in summary.items())


def stage2_text(preset: Preset, summary: dict[str, str] | None, texts: list[str], label: str | None,
                n: int) -> Prompt:
    """Figure 7 in plain text: the stage-1 summary (absent in one_stage) and the task, then the answer continues
    the group's numbered list; each of the n answers is one new line."""
    target = f" with {preset.label_text(label)}" if label else ""
    rules = "".join(f"- {r}\n" for r in preset.instructions)
    about = (f"They share these characteristics:\n{_characteristics(summary, preset)}\n\n" if summary else "")
    content = (
        f"Write new {preset.sample_noun}s{target}, like those in {preset.description}. {about}"
        f"Rules:\n{rules}- Each {preset.sample_noun} is new: different content and wording from the others.\n"
        f"- One {preset.sample_noun} per line, numbered."
    )
    # The list opens with what it lists: the label right before the answer keeps a small model on it.
    heading = attribute_title(f"{preset.sample_noun}s{target}:\n")
    prefix = heading + (numbered(texts) + "\n" if texts else "") + f"{len(texts) + 1}."
    return Prompt([{"role": "user", "content": content}], answer_prefix=prefix, stop=("\n",), n=n,
                  max_tokens=text_sample_tokens(preset))
