"""The selection tracker: coordinates the GP state (partitions held by shards) and hands out demonstration groups
(Algorithm 1, step 1). A plain class; the driver wraps it with `ray.remote` to make it the central actor. What it
will do (τ, quotas, engine, stopping level) is decided in plan.py."""

from __future__ import annotations

import math
from collections import deque
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
from synalign_ray.selection.steps import StepRunner, call_ref, call_shard, run_step

# Pending rows before a partition writes V for all its rows. A partition is small, so writing often is cheap, and
# with nothing pending the next anchor is a plain argmax of the bounds (jobs/benchmarks/benchmark_selection_scale.py measured it).
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
    that builds Ray actors); this class is the coordinator: it caches every partition's best candidates, per group
    calls the shard holding the anchor's partition, and passes each group's new block of h to the unit's other
    shards with their next call.
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
                                           noise=cfg.noise,
                                           inducing={u: z for u, z in inducing.items()
                                                     if any(p["unit"] == u for p in parts.values())}))
        if not local:
            for reply in [call_shard(block, "release") for block in blocks]:
                reply.result()
        del blocks, by_shard, row_parts
        # label → pid → (best score, tied global rows, largest variance, the unit's version it was computed at);
        # refreshed for the partition that just received a group, and (inducing features) lazily for the others.
        self._tops: dict[str, dict[int, tuple[float, np.ndarray, float, int]]] = {l: {} for l in label_rows}
        self._part_labels = {pid: set(p["labels"]) for pid, p in enumerate(partitions)}
        self._part_unit = {pid: p["unit"] for pid, p in enumerate(partitions)}
        # Per unit with inducing features: the new blocks of h in order (its version is their count), the offset of
        # the first one kept, and per shard how many it has applied; blocks every shard has applied are dropped.
        self._blocks: dict[int, list[np.ndarray]] = {u: [] for u in range(len(units))}
        self._version = {u: 0 for u in range(len(units))}
        self._applied = [{u: 0 for u in range(len(units))} for _ in self._shards]
        self._unit_shards = {u: {self._shard_of[pid] for pid, p in enumerate(partitions) if p["unit"] == u}
                             for u in range(len(units))}
        del partitions
        for reply in [call_shard(shard, "tops") for shard in self._shards]:
            for pid, tops in reply.result().items():
                self._store_tops(pid, tops)
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

    def _store_tops(self, pid: int, tops: dict) -> None:
        version = self._version[self._part_unit[pid]]
        for l in self._part_labels[pid]:
            if l in tops:
                self._tops[l][pid] = (*tops[l], version)
            else:
                self._tops[l].pop(pid, None)

    def _updates(self, shard: int, unit: int) -> list[np.ndarray]:
        """The unit's blocks of h shard `shard` has not applied yet (marked applied); fully applied ones dropped."""
        base = self._version[unit] - len(self._blocks[unit])
        out = self._blocks[unit][self._applied[shard][unit] - base:]
        self._applied[shard][unit] = self._version[unit]
        done = min(self._applied[s][unit] for s in self._unit_shards[unit]) - base
        del self._blocks[unit][:done]
        return out

    def _fresh(self, pid: int, entry: tuple) -> bool:
        return entry[3] == self._version[self._part_unit[pid]]

    def _refresh(self, pids: list[int]) -> Generator:
        """Refresh these stale partitions, one call per partition, all at once (a step's `yield`)."""
        calls = [(pid, self._shard_of[pid]) for pid in pids]
        replies = yield [call_shard(self._shards[shard], "refresh", pid, self._updates(shard, self._part_unit[pid]))
                         for pid, shard in calls]
        for (pid, _), tops in zip(calls, replies):
            self._store_tops(pid, tops)

    def _stale_first(self, pids: list[int], key: Callable[[int], tuple]) -> list[int]:
        """Of these stale partitions, the one of highest `key` on each shard: refreshed together, they keep every
        shard's refreshes in the lazy order, and run at once when the unit's partitions span shards."""
        best: dict[int, int] = {}
        for pid in pids:
            s = self._shard_of[pid]
            if s not in best or key(pid) > key(best[s]):
                best[s] = pid
        return sorted(best.values())

    def _label_top(self, label) -> Generator:
        """A step returning (candidate anchors tied at the label's best score, the partition of each), or None once
        its quota is spent, no partition can form a group, or its largest variance is below the stop level.

        A stale entry (its unit observed groups elsewhere since) bounds its partition from above: the stale entries
        that could hold the largest variance or the best score, ties included, are refreshed first (lazily). Which
        ones are refreshed changes no result: the answer depends on exact (fresh) values only."""
        entries = self._tops[label]
        if self._computed[label] >= self._quota[label]:
            return None
        while True:
            above = {pid: e for pid, e in entries.items() if e[2] >= self.stop_variance}
            if not above:
                return None
            if any(self._fresh(pid, e) for pid, e in above.items()):
                break
            yield from self._refresh(self._stale_first(list(above), lambda pid: (above[pid][2], -pid)))
        while True:
            best = max(e[0] for pid, e in entries.items() if self._fresh(pid, e))
            stale = [pid for pid, e in entries.items() if e[0] >= best - TIE_TOLERANCE and not self._fresh(pid, e)]
            if not stale:
                break
            yield from self._refresh(self._stale_first(stale, lambda pid: (entries[pid][0], -pid)))
        tied = [(pid, e[1]) for pid, e in entries.items() if e[0] >= best - TIE_TOLERANCE]
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
        [(group, variance, tops, block)] = yield [call_shard(self._shards[shard], "add", pid, int(tied[pick]),
                                                              self._updates(shard, unit))]
        if block is not None:
            self._blocks[unit].append(block)
            self._version[unit] += 1
            self._applied[shard][unit] = self._version[unit]
        self._store_tops(pid, tops)
        return np.asarray(group, dtype=np.int64), variance

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
        largest = [e[2] for entries in self._tops.values() for e in entries.values()]
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

