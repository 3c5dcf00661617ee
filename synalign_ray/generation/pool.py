"""The generator pool: keeps every vLLM actor fed from a group feed with bounded in-flight batches (ray.wait),
replaces actors that die and resubmits their batches, and hands each finished batch to a callback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from synalign_ray.config import GenerationConfig
from synalign_ray.errors import SynAlignError
from synalign_ray.generation.presets import Preset, load_preset
from synalign_ray.generation.worker import BatchResult, Generator, Group
from synalign_ray.runtime import node_ids

log = logging.getLogger(__name__)


@dataclass
class PoolStats:
    engine_start_seconds: list[float] = field(default_factory=list)
    busy_seconds: float = 0.0
    wall_seconds: float = 0.0
    batches: int = 0
    actor_replacements: int = 0
    completion_tokens: int = 0

    @property
    def busy_fraction(self) -> float:
        """Share of the generation wall time (after engines are up) that generators spent generating."""
        slots = self.wall_seconds * max(len(self.engine_start_seconds), 1)
        return self.busy_seconds / slots if slots > 0 else 0.0


class GeneratorPool:
    """Owns `num_generators` remote Generator actors; `run` drains a feed of groups through them.

    The pool outlives a single run: `run` may be called again (with other presets or modes, same model).
    """

    def __init__(self, cfg: GenerationConfig, cache_dir: str | None = None, max_replacements: int = 3):
        import ray

        self.cfg = cfg
        self.cache_dir = cache_dir
        self.max_replacements = max_replacements
        self._actor_cls = ray.remote(Generator).options(
            num_cpus=cfg.num_cpus_per_generator, num_gpus=cfg.num_gpus_per_generator or None,
            max_restarts=0, max_concurrency=1, scheduling_strategy="SPREAD")
        t0 = time.monotonic()
        self.actors = [self._start() for _ in range(cfg.num_generators)]
        infos = self._ready(self.actors)
        self.info = infos[0]
        self.nodes = node_ids(self.actors)  # replacements may land elsewhere; this is where the pool started
        self.engine_start_seconds = [time.monotonic() - t0] * len(self.actors)
        log.info("%d generator(s) ready in %.1f s: %s (context %d tokens)", len(self.actors),
                 time.monotonic() - t0, self.info["model"], self.info["max_model_len"])

    def _start(self):
        return self._actor_cls.remote(self.cfg, self.cache_dir)

    @staticmethod
    def _ready(actors) -> list[dict[str, Any]]:
        import ray

        try:
            return ray.get([a.info.remote() for a in actors])
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if hasattr(err, "cause") else err
            if isinstance(cause, SynAlignError):
                raise cause from None
            raise

    def run(self, feed: Iterator[list[Group]], on_result: Callable[[BatchResult], None],
            cfg: GenerationConfig | None = None, preset: Preset | None = None) -> PoolStats:
        """Dispatch batches from `feed` until it is empty and every batch has returned.

        `cfg` and `preset` (default: the pool's own config) set mode, samples and sampling for these batches.
        """
        import ray

        cfg = cfg or self.cfg
        if cfg.model != self.cfg.model:
            raise SynAlignError(f"this generator pool runs {self.cfg.model}, not {cfg.model}")
        preset = preset or load_preset(cfg.preset, cfg.presets_file)
        cfg_ref = ray.put(cfg)
        preset_ref = ray.put(preset)
        stats = PoolStats(engine_start_seconds=list(self.engine_start_seconds))
        in_flight: dict[Any, tuple[int, list[Group]]] = {}  # ref -> (actor slot, batch)
        retry: list[list[Group]] = []
        replacements = 0
        exhausted = False
        t0 = time.monotonic()

        def next_batch() -> list[Group] | None:
            nonlocal exhausted
            if retry:
                return retry.pop(0)
            if exhausted:
                return None
            batch = next(feed, None)
            if batch is None:
                exhausted = True
            return batch

        def fill() -> None:
            for slot, actor in enumerate(self.actors):
                while sum(1 for s, _ in in_flight.values() if s == slot) < self.cfg.max_in_flight:
                    batch = next_batch()
                    if batch is None:
                        return
                    in_flight[actor.generate.remote(batch, cfg_ref, preset_ref)] = (slot, batch)

        fill()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            slot, batch = in_flight.pop(ref)
            try:
                result: BatchResult = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as err:
                replacements += 1
                if replacements > self.max_replacements * len(self.actors):
                    raise SynAlignError(f"generator actors died {replacements} times; last: "
                                        f"{str(err).splitlines()[0]}") from None
                log.warning("generator %d died (%s); starting a replacement and retrying its batches", slot,
                            type(err).__name__)
                # Every batch queued on the dead actor is lost with it: resubmit them all.
                lost = [ref2 for ref2, (s, _) in in_flight.items() if s == slot]
                retry.append(batch)
                for ref2 in lost:
                    retry.append(in_flight.pop(ref2)[1])
                self.actors[slot] = self._start()
                self._ready([self.actors[slot]])
                stats.actor_replacements += 1
                fill()
                continue
            stats.batches += 1
            stats.busy_seconds += result.seconds
            stats.completion_tokens += sum(t["completion"] for t in result.tokens.values())
            on_result(result)
            fill()
        stats.wall_seconds = time.monotonic() - t0
        return stats

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
