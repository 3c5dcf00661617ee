"""GPs on partitions of the real rows (blocks.bisect cuts them): the shard that holds some of them (their GPs,
availability and neighbour search) for the selection tracker to coordinate.

Pure numpy/scipy; a shard is a plain class that a caller may wrap with `ray.remote` to spread partitions over actors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import solve_triangular

from synalign_ray.selection.gp import TIE_TOLERANCE, IncrementalGP, Kernel, cross_kernel

INDUCING_JITTER = 1e-6  # on κ(Z, Z)'s diagonal: near-duplicate inducing rows would make it singular
# Candidates a lazy top orders at first, its first four chunks (16 + 32 + 64 + 128): it rarely reads further, and a
# full sort of a partition's bounds per refresh was an eighth of a shard's time (cProfile, 250k rows unlabelled).
LAZY_ORDERED_ROWS = 240


def _descending(values: np.ndarray, count: int) -> np.ndarray:
    """Positions of the `count` largest `values` (more where values tie with the last), largest first, ties in position
    order: the head of np.argsort(-values, kind="stable"), in O(n) for the selection."""
    n = values.shape[0]
    if count >= n:
        return np.argsort(-values, kind="stable")
    head = np.flatnonzero(values >= np.partition(values, n - count)[n - count])
    return head[np.argsort(-values[head], kind="stable")]


def inducing_features(points: np.ndarray, inducing: np.ndarray, kernel: Kernel, tau: float) -> np.ndarray:
    """Nyström features φ(x) = L_Z⁻¹ κ(Z, x) of `points` for the inducing rows `inducing` (L_Z the Cholesky factor of
    κ(Z, Z) + INDUCING_JITTER·I): φ(a)·φ(b) is the low-rank part Q of the kernel. float64 (len(points), |Z|)."""
    chol = np.linalg.cholesky(cross_kernel(inducing, inducing, kernel, tau) + INDUCING_JITTER * np.eye(len(inducing)))
    return cross_kernel(points, inducing, kernel, tau) @ solve_triangular(chol, np.eye(len(inducing)), lower=True).T


def grown_inverse(inverse: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(Λ + BᵀB)⁻¹ from Λ⁻¹ (`inverse`, symmetric positive definite) and B (`rows`, b × M), by the Woodbury identity:
    Λ⁻¹ − C (I + BC)⁻¹ Cᵀ with C = Λ⁻¹Bᵀ, in O(b·M²) where factoring Λ afresh costs ≈ M³ (a tenth of a group's time
    at M = 256, on every shard). The update subtracts TᵀT (T = L⁻¹Cᵀ, L L ᵀ = I + BC), so it stays symmetric."""
    c = inverse @ rows.T
    t = solve_triangular(np.linalg.cholesky(np.eye(rows.shape[0]) + rows @ c), c.T, lower=True)
    return inverse - t.T @ t


class _Partition:
    """One GP over a partition's rows, the rows still available, and each label's rows within it.

    With `features` (PIC) the GP's kernel is the residual κ − φ·φ, and `h` = L⁻¹Φ_S (L the GP's Cholesky factor,
    Φ_S the observed rows' features) grows by one block per group: the partition's share of the unit's global term.
    """

    def __init__(self, rows: np.ndarray, points: np.ndarray, labels: np.ndarray, weights: np.ndarray | None,
                 kernel: Kernel, tau: float, noise: float, capacity: int, sync_rows: int, growth: float,
                 unit: int = 0, features: np.ndarray | None = None):
        self.rows = rows
        self.unit = unit
        self.gp = IncrementalGP(points, kernel, tau, noise, capacity=capacity, sync_rows=sync_rows, growth=growth,
                                features=features)
        self.h = None if features is None else np.zeros((0, features.shape[1]))
        # With features: each row's variance when last evaluated, an upper bound on its current one (variances only
        # fall); the prior variance of the PIC GP is 1.
        self.bound = None if features is None else np.ones(rows.shape[0])
        self.available = np.ones(rows.shape[0], dtype=bool)
        self.weights = weights
        self.labels = labels
        self.label_local = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
        # Each label's points, contiguous, so a group's kNN is one matvec without gathering rows each step.
        self.label_points = {label: self.gp.points if local.shape[0] == rows.shape[0] else self.gp.points[local]
                             for label, local in self.label_local.items()}


