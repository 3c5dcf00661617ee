"""Config text handling: dotted `key.path=value` overrides from the command line and one-line YAML errors.

Kept apart from the models in config.py so presets files and configs report YAML problems the same way.
"""

from __future__ import annotations

from typing import Any

import yaml

from synalign_ray.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-typed value (`k=5` is an int, `x=null` is None)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted override into the nested dict; unknown keys are caught later by validation."""
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def yaml_error_line(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
