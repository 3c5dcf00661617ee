"""Importing the package and its light modules must load neither torch, ray nor vllm (fast CLI start-up)."""

import subprocess
import sys


def test_import_loads_no_heavy_frameworks():
    code = (
        "import sys, synalign_ray, synalign_ray.cli, synalign_ray.config, synalign_ray.io, synalign_ray.errors;"
        "print(','.join(m for m in ('torch', 'ray', 'vllm', 'sentence_transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing synalign_ray loaded: {out.stdout.strip()}"
