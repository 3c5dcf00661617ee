"""The mode table: what each generation mode sends, which stages it runs, and how its answers are parsed.

The worker, the ledger, the prompt fingerprint and the CLI read stage names and modes from here only; a new
mode is one entry (and its JSON messages in prompts.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

from synalign_ray.generation.parsing import parse_samples, parse_samples_text, parse_summary, parse_summary_text
from synalign_ray.generation.presets import Preset
from synalign_ray.generation.prompts import (CharBudgets, Messages, Prompt, char_budgets, one_stage_messages,
                                            samples_schema, simprompt_messages, stage1_messages, stage1_text,
                                            stage2_messages, stage2_text, summary_schema)

OUTPUT_FORMATS = ("text", "json")
SUMMARY_STAGE = "stage1"  # attribute summarisation (paper Figure 6)
SAMPLE_STAGE = "stage2"   # sample writing (Figure 7, or the comparison modes' prompt)
STAGES = (SUMMARY_STAGE, SAMPLE_STAGE)


@dataclass(frozen=True)
class Mode:
    """One generation mode: whether a summary stage runs first and feeds the samples, whether the sample prompt
    shows the demonstrations, and its JSON-format messages (preset, texts, summary, label, n)."""

    summarise: bool
    shows_demonstrations: bool
    json_messages: Callable[[Preset, list[str], dict[str, str] | None, str | None, int], Messages]

    @property
    def stages(self) -> tuple[str, ...]:
        return (SUMMARY_STAGE, SAMPLE_STAGE) if self.summarise else (SAMPLE_STAGE,)


MODES: dict[str, Mode] = {
    "two_stage": Mode(True, True, lambda p, texts, summary, label, n: stage2_messages(p, summary or {}, label, n)),
    "one_stage": Mode(False, True, lambda p, texts, summary, label, n: one_stage_messages(p, texts, label, n)),
    "simprompt": Mode(False, False, lambda p, texts, summary, label, n: simprompt_messages(p, label, n)),
}
MODE_STAGES = {name: mode.stages for name, mode in MODES.items()}


def stage1_prompt(preset: Preset, texts: list[str], label: str | None, fmt: str, budgets: CharBudgets) -> Prompt:
    if fmt == "text":
        return stage1_text(preset, texts, label)
    return Prompt(stage1_messages(preset, texts, label), schema=summary_schema(preset, budgets.summary_value))


def stage2_prompt(preset: Preset, mode: str, fmt: str, n: int, budgets: CharBudgets, texts: list[str],
                  label: str | None, summary: dict[str, str] | None = None) -> Prompt:
    """The prompt that writes samples: from the summary (two_stage), the demonstrations (one_stage) or the label
    alone (simprompt)."""
    m = MODES[mode]
    if fmt == "text":
        return stage2_text(preset, summary if m.summarise else None, texts if m.shows_demonstrations else [], label, n)
    return Prompt(m.json_messages(preset, texts, summary, label, n), schema=samples_schema(n, budgets.sample))


def parse_stage1(preset: Preset, fmt: str, texts: list[str], finish_reasons: list[str | None]) -> dict[str, str]:
    if fmt == "text":
        return parse_summary_text(texts[0], preset, finish_reasons[0])
    return parse_summary(texts[0], preset, finish_reasons[0])


def parse_stage2(fmt: str, n: int, texts: list[str], finish_reasons: list[str | None]) -> list[str]:
    if fmt == "text":
        return parse_samples_text(texts, finish_reasons)
    return parse_samples(texts[0], n, finish_reasons[0])


def prompt_fingerprint(preset: Preset, mode: str, fmt: str, n: int, max_tokens: int) -> str:
    """A hash of every template, preset field and schema this mode and format use, recorded in manifests so runs
    can be compared."""
    budgets = char_budgets(preset, n, max_tokens)
    probe = [stage2_prompt(preset, mode, fmt, n, budgets, ["<x>"], "<y>", {"a": "<s>"}), mode, fmt]
    if SUMMARY_STAGE in MODE_STAGES[mode]:
        probe.append(stage1_prompt(preset, ["<x>"], "<y>", fmt, budgets))
    return hashlib.sha256(json.dumps(probe, sort_keys=True, default=lambda p: p.__dict__).encode()).hexdigest()[:16]
