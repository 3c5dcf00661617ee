"""Importing the package, its light modules and its public API names must load neither torch, ray nor vllm (fast
CLI start-up, cheap `import synalign_ray` in a notebook)."""

import subprocess
import sys

import synalign_ray

API = ("SynAlignConfig", "load_config", "run", "embed", "select", "generate", "align", "coverage", "evaluate")


def test_import_loads_no_heavy_frameworks():
    code = (
        "import sys, synalign_ray, synalign_ray.cli, synalign_ray.config, synalign_ray.io, synalign_ray.errors;"
        f"from synalign_ray import {', '.join(API)};"
        "print(','.join(m for m in ('torch', 'ray', 'vllm', 'sentence_transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing synalign_ray loaded: {out.stdout.strip()}"


def test_api_names_are_public_and_callable():
    assert set(API) <= set(synalign_ray.__all__) and set(API) <= set(dir(synalign_ray))
    assert all(callable(getattr(synalign_ray, name)) for name in API)
    assert synalign_ray.SynAlignConfig().output.path == "synalign_output"
