"""Presets: what a data set is and which attributes describe it (the built-in SST-2, AG News, Amazon and search-query
ones, or a user's YAML file); they drive every prompt and schema in prompts.py."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synalign_ray.overrides import yaml_error_line
from synalign_ray.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """What the data is and which attributes describe it; drives every prompt and schema."""

    name: str
    description: str
    sample_noun: str
    attributes: tuple[str, ...]
    label_meanings: dict[str, str] = field(default_factory=dict)
    instructions: tuple[str, ...] = ()
    max_sample_chars: int = 300  # longest sample the stage-2 schema admits; near the real data's 99th percentile

    def label_text(self, label: str | None) -> str:
        if label is None:
            return ""
        return self.label_meanings.get(label, label)


PRESETS: dict[str, Preset] = {
    "sst2": Preset(
        name="sst2",
        description="the SST-2 dataset of short movie review snippets labelled by sentiment",
        sample_noun="movie review snippet",
        attributes=("movie genre", "topic", "language habits", "review length"),
        label_meanings={"positive": "positive sentiment", "negative": "negative sentiment"},
        instructions=("Each snippet talks about a different movie of a similar genre.",
                      "Keep the sentiment of the examples.",
                      "Match the review length and language habits of the summary."),
        max_sample_chars=192,  # SST-2 train: 99th percentile 192 characters, longest 267
    ),
    "agnews": Preset(
        name="agnews",
        description="the AG News dataset of news article titles and leads labelled by topic",
        sample_noun="news article lead",
        attributes=("news topic", "writing style", "news length", "subtopics", "location"),
        label_meanings={"World": "world news", "Sports": "sports news", "Business": "business news",
                        "Sci/Tech": "science and technology news"},
        instructions=("Each article covers a different event within the same news topic.",
                      "Use 1-2 of the subtopics for each article.",
                      "Match the writing style and length of the summary."),
        max_sample_chars=450,  # AG News: 99th percentile 434 characters
    ),
    "amazon": Preset(
        name="amazon",
        description="a dataset of Amazon product reviews labelled by product category",
        sample_noun="product review",
        attributes=("product information", "usage experience", "writing style", "review length",
                    "language habits", "subtopics"),
        instructions=("Each review describes a different product in the same category as the product info.",
                      "Follow the usage experience, writing style and subtopics of the summary.",
                      "Select only 1-2 subtopics for each review.",
                      "Make each review unique, concise and distinct in language."),
        max_sample_chars=600,
    ),
    "queries": Preset(
        name="queries",
        description="search queries that users type into an app or item catalogue's search box",
        sample_noun="search query",
        attributes=("app or item name", "substrings", "typos", "language habits", "intent"),
        instructions=("Each query looks for a different but similar app or item.",
                      "Keep queries short, as users type them: fragments, substrings and occasional typos.",
                      "Vary the wording; do not repeat a query."),
        max_sample_chars=64,
    ),
}


def _preset_from_mapping(name: str, spec: Any, where: str) -> Preset:
    if not isinstance(spec, dict):
        raise ConfigError(f"preset '{name}' in {where} must be a mapping")
    allowed = {"description", "sample_noun", "attributes", "label_meanings", "instructions", "max_sample_chars"}
    if "samples_per_summary" in spec:
        raise ConfigError(f"preset '{name}' in {where}: samples_per_summary is a run setting, not a preset's: set "
                          "generation.samples_per_summary")
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"preset '{name}' in {where}: unknown key(s) {sorted(unknown)}")
    attrs = spec.get("attributes") or []
    if not isinstance(attrs, list) or not attrs or not all(isinstance(a, str) and a.strip() for a in attrs):
        raise ConfigError(f"preset '{name}' in {where} needs a non-empty list of attributes")
    if not isinstance(spec.get("description"), str) or not spec["description"].strip():
        raise ConfigError(f"preset '{name}' in {where} needs a description")
    max_chars = spec.get("max_sample_chars", Preset.max_sample_chars)
    if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars <= 0:
        raise ConfigError(f"preset '{name}' in {where}: max_sample_chars must be a positive integer")
    keys = [attribute_key(a) for a in attrs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"preset '{name}' in {where}: attributes must be distinct")
    return Preset(name=name, description=spec["description"].strip(),
                  sample_noun=str(spec.get("sample_noun", "sample")), attributes=tuple(attrs),
                  label_meanings={str(k): str(v) for k, v in (spec.get("label_meanings") or {}).items()},
                  instructions=tuple(spec.get("instructions") or ()),
                  max_sample_chars=max_chars)


def load_preset(name: str, presets_file: str | None = None) -> Preset:
    """A built-in preset, or one defined in the user's YAML file (which may also override built-ins)."""
    if presets_file:
        p = Path(presets_file)
        if not p.is_file():
            raise ConfigError(f"generation.presets_file not found: {p}")
        try:
            specs = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"generation.presets_file {p} is not valid YAML: {yaml_error_line(err)}") from None
        if not isinstance(specs, dict):
            raise ConfigError(f"generation.presets_file {p} must map preset names to definitions")
        if name in specs:
            return _preset_from_mapping(name, specs[name], str(p))
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}': built-in presets are {sorted(PRESETS)}"
                          + ("" if presets_file else "; define your own with generation.presets_file"))
    return PRESETS[name]


def attribute_key(attribute: str) -> str:
    """JSON key for an attribute: 'movie genre' -> 'movie_genre'."""
    key = re.sub(r"[^0-9a-zA-Z]+", "_", attribute.strip().lower()).strip("_")
    return key or "attribute"
