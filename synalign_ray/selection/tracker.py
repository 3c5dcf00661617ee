"""The selection tracker: coordinates the GP state (partitions held by shards) and hands out demonstration groups
(Algorithm 1, step 1). A plain class; the driver wraps it with `ray.remote` to make it the central actor. What it
will do (τ, quotas, engine, stopping level) is decided in plan.py."""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Generator

import numpy as np

from synalign_ray.config import SelectionConfig
from synalign_ray.errors import ConfigError
from synalign_ray.selection.gp import SYNC_ROWS, TIE_TOLERANCE
from synalign_ray.metrics import median_sample
from synalign_ray.selection.blocks import RowBlock, bisect, gather, split_by_block
from synalign_ray.selection.partitions import PartitionShard
from synalign_ray.selection.plan import (AUTO_TAU_SAMPLE, PARTITION_GROWTH, auto_tau, check_inputs, check_rows,
                                         density_sample, density_weights, place_partitions, plan_quotas,
                                         resolve_engine, stop_variance)
from synalign_ray.selection.steps import StepRunner, call_ref, call_shard, call_split, run_step

# Pending rows before a partition writes V for all its rows. A partition is small, so writing often is cheap, and
# with nothing pending the next anchor is a plain argmax of the bounds (jobs/benchmarks/benchmark_selection_scale.py measured it).
# With inducing rows too: 20 and 64 pending rows were slower (the rows a refresh evaluates then compute the pending
# columns; 250k tiled rows, one process, 1,000 groups: 11.76 and 12.58 ms per group against 11.60 unlabelled).
PARTITION_SYNC_ROWS = 1
# Groups a label's shard may compute ahead of the label's turn: enough that a shard holding one label of a
# proportional budget keeps working while the others' groups are issued; bounded, so a caller that stops early
# leaves little work done for nothing.
LOOKAHEAD = 4


