"""Parsing the LLM's answers: JSON answers validated against the schemas, plain-text answers parsed leniently.

Pure: no vLLM, no Ray. A `ParseFailure` names why an answer is unusable (a counter in the run's failures).
"""

from __future__ import annotations

import json
import re
from typing import Any

from synalign_ray.generation.presets import Preset, attribute_key
from synalign_ray.generation.prompts import SUMMARY_MAX_CHARS, attribute_title, one_line


class ParseFailure(ValueError):
    """LLM output that is not usable; `reason` is a short counter name (truncated, invalid_json, schema)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _load_json(text: str, finish_reason: str | None) -> Any:
    if finish_reason == "length":
        raise ParseFailure("truncated", "output hit max_tokens before the JSON closed")
    stripped = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, flags=re.S)
    if fenced:
        stripped = fenced.group(1)
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as err:
        reason = "truncated" if err.pos >= len(stripped) - 1 else "invalid_json"
        raise ParseFailure(reason, f"{err.msg} at char {err.pos}") from None


def parse_summary(text: str, preset: Preset, finish_reason: str | None = None) -> dict[str, str]:
    """Validate a stage-1 answer against the preset's attributes; returns {attribute_key: value}."""
    data = _load_json(text, finish_reason)
    if not isinstance(data, dict):
        raise ParseFailure("schema", f"expected a JSON object, got {type(data).__name__}")
    keys = [attribute_key(a) for a in preset.attributes]
    missing = [k for k in keys if k not in data]
    if missing:
        raise ParseFailure("schema", f"missing attribute(s) {missing}")
    bad = [k for k in keys if not isinstance(data[k], str) or not data[k].strip()]
    if bad:
        raise ParseFailure("schema", f"attribute(s) {bad} are not non-empty strings")
    return {k: data[k].strip() for k in keys}


def parse_samples(text: str, n: int, finish_reason: str | None = None) -> list[str]:
    """Validate a stage-2 (or one-stage/simprompt) answer: exactly n non-empty strings."""
    data = _load_json(text, finish_reason)
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list):
        raise ParseFailure("schema", "expected an object with a 'samples' list")
    samples = data["samples"]
    if len(samples) != n:
        raise ParseFailure("schema", f"expected {n} samples, got {len(samples)}")
    if not all(isinstance(s, str) and s.strip() for s in samples):
        raise ParseFailure("schema", "every sample must be a non-empty string")
    return [s.strip() for s in samples]


def normalise_text(text: str) -> str:
    """Key for exact-duplicate detection: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def parse_summary_text(text: str, preset: Preset, finish_reason: str | None = None) -> dict[str, str]:
    """Lenient stage-1 parse: every 'Attribute: value' line naming one of the preset's attributes, in preset order.

    Lines naming no attribute and placeholder values are skipped; a line cut off by max_tokens is dropped. At
    least one attribute must remain."""
    full = f"{attribute_title(preset.attributes[0])}:{text}"
    lines = full.splitlines()
    if finish_reason == "length" and lines:
        lines = lines[:-1]
    keys = {attribute_key(a) for a in preset.attributes}
    found: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.strip().lstrip("-*• ").partition(":")
        key, value = attribute_key(name), one_line(value).strip(" .\"'")
        if sep and key in keys and key not in found and any(c.isalpha() for c in value):
            found[key] = value[:SUMMARY_MAX_CHARS].rsplit(" ", 1)[0] if len(value) > SUMMARY_MAX_CHARS else value
    if not found:
        raise ParseFailure("no_attributes", f"no 'attribute: value' line in {text[:80]!r}")
    return {attribute_key(a): found[attribute_key(a)] for a in preset.attributes if attribute_key(a) in found}


def parse_samples_text(texts: list[str], finish_reasons: list[str | None]) -> list[str]:
    """Stage-2 text answers: each is the rest of one numbered line. An answer that ran to max_tokens without
    ending its line is cut off and dropped; the quality checks judge the rest."""
    samples = []
    for text, finish in zip(texts, finish_reasons):
        if finish == "length":
            continue
        # A model that restarts the list ("1. …") inside its answer: the number is list markup, not text.
        line = re.sub(r"^\d{1,3}[.)]\s+", "", one_line(text).strip()).strip('"').strip()
        if line:
            samples.append(line)
    if not samples:
        reason = "truncated" if any(f == "length" for f in finish_reasons) else "empty"
        raise ParseFailure(reason, f"no usable line among {len(texts)} answers")
    return samples
