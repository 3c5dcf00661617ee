"""Generator actor body (a plain class; the driver makes it remote): one vLLM engine, batches of groups in,
synthetic rows out. Each stage runs for the whole batch in one `generate` call; bad output is retried, then
counted and dropped, never allowed to stop the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from synalign_ray.config import GenerationConfig
from synalign_ray.generation.modes import (MODE_STAGES, SAMPLE_STAGE, STAGES, SUMMARY_STAGE, parse_stage1,
                                          parse_stage2, stage1_prompt, stage2_prompt)
from synalign_ray.generation.parsing import ParseFailure
from synalign_ray.generation.presets import Preset
from synalign_ray.generation.prompts import Prompt, char_budgets

log = logging.getLogger(__name__)


@dataclass
class Group:
    """One demonstration group handed out by the tracker (texts already looked up by the driver)."""

    group_id: int
    label: str | None
    demo_row_ids: list[int]
    texts: list[str]


@dataclass
class BatchResult:
    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    tokens: dict[str, dict[str, int]]
    seconds: float
    group_ids: list[int] = field(default_factory=list)


def request_seed(base: int, group_id: int, stage: str, attempt: int) -> int:
    """Per-request seed: independent of which actor or batch runs the group, different on each retry."""
    digest = hashlib.sha256(f"{base}:{group_id}:{stage}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _split_evenly(total: int, n: int) -> list[int]:
    """Integer shares of `total` over n rows whose sum is exactly `total`."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


class Generator:
    """Two-stage (or one-stage / simprompt) generation for batches of demonstration groups.

    The engine comes from the construction config; preset, mode, sample count and sampling come with each
    batch, so one engine serves any number of runs of the same model.
    """

    def __init__(self, cfg: GenerationConfig, cache_dir: str | None = None):
        from synalign_ray.generation.engine import Engine

        self.engine = Engine(cfg, cache_dir)
        self.model_name = cfg.model

    def info(self) -> dict[str, Any]:
        return {"model": self.model_name, "model_path": self.engine.model_path,
                "max_model_len": self.engine.max_model_len}

    def _run_stage(self, cfg: GenerationConfig, stage: str, prompts: dict[int, Prompt], parse,
                   tokens: dict[str, dict[str, int]], failures: list[dict[str, Any]],
                   group_tokens: dict[int, list[int]]) -> dict[int, Any]:
        """Send every pending prompt, parse, and resend the failed ones up to max_retries times."""
        done: dict[int, Any] = {}
        pending = dict(prompts)
        tokens.setdefault(stage, {"prompt": 0, "completion": 0})
        for attempt in range(cfg.max_retries + 1):
            if not pending:
                break
            gids = list(pending)
            outs = self.engine.complete([pending[g] for g in gids],
                                        [request_seed(cfg.sampling.seed, g, stage, attempt) for g in gids],
                                        cfg.sampling)
            still: dict[int, Prompt] = {}
            for gid, out in zip(gids, outs):
                tokens[stage]["prompt"] += out.prompt_tokens
                tokens[stage]["completion"] += out.completion_tokens
                group_tokens[gid][0] += out.prompt_tokens
                group_tokens[gid][1] += out.completion_tokens
                if out.error:
                    # Too long for the context: retrying cannot help, so report and skip the group.
                    failures.append({"group_id": gid, "stage": stage, "reason": out.error.split(":")[0],
                                     "detail": out.error, "attempts": attempt + 1})
                    continue
                try:
                    done[gid] = parse(out.texts, out.finish_reasons)
                except ParseFailure as err:
                    if attempt == cfg.max_retries:
                        failures.append({"group_id": gid, "stage": stage, "reason": err.reason,
                                         "detail": str(err)[:200], "attempts": attempt + 1})
                    else:
                        still[gid] = pending[gid]
            pending = still
        return done

    def generate(self, groups: list[Group], cfg: GenerationConfig, preset: Preset) -> BatchResult:
        t0 = time.monotonic()
        n, mode, fmt = cfg.samples_per_summary, cfg.mode, cfg.output_format
        tokens = {s: {"prompt": 0, "completion": 0} for s in STAGES}
        failures: list[dict[str, Any]] = []
        group_tokens = {g.group_id: [0, 0] for g in groups}
        budgets = char_budgets(preset, n, cfg.sampling.max_tokens)
        summaries: dict[int, dict[str, str]] = {}
        stages = MODE_STAGES[mode]
        if SUMMARY_STAGE in stages:
            prompts = {g.group_id: stage1_prompt(preset, g.texts, g.label, fmt, budgets) for g in groups}
            summaries = self._run_stage(
                cfg, SUMMARY_STAGE, prompts,
                lambda texts, finishes: parse_stage1(preset, fmt, texts, finishes), tokens, failures, group_tokens)
        writers = [g for g in groups if SUMMARY_STAGE not in stages or g.group_id in summaries]
        prompts = {g.group_id: stage2_prompt(preset, mode, fmt, n, budgets, g.texts, g.label,
                                               summaries.get(g.group_id)) for g in writers}
        samples = self._run_stage(
            cfg, SAMPLE_STAGE, prompts,
            lambda texts, finishes: parse_stage2(fmt, n, texts, finishes), tokens, failures, group_tokens)

        rows: list[dict[str, Any]] = []
        for g in groups:
            texts = samples.get(g.group_id)
            if not texts:
                continue
            summary = summaries.get(g.group_id)
            p_share = _split_evenly(group_tokens[g.group_id][0], len(texts))
            c_share = _split_evenly(group_tokens[g.group_id][1], len(texts))
            for i, text in enumerate(texts):
                rows.append({"text": text, "label": g.label, "group_id": g.group_id,
                             "demo_row_ids": list(g.demo_row_ids),
                             "summary": json.dumps(summary, ensure_ascii=False) if summary else None,
                             "model": self.model_name, "prompt_tokens": p_share[i], "completion_tokens": c_share[i]})
        return BatchResult(rows=rows, failures=failures, tokens=tokens, seconds=time.monotonic() - t0,
                           group_ids=[g.group_id for g in groups])