class PartitionShard:
    """Holds some partitions of the real rows, each with its own GP over its own rows.

    Without inducing features, a group observed in one partition lowers the variance there and nowhere else: the
    kernel's effect across partitions is dropped. With them (`features` per partition, Nyström features of the scope
    unit's inducing rows) the GP is the exact posterior of the partitioned-inducing-conditional (PIC) prior
    κ_PIC = Q + blockdiag(κ − Q), Q = Φ·Φ: exact within a partition, low rank across partitions. Given the global
    weights w (f = φ·w + h, h independent per partition), the partitions are independent, so

        var(x) = ℓ(x) + a(x)ᵀ Λ⁻¹ a(x),  a(x) = φ(x) − hᵀ v(x),  Λ = I + Σ_partitions of the unit hᵀh,

    ℓ and v the partition GP's variance and V column at x (residual kernel κ − φ·φ), h = L⁻¹Φ_S. Λ (M × M) is all a
    partition needs from the others: a group adds hᵀh of its new block of h, which the coordinator passes to every
    shard as `updates` (each shard keeps Λ⁻¹, grown_inverse). Variances only fall, so a stale candidate's score bounds
    its current one from above.

    The shard keeps every partition's best anchor candidates per label, each stale once its unit's Λ has moved on
    since it was computed. `summary(label, *updates)` answers for all its partitions of the label: it refreshes, in
    this process, the stale ones that could hold the largest variance or the best score (lazily, highest bound
    first), so the answer is exact and costs the coordinator one call. `add(pid, anchor, with_summary, *updates)`
    forms the anchor's group (its k most cosine-similar available rows of the same label in the same partition),
    observes it and reports the group (with the label's new summary if asked) and, apart, the group's new block of h;
    the group's rows of V for the whole partition are written at the start of the shard's next call, after the
    block has gone to the shards that wait for it.
    Labels are plain strings (a single "" when the data is unlabelled); row positions are global throughout.
    """

    def __init__(self, *row_parts: tuple[np.ndarray, np.ndarray], partitions: dict[int, dict[str, Any]], k: int,
                 kernel: Kernel, tau: float, noise: float, stop_variance: float,
                 inducing: dict[int, np.ndarray] | None = None):
        """`partitions`: pid → {"rows" (global positions), "labels", "weights" (None for the max-variance rule),
        "capacity", "sync_rows", "growth" (the last three as IncrementalGP takes them), "unit", and "points" (the
        rows' unit embeddings) unless `row_parts` bring them: (positions, unit rows) pairs from the row blocks, which
        reach a shard actor without passing through the tracker. `inducing`: unit → its inducing rows; a partition
        of such a unit gets their Nyström features (inducing_features), computed here. `stop_variance`: the level
        below which a label stops (summary reports whether any of its rows here is at or above it)."""
        self.k = k
        self.stop_variance = stop_variance
        if row_parts:
            # One array with each partition's rows contiguous, filled part by part: the partitions' points are views
            # of it, so the shard holds its rows once (beside the received parts, until they are dropped).
            positions = np.concatenate([p for p, _ in row_parts])
            offsets = np.cumsum([0] + [len(p) for p, _ in row_parts])
            order = np.argsort(positions)
            wanted = np.concatenate([p["rows"] for p in partitions.values()])
            source = order[np.searchsorted(positions, wanted, sorter=order)]  # index into the received rows
            held = np.empty((wanted.shape[0], row_parts[0][1].shape[1]), dtype=np.float32)
            for (_, x), lo, hi in zip(row_parts, offsets[:-1], offsets[1:]):
                inside = (source >= lo) & (source < hi)
                held[inside] = x[source[inside] - lo]
            start = 0
            for p in partitions.values():
                p.setdefault("points", held[start:start + p["rows"].shape[0]])
                start += p["rows"].shape[0]
            del positions, order, wanted, source
        inducing = inducing or {}
        self._parts = {pid: _Partition(p["rows"], p["points"], np.asarray(p["labels"]), p["weights"], kernel, tau,
                                       noise, p["capacity"], p["sync_rows"], p["growth"], p["unit"],
                                       None if p["unit"] not in inducing else inducing_features(
                                           p["points"], inducing[p["unit"]], kernel, tau).astype(np.float32))
                       for pid, p in partitions.items()}
        # unit → [Λ⁻¹, blocks applied], for the units with inducing features
        self._lam: dict[int, list] = {}
        for part in self._parts.values():
            if part.h is not None:
                self._lam.setdefault(part.unit, [np.eye(part.h.shape[1]), 0])
        # pid → label → (best score, global rows tied at it, largest variance: exact, or with inducing features and
        # weights an upper bound where it is at or above the stop level), and the unit's Λ version (blocks applied)
        # it was computed at; a label is absent where fewer than k+1 of its rows are available.
        self._tops = {pid: self._partition_tops(part) for pid, part in self._parts.items()}
        self._tops_version = {pid: 0 for pid in self._parts}
        # Partitions whose last group's V is not yet written for all their rows: `add` leaves that to the shard's
        # next call, so an actor returns the group's block of h (which the unit's other shards wait for) first.
        self._unsynced: set[int] = set()
        self._label_parts: dict[str, list[int]] = {}
        for pid, part in sorted(self._parts.items()):
            for label in part.label_local:
                self._label_parts.setdefault(str(label), []).append(pid)

    def state_bytes(self, used: bool = False) -> int:
        """Bytes allocated for the float32 V, the features and the float64 h of all partitions held here; with
        `used`, the bytes of V filled so far (Σ n_p·|S_p|·4 B)."""
        if used:
            return sum(4 * p.gp.n_observed * p.rows.shape[0] for p in self._parts.values())
        return sum(p.gp._v_t.nbytes + (0 if p.h is None else p.gp.features.nbytes + p.h.nbytes)
                   for p in self._parts.values())

    def summaries(self) -> dict[str, tuple | None]:
        """`summary` of every label held here (all fresh: nothing is observed yet)."""
        return {label: self.summary(label) for label in self._label_parts}

    def summary(self, label: str, *updates: np.ndarray) -> tuple[bool, float, float, list] | None:
        """After applying `updates` (new blocks of h from the label's unit elsewhere, in order): None when no
        partition here can form a group of `label`, else (whether one of its rows here has variance ≥ stop_variance,
        the largest variance here (an upper bound where partitions stay stale), the best score here,
        [(pid, score, global rows tied at it)] for the partitions scoring within TIE_TOLERANCE of that best).

        Exact: a stale entry bounds its partition from above (variances only fall), and every stale entry that
        could hold a variance at the stop level, or a score within the tolerance of the best, is refreshed first.
        Which stale entries stay stale changes no answer but the upper bound."""
        self._sync()
        if updates:  # applied even where no group is left here: the coordinator counts them as applied
            self._apply(self._parts[self._label_parts[label][0]].unit, updates)
        pids = [pid for pid in self._label_parts[label] if label in self._tops[pid]]
        if not pids:
            return None
        fresh = self._fresh_pids(pids)

        def entry(pid: int) -> tuple:
            return self._tops[pid][label]

        has_above = False
        while True:
            above = [pid for pid in pids if entry(pid)[2] >= self.stop_variance]
            if not above or any(pid in fresh for pid in above):
                has_above = bool(above)
                break
            self._refresh(max(above, key=lambda pid: (entry(pid)[2], -pid)), fresh)
        while True:
            best = max((entry(pid)[0] for pid in fresh), default=-np.inf)
            level = best - TIE_TOLERANCE
            stale = [pid for pid in pids if pid not in fresh and entry(pid)[0] >= level]
            if not stale:
                break
            self._refresh(max(stale, key=lambda pid: (entry(pid)[0], -pid)), fresh)
        tied = [(pid, entry(pid)[0], entry(pid)[1]) for pid in pids if pid in fresh and entry(pid)[0] >= level]
        return has_above, max(entry(pid)[2] for pid in pids), best, tied

    def _fresh_pids(self, pids: list[int]) -> set[int]:
        """Those of `pids` whose entries hold for their unit's current Λ (always, without inducing features)."""
        return {pid for pid in pids if self._parts[pid].h is None
                or self._tops_version[pid] == self._lam[self._parts[pid].unit][1]}

    def _refresh(self, pid: int, fresh: set[int]) -> None:
        part = self._parts[pid]
        self._tops[pid] = self._partition_tops(part)
        self._tops_version[pid] = 0 if part.h is None else self._lam[part.unit][1]
        fresh.add(pid)

    def _sync(self) -> None:
        for pid in sorted(self._unsynced):
            self._parts[pid].gp.sync()
        self._unsynced.clear()

    def _apply(self, unit: int, blocks: list[np.ndarray]) -> None:
        if blocks:
            lam = self._lam[unit]
            lam[0] = grown_inverse(lam[0], np.concatenate(blocks))
            lam[1] += len(blocks)

    def _variance(self, part: _Partition, local: np.ndarray) -> np.ndarray:
        """Exact posterior variance at the partition's rows `local` (float64), the global term included."""
        if part.h is None:
            return part.gp.variance_at(local)
        lam_inv, version = self._lam[part.unit]
        if version == 0:  # nothing observed in the unit yet: the prior, 1 (ℓ = 1 − ‖φ‖², a = φ, Λ = I)
            return np.ones(local.shape[0])
        variance, v = part.gp.variance_and_v(local)
        a = part.gp.features[local].astype(np.float64)
        if v.shape[1]:
            a -= v @ part.h
        return variance + np.einsum("ij,ij->i", a @ lam_inv, a)

    def _lazy_top(self, part: _Partition, candidates: np.ndarray, weights: np.ndarray | None
                  ) -> tuple[float, np.ndarray, float]:
        """(largest exact score among `candidates`, the candidates within TIE_TOLERANCE of it, the largest variance
        evaluated on the way), score = variance (× `weights`): rows are evaluated in decreasing order of their bound,
        in chunks that double, until the next bound falls below the best exact score less the tolerance (as
        IncrementalGP.top_variance)."""
        all_bounds = part.bound[candidates] if weights is None else part.bound[candidates] * weights
        by_bound = _descending(all_bounds, LAZY_ORDERED_ROWS)
        order, bound = candidates[by_bound], all_bounds[by_bound]
        best, seen, done, chunk, near = -np.inf, -np.inf, 0, 16, []
        while done < candidates.shape[0]:
            if done + chunk > order.shape[0] < candidates.shape[0]:
                # the chunk reaches past the ordered head (rare): order them all, by the bounds at the start
                by_bound = _descending(all_bounds, candidates.shape[0])
                order, bound = candidates[by_bound], all_bounds[by_bound]
            if bound[done] < best - TIE_TOLERANCE:
                break
            take = order[done:done + chunk]
            variance = self._variance(part, take)
            part.bound[take] = variance
            score = variance if weights is None else variance * weights[np.searchsorted(candidates, take)]
            best = max(best, float(score.max()))
            seen = max(seen, float(variance.max()))
            near.append((take, score))
            done += take.shape[0]
            chunk *= 2
        rows = np.concatenate([t[s >= best - TIE_TOLERANCE] for t, s in near])
        return best, np.sort(rows), seen

    def _partition_tops(self, part: _Partition) -> dict[str, tuple[float, np.ndarray, float]]:
        """Per label with at least k+1 available rows here (fewer cannot form a group)."""
        out = {}
        for label, local in part.label_local.items():
            candidates = local[part.available[local]]
            if candidates.shape[0] < self.k + 1:
                continue
            if part.h is not None:
                if part.weights is None:
                    best, tops, largest = self._lazy_top(part, candidates, None)
                else:
                    best, tops, seen = self._lazy_top(part, candidates, part.weights[candidates])
                    # Of the largest variance only its side of the stop level must be exact (and an upper bound
                    # serves the progress report): a row the weighted search found at or above that level settles
                    # it without a second search by variance alone, a fifth of the refresh time (cProfile).
                    largest = (float(part.bound[candidates].max()) if seen >= self.stop_variance
                               else self._lazy_top(part, candidates, None)[0])
                out[label] = (best, part.rows[tops], largest)
                continue
            if part.weights is None:
                best, tops = part.gp.top_variance(candidates)
                largest = best
            else:
                best, tops = part.gp.top_variance(candidates, part.weights[candidates])
                largest = part.gp.top_variance(candidates)[0]
            out[label] = (best, part.rows[tops], largest)
        return out

    def add(self, pid: int, anchor: int, with_summary: bool, *updates: np.ndarray) -> tuple[tuple, np.ndarray | None]:
        """Observe `anchor` (a global row of partition `pid`) with its k neighbours, after applying `updates` (as in
        `summary`): ((the group's global rows, the anchor's variance before the group, with `with_summary` the anchor
        label's new `summary` here, else None), the group's new block of h for the unit's other partitions, or None
        without inducing features). Two parts, so that a Ray caller can pass the block on to other shards as an
        object reference (num_returns=2) without waiting for it."""
        self._sync()
        part = self._parts[pid]
        self._apply(part.unit, updates)
        local_anchor = int(np.searchsorted(part.rows, anchor))
        label = part.labels[local_anchor]
        variance = float(self._variance(part, np.array([local_anchor]))[0])
        group = np.concatenate([[local_anchor], self._neighbours(part, label, local_anchor)]).astype(np.int64)
        part.gp.add(group, sync=part.h is None)
        part.available[group] = False
        block = None
        if part.h is None:
            self._refresh(pid, set())  # without a global term an entry holds until its own partition moves
        else:
            self._unsynced.add(pid)
            block = part.gp.solve_last(part.gp.features[group].astype(np.float64), part.h)
            part.h = np.concatenate([part.h, block])
            self._apply(part.unit, [block])
            # The partition's entries are stale bounds now, refreshed when a summary needs them (the unit's other
            # shards refresh theirs meanwhile); a label that can form no more groups here leaves them at once.
            for other in [l for l in self._tops[pid] if np.count_nonzero(part.available[part.label_local[l]])
                          < self.k + 1]:
                del self._tops[pid][other]
        return (part.rows[group], variance, self.summary(str(label)) if with_summary else None), block

    def _neighbours(self, part: _Partition, label: str, anchor: int) -> np.ndarray:
        """The k available rows of `label` in the partition most cosine-similar to `anchor`, ties in row order."""
        local = part.label_local[label]
        similarity = part.label_points[label] @ part.gp.points[anchor]
        similarity[~part.available[local]] = -np.inf
        similarity[np.searchsorted(local, anchor)] = -np.inf
        # Stable order of the top k without sorting the whole label: everything ≥ the k-th largest value, sorted.
        # Candidates need k + 1 available rows, so the k chosen are all finite.
        k = self.k
        top = np.flatnonzero(similarity >= np.partition(similarity, -k)[-k])
        return local[top[np.argsort(-similarity[top], kind="stable")[:k]]]
