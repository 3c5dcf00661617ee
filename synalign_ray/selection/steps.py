"""Shard calls as Futures and the steps that await them: the tracker's per-label steps are generators that yield the
calls they wait on, so several labels' steps can run on different shard actors at once. No Ray import."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Callable, Generator, Hashable

from synalign_ray.config import SelectionConfig
from synalign_ray.selection.partitions import PartitionShard


def call_shard(shard: Any, method: str, *args) -> Future:
    """A shard's answer as a Future: an in-process shard answers at once, an ActorShard when its actor does."""
    out = getattr(shard, method)(*args)
    return out if isinstance(out, Future) else _answered(out)


def _answered(value: Any) -> Future:
    done: Future = Future()
    done.set_result(value)
    return done


def call_ref(shard: Any, method: str, *args) -> Any:
    """A shard's answer to pass on as another shard's argument: an ActorShard's unfetched object reference (Ray hands
    it to the receiving actor directly), an in-process shard's value."""
    if isinstance(shard, ActorShard):
        return getattr(shard.handle, method).remote(*args)
    return getattr(shard, method)(*args)


def call_split(shard: Any, method: str, *args) -> tuple[Future, Any]:
    """A shard's answer in two parts (the method returns a pair): the first as a Future to wait on, the second as
    call_ref hands it on (an ActorShard's unfetched object reference, Ray's num_returns=2; an in-process value)."""
    if isinstance(shard, ActorShard):
        first, second = getattr(shard.handle, method).options(num_returns=2).remote(*args)
        return first.future(), second
    first, second = getattr(shard, method)(*args)
    return _answered(first), second


def run_step(step: Generator) -> Any:
    """Drive one step to its end, waiting on each of its calls in turn; its return value."""
    replies = None
    while True:
        try:
            calls = step.send(replies)
        except StopIteration as stop:
            return stop.value
        replies = [c.result() for c in calls]


class StepRunner:
    """Steps in flight, by key: each a generator that yields a list of Futures and is sent their results; a step
    that returns is handed to `on_done(key, value)`."""

    def __init__(self, on_done: Callable[[Hashable, Any], None]):
        self._on_done = on_done
        self._running: dict[Hashable, tuple[Generator, list[Future]]] = {}

    def __contains__(self, key) -> bool:
        return key in self._running

    def start(self, key, step: Generator) -> None:
        self._running[key] = (step, [])
        self._advance(key, None)

    def _advance(self, key, replies: list | None) -> None:
        step = self._running[key][0]
        try:
            self._running[key] = (step, step.send(replies))
        except StopIteration as stop:
            del self._running[key]
            self._on_done(key, stop.value)

    def pump(self) -> bool:
        """Advance every step whose calls have all answered, until none has; True if any advanced."""
        moved = False
        while ready := [k for k, (_, calls) in self._running.items() if all(c.done() for c in calls)]:
            for key in ready:
                self._advance(key, [c.result() for c in self._running[key][1]])
            moved = True
        return moved

    def wait(self) -> None:
        """Block until one awaited call that had not answered answers. Only those: a step awaiting two shards, one
        of which has answered, would otherwise make this return at once, and the caller spin (it took a core)."""
        wait([c for _, calls in self._running.values() for c in calls if not c.done()], return_when=FIRST_COMPLETED)

    def drain(self) -> None:
        """Let every step finish."""
        while self._running:
            if not self.pump():
                self.wait()


class ActorShard:
    """A shard held by a Ray actor (`handle`): each method call returns a concurrent.futures.Future of the actor's
    answer, so the tracker can wait on several shards at once. No Ray import: the handle brings it."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, method: str) -> Callable[..., Future]:
        remote = getattr(self.handle, method)
        return lambda *args: remote.remote(*args).future()


def actor_shards(ray, **options) -> Callable[..., ActorShard]:
    """A `make_shard` factory: each shard a PartitionShard in its own Ray actor (`options` as actor options); its
    positional arguments (row blocks' object references) are resolved in the actor."""
    # No task events: a selection makes one to three shard calls per group, and each would stay in the GCS for the
    # dashboard's task list (65.8 MiB of GCS memory per 20,000 calls measured, against 2.3 MiB without).
    actor_class = ray.remote(PartitionShard).options(enable_task_events=False, **options)
    return lambda *row_parts, **kwargs: ActorShard(actor_class.remote(*row_parts, **kwargs))


def actor_blocks(ray, **options) -> Callable[[], ActorShard]:
    """A factory of empty RowBlocks (blocks.py), each in its own Ray actor, to `load` from a folder slice."""
    from synalign_ray.selection.blocks import RowBlock

    actor_class = ray.remote(RowBlock).options(**options)
    return lambda: ActorShard(actor_class.remote())


def shard_options(ray, cfg: SelectionConfig) -> dict[str, Any]:
    """SelectionTracker's shard arguments for `cfg`: `selection.num_shards` actors of `num_cpus_per_shard` CPUs
    each, spread over the cluster's nodes, or (one shard) none: the partitions then stay in the tracker's process."""
    if cfg.num_shards == 1:
        return {}
    return {"num_shards": cfg.num_shards,
            "make_shard": actor_shards(ray, num_cpus=cfg.num_cpus_per_shard, scheduling_strategy="SPREAD")}
