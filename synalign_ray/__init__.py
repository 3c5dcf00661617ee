"""synalign_ray: SynAlign (few-shot LLM synthetic data with distribution matching) as a Ray batch job.

Importing the package is cheap: it loads neither torch, ray nor vllm; each stage imports what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public API, resolved on first use so that `import synalign_ray` stays light (the CLI starts in a blink).
_API = {
    "SynAlignConfig": "synalign_ray.config",
    "load_config": "synalign_ray.config",
    "embed": "synalign_ray.api",
    "select": "synalign_ray.api",
    "generate": "synalign_ray.api",
    "align": "synalign_ray.api",
    "run": "synalign_ray.api",
    "coverage": "synalign_ray.api",
    "evaluate": "synalign_ray.evaluation",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'synalign_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