class SelectionTracker:
    """Issues demonstration groups in the order the GP uncertainty dictates; identical for identical inputs.

    Each step takes the label whose turn it is (the active label with the smallest issued/quota ratio, ties in
    sorted label order), its not-yet-issued row of largest posterior variance (`rule: density_weighted`: largest
    variance × local density; ties within TIE_TOLERANCE broken by a seeded permutation) and that row's k most
    cosine-similar not-yet-issued rows of the same label. Groups are disjoint: no row is observed twice, and an issued
    row is never an anchor again. A label stops when its quota is spent or its largest variance falls below
    `stop_variance`. Labels with fewer than k+1 rows are skipped (logged, and listed in `progress()`).

    GP state: `gp_scope: per_label` keeps one GP per label (a group lowers only its own label's variances, the rows
    its prompts saw); `shared` one over all rows. `engine: exact` holds each scope unit in one IncrementalGP;
    `partitioned` cuts units of more than `partition_rows` rows into partitions (blocks.bisect), each a GP over
    its own rows, and draws neighbours from the anchor's partition. Across partitions the kernel acts through the
    Nyström features of `inducing_rows` seeded rows of the unit (the PIC prior, see PartitionShard), or not at all
    with inducing_rows 0 (a group then lowers variances in its own partition only). The partitions live in
    `num_shards` shards built by `make_shard` (PartitionShard by default, in this process; a caller may pass a factory
    that builds Ray actors); this class is the coordinator: per label it keeps each shard's answer (its best candidates
    over its partitions, found there), asks again only the shards whose answer a group made stale (at once, one call
    each), calls the shard holding the anchor's partition, and passes each group's new block of h to the unit's
    other shards. A group costs one round trip: where the unit spans shards, the others receive the block straight
    from the anchor's shard (an object reference) with the call that asks their new answer, sent with the group's.
    """

    def __init__(self, embeddings: np.ndarray | list, labels: list[str] | None, row_ids: np.ndarray,
                 cfg: SelectionConfig, num_shards: int = 1,
                 make_shard: Callable[..., Any] = PartitionShard):
        """`embeddings`: the (N, d) rows in row order, or the RowBlocks that hold them (blocks.py: consecutive
        positions, in this process or as ActorShards). Built from blocks, the tracker holds only positions, labels
        and per-row scalars; actor-held blocks hand each shard its partitions' rows directly."""
        if isinstance(embeddings, np.ndarray):
            self.skipped_labels = check_inputs(embeddings, labels, row_ids, cfg)
            blocks, sizes = [RowBlock(embeddings)], [embeddings.shape[0]]
        else:
            blocks = list(embeddings)
            sizes = [reply.result() for reply in [call_shard(block, "size") for block in blocks]]
            self.skipped_labels = check_rows(sum(sizes), labels, row_ids, cfg)
        del embeddings
        starts = np.cumsum([0] + sizes[:-1])
        self.cfg = cfg
        self._labels = None if labels is None else [str(l) for l in labels]
        self._row_ids = np.asarray(row_ids)
        n = self._row_ids.shape[0]
        self.tau = (auto_tau(gather(blocks, starts, median_sample(n, AUTO_TAU_SAMPLE, cfg.seed)), cfg.seed)
                    if cfg.tau == "auto" else float(cfg.tau))
        self._rank = np.random.default_rng(cfg.seed).permutation(n)
        # Internally an unlabelled input is one label "" (schedule rows say None).
        label_arr = np.full(n, "", dtype=object) if self._labels is None else np.asarray(self._labels, dtype=object)
        label_rows = {l: np.flatnonzero(label_arr == l) for l in sorted(set(label_arr)) if l not in self.skipped_labels}
        self._quota = plan_quotas({l: len(r) for l, r in label_rows.items()}, cfg.max_groups, cfg.budget, cfg.k)
        self.stop_variance = stop_variance(cfg)
        units = ([[l] for l in label_rows] if cfg.gp_scope == "per_label" else [list(label_rows)])
        unit_rows = [np.sort(np.concatenate([label_rows[l] for l in u])) for u in units]
        unit_selected = [sum(self._quota[l] for l in u) * (cfg.k + 1) for u in units]
        self.engine = resolve_engine(cfg, [len(r) for r in unit_rows], unit_selected)
        weights = None
        if cfg.rule == "density_weighted":
            weights = np.zeros(n)
            for l, rows in label_rows.items():
                sample = gather(blocks, starts, density_sample(rows, cfg.seed))
                raw = [call_shard(blocks[b], "density", sub, sample, cfg.kernel, self.tau)
                       for b, sub in split_by_block(rows, starts)]
                weights[rows] = density_weights(np.concatenate([r.result() for r in raw]))
        partitions, inducing = [], {}
        for unit_id, (rows, selected) in enumerate(zip(unit_rows, unit_selected)):
            parts = ([rows] if self.engine == "exact" else bisect(blocks, starts, rows, cfg.partition_rows, cfg.seed))
            if len(parts) > 1 and cfg.inducing_rows:
                pick = np.random.default_rng(cfg.seed).choice(rows.shape[0], size=min(cfg.inducing_rows, len(rows)),
                                                              replace=False)
                inducing[unit_id] = gather(blocks, starts, rows[np.sort(pick)])
            for part in parts:
                # An exact unit's V holds its planned rows; a partition's starts at its share and grows if its
                # region draws more groups.
                capacity = (selected if len(parts) == 1
                            else min(part.shape[0], math.ceil(selected * part.shape[0] / len(rows))))
                partitions.append({"rows": part, "labels": label_arr[part].astype(str),
                                   "weights": None if weights is None else weights[part], "capacity": capacity,
                                   "sync_rows": SYNC_ROWS if len(parts) == 1 else PARTITION_SYNC_ROWS,
                                   "growth": PARTITION_GROWTH, "unit": unit_id})
        self.n_partitions = len(partitions)
        self._shard_of = place_partitions([p["unit"] for p in partitions], unit_selected, num_shards)
        by_shard = [{pid: p for pid, p in enumerate(partitions) if self._shard_of[pid] == s} for s in range(num_shards)]
        # Blocks in this process give each partition its rows here; actor-held blocks send a shard actor its rows
        # themselves (call_ref: the reply is never fetched here), then drop them (release runs after those calls).
        local = all(isinstance(block, RowBlock) for block in blocks)
        self._shards = []
        for parts in by_shard:
            if local:
                for p in parts.values():
                    p["points"] = gather(blocks, starts, p["rows"])
                row_parts = []
            else:
                held = np.sort(np.concatenate([p["rows"] for p in parts.values()])) if parts else np.zeros(0, int)
                row_parts = [call_ref(blocks[b], "rows", sub) for b, sub in split_by_block(held, starts)]
            self._shards.append(make_shard(*row_parts, partitions=parts, k=cfg.k, kernel=cfg.kernel, tau=self.tau,
                                           noise=cfg.noise, stop_variance=self.stop_variance,
                                           inducing={u: z for u, z in inducing.items()
                                                     if any(p["unit"] == u for p in parts.values())}))
        if not local:
            for reply in [call_shard(block, "release") for block in blocks]:
                reply.result()
        del blocks, by_shard, row_parts
        self._part_unit = {pid: p["unit"] for pid, p in enumerate(partitions)}
        self._units = units  # unit → its labels
        self._label_unit = {l: u for u, members in enumerate(units) for l in members}
        # label → the shards holding partitions of it; per label and shard, the shard's last summary
        # (PartitionShard.summary) and the unit's version it holds for, or None once the shard has no group left.
        self._label_shards = {l: sorted({self._shard_of[pid] for pid, p in enumerate(partitions) if l in p["labels"]})
                              for l in label_rows}
        self._summaries: dict[str, dict[int, tuple | None]] = {l: {} for l in label_rows}
        # Per unit with inducing features: the new blocks of h in order (arrays, or object references where the
        # shards are actors; its version is their count), and per shard how many it has applied; blocks every shard
        # has applied are dropped.
        self._pic_units = set(inducing)
        self._blocks: dict[int, list[Any]] = {u: [] for u in range(len(units))}
        self._version = {u: 0 for u in range(len(units))}
        self._applied = [{u: 0 for u in range(len(units))} for _ in self._shards]
        self._unit_shards = {u: {self._shard_of[pid] for pid, p in enumerate(partitions) if p["unit"] == u}
                             for u in range(len(units))}
        del partitions
        for shard, reply in enumerate([call_shard(shard, "summaries") for shard in self._shards]):
            for label, summary in reply.result().items():
                self._store_summary(label, shard, summary)
        self._issued_per_label = {l: 0 for l in label_rows}
        self._active = [l for l in label_rows if self._quota[l] > 0]
        self._issued: list[np.ndarray] = []
        self._variances: list[float] = []
        # Per-label GPs are independent: a label's groups may be computed ahead of its turn (at most LOOKAHEAD),
        # on its own shard while other shards compute other labels'. A shared GP's groups go strictly in turn.
        self._independent = cfg.gp_scope == "per_label"
        self._ahead: dict[str, deque] = {l: deque() for l in label_rows}  # computed groups not yet issued
        self._computed = {l: 0 for l in label_rows}  # issued + ahead
        self._stopped: set[str] = set()  # labels whose next step found no group
        ahead, computed, stopped = self._ahead, self._computed, self._stopped

        def step_done(label, result) -> None:  # a step's group waits for its turn; None: the label has stopped
            if result is None:
                stopped.add(label)
            else:
                ahead[label].append(result)
                computed[label] += 1

        # A closure, not a bound method: no reference cycle keeps a dropped tracker (and its shard actors) alive.
        self._steps = StepRunner(step_done)  # label → its running step

    def _store_summary(self, label, shard: int, summary: tuple | None) -> None:
        if summary is None:
            self._summaries[label][shard] = None
            return
        has_above, largest, best, tied = summary
        # copies: see _step
        self._summaries[label][shard] = (has_above, largest, best, [(pid, score, np.array(rows))
                                                                    for pid, score, rows in tied],
                                         self._version[self._label_unit[label]])

    def _stale_shards(self, label) -> list[int]:
        """The shards holding `label` whose last summary of it no longer holds (or that have given none)."""
        version, summaries = self._version[self._label_unit[label]], self._summaries[label]
        return [s for s in self._label_shards[label]
                if s not in summaries or (summaries[s] is not None and summaries[s][4] != version)]

    def _ask_summaries(self, label, shards: list[int]) -> list[Future]:
        unit = self._label_unit[label]
        return [call_shard(self._shards[s], "summary", label, *self._updates(s, unit)) for s in shards]

    def _updates(self, shard: int, unit: int) -> list[np.ndarray]:
        """The unit's blocks of h shard `shard` has not applied yet (marked applied); fully applied ones dropped."""
        base = self._version[unit] - len(self._blocks[unit])
        out = self._blocks[unit][self._applied[shard][unit] - base:]
        self._applied[shard][unit] = self._version[unit]
        # A shard that can form no group of the unit's labels is never asked again (no answer of None turns back):
        # it holds no block back.
        waiting = [self._applied[s][unit] for s in self._unit_shards[unit]
                   if not all(self._summaries[l].get(s, 0) is None for l in self._units[unit]
                              if s in self._label_shards[l])]
        done = min(waiting, default=self._version[unit]) - base
        del self._blocks[unit][:done]
        return out

    def _label_top(self, label) -> Generator:
        """A step returning (candidate anchors tied at the label's best score, the partition of each), or None once
        its quota is spent, no partition can form a group, or its largest variance is below the stop level.

        Each shard holding the label answers for its own partitions (PartitionShard.summary): whether any has a
        variance at the stop level, its best score and the partitions tied near it, all from exact values. A
        shard's answer holds until the label's unit observes a group; the stale ones are asked again, at once
        (the label's own groups ask them with the group itself, see _step)."""
        if self._computed[label] >= self._quota[label]:
            return None
        if stale := self._stale_shards(label):
            for s, summary in zip(stale, (yield self._ask_summaries(label, stale))):
                self._store_summary(label, s, summary)
        current = [summary for summary in self._summaries[label].values() if summary is not None]
        if not any(summary[0] for summary in current):
            return None
        best = max(summary[2] for summary in current)
        tied = [(pid, rows) for summary in current for pid, score, rows in summary[3] if score >= best - TIE_TOLERANCE]
        return (np.concatenate([rows for _, rows in tied]),
                np.concatenate([np.full(rows.shape[0], pid) for pid, rows in tied]))

    def _step(self, label) -> Generator:
        """The label's next group as a step: a generator that yields the shard calls it awaits (a list of Futures)
        and is sent their answers; it returns (the group's rows, the anchor's variance), or None when it stops."""
        top = yield from self._label_top(label)
        if top is None:
            return None
        tied, pids = top
        pick = int(np.argmin(self._rank[tied]))
        pid = int(pids[pick])
        shard, unit = self._shard_of[pid], self._part_unit[pid]
        # Where the unit spans shards, its shards answer for the label in the same step, all at once: the group's
        # block of h reaches the others as a reference from `add` (an actor's result passed on unfetched), so they
        # start as soon as it exists, with no round trip through here; the anchor's shard answers right after it.
        alone = len(self._unit_shards[unit]) == 1
        added, block = call_split(self._shards[shard], "add", pid, int(tied[pick]), alone,
                                  *self._updates(shard, unit))
        if unit in self._pic_units:
            self._blocks[unit].append(block)
            self._version[unit] += 1
            self._applied[shard][unit] = self._version[unit]
        # The group changed the shard's answers for every label of the unit (the other shards' go stale by version).
        for other in self._units[unit]:
            self._summaries[other].pop(shard, None)
        asked = [] if alone or self._computed[label] + 1 >= self._quota[label] else self._stale_shards(label)
        [(group, variance, summary), *replies] = yield [added, *self._ask_summaries(label, asked)]
        if alone:
            self._store_summary(label, shard, summary)
        for s, reply in zip(asked, replies):
            self._store_summary(label, s, reply)
        # A copy: an array a shard actor returns is a view into the whole reply's buffer (the block of h included),
        # which a kept view would hold for the rest of the selection (24 KB per group, measured).
        return np.array(group, dtype=np.int64), variance

    def _wait_for(self, label) -> None:
        """Run steps until `label` has a group ahead or has stopped. While its own step waits on a shard, the other
        labels' next steps (independent GPs only, at most LOOKAHEAD ahead) are started on theirs."""
        while not self._ahead[label] and label not in self._stopped:
            if label not in self._steps:
                self._steps.start(label, self._step(label))
            self._steps.pump()
            if self._ahead[label] or label in self._stopped:
                return
            if self._independent:
                for other in self._active:
                    if (other not in self._steps and other not in self._stopped
                            and len(self._ahead[other]) < LOOKAHEAD):
                        self._steps.start(other, self._step(other))
                if self._steps.pump():
                    continue
            self._steps.wait()

    def _select_next(self) -> dict | None:
        """The next group in turn: the active label with the smallest issued/quota ratio, ties in sorted order."""
        while self._active:
            label = min(self._active, key=lambda l: self._issued_per_label[l] / self._quota[l])
            self._wait_for(label)
            if not self._ahead[label]:
                self._active.remove(label)
                continue
            group, variance = self._ahead[label].popleft()
            self._issued_per_label[label] += 1
            self._issued.append(group)
            self._variances.append(variance)
            return self._record(len(self._issued) - 1, label)
        return None

    def _record(self, group_id: int, label) -> dict:
        group = self._issued[group_id]
        return {
            "group_id": group_id,
            "label": None if self._labels is None else label,
            "anchor_row_id": self._row_ids[group[0]].item(),
            "demo_row_ids": [x.item() for x in self._row_ids[group]],
            "variance_at_selection": self._variances[group_id],
            "tau": self.tau,
        }

    def next_groups(self, n: int) -> list[dict]:
        """Up to n further groups (fewer, then none, once every label has stopped); each a schedule row dict."""
        if n <= 0:
            raise ConfigError(f"next_groups needs a positive count, got {n}")
        out = []
        for _ in range(n):
            record = self._select_next()
            if record is None:
                break
            out.append(record)
        return out

    def state_bytes(self, used: bool = False) -> int:
        """GP state allocated on all shards (PartitionShard.state_bytes), or with `used` the V actually filled."""
        return sum(reply.result() for reply in [call_shard(shard, "state_bytes", used) for shard in self._shards])

    def progress(self) -> dict:
        """Groups issued and planned; the largest variance among rows that can still anchor a group (any label; with
        inducing features an upper bound, from partitions not refreshed since other partitions' groups; groups
        computed ahead of their turn count as observed), the stop level, the engine and its partitions, and the
        labels skipped as too small (label → rows)."""
        self._steps.drain()  # a query sees no call in flight; the finished steps' groups stay ahead
        largest = [summary[1] for summaries in self._summaries.values() for summary in summaries.values()
                   if summary is not None]
        return {
            "groups_issued": len(self._issued),
            "groups_planned": sum(self._quota.values()),
            "max_variance": float(max(largest)) if largest else 0.0,
            "stop_variance": self.stop_variance,
            "done": all(not self._ahead[l] and (l in self._stopped or run_step(self._label_top(l)) is None)
                        for l in self._active),
            "tau": self.tau,
            "engine": self.engine,
            "partitions": self.n_partitions,
            "labels_skipped": dict(self.skipped_labels),
        }

