"""Exact GPs on partitions of the real rows: bounded-size partitions by balanced 2-means bisection, and the shard that
holds some of them (their GPs, availability and neighbour search) for the selection tracker to coordinate.

Pure numpy; a shard is a plain class that a caller may wrap with `ray.remote` to spread partitions over actors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synalign_ray.selection.gp import IncrementalGP, Kernel

LLOYD_ITERATIONS = 5  # 2-means steps per bisection: they only orient the cut, the median makes it balanced


def bisect_partitions(points: np.ndarray, rows: np.ndarray, max_rows: int, seed: int) -> list[np.ndarray]:
    """`rows` split into parts of at most `max_rows` rows (each more than max_rows // 2), sorted positions each.

    A part too large is cut in two at the median of its projection onto the axis between its two 2-means centroids
    (seeded initial centroids, LLOYD_ITERATIONS steps): compact like k-means, balanced like a median split, so the
    partition sizes, and with them the GP state per partition, stay bounded. Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    stack, parts = [rows], []
    while stack:
        part = stack.pop()
        if part.shape[0] <= max_rows:
            parts.append(part)
            continue
        x = points[part]
        centroids = x[rng.choice(part.shape[0], size=2, replace=False)]
        for _ in range(LLOYD_ITERATIONS):
            # nearest centroid by ‖x − c‖² up to the common ‖x‖² term
            nearer_second = x @ (centroids[1] - centroids[0]) > 0.5 * (centroids[1] @ centroids[1]
                                                                        - centroids[0] @ centroids[0])
            if nearer_second.all() or not nearer_second.any():
                break
            centroids = np.stack([x[~nearer_second].mean(axis=0), x[nearer_second].mean(axis=0)])
        order = np.argsort(x @ (centroids[1] - centroids[0]), kind="stable")
        half = part.shape[0] // 2
        stack.extend([np.sort(part[order[half:]]), np.sort(part[order[:half]])])
    return parts


class _Partition:
    """One exact GP over a partition's rows, the rows still available, and each label's rows within it."""

    def __init__(self, rows: np.ndarray, points: np.ndarray, labels: np.ndarray, weights: np.ndarray | None,
                 kernel: Kernel, tau: float, noise: float, capacity: int, sync_rows: int, growth: float):
        self.rows = rows
        self.gp = IncrementalGP(points, kernel, tau, noise, capacity=capacity, sync_rows=sync_rows, growth=growth)
        self.available = np.ones(rows.shape[0], dtype=bool)
        self.weights = weights
        self.labels = labels
        self.label_local = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
        # Each label's points, contiguous, so a group's kNN is one matvec without gathering rows each step.
        self.label_points = {label: self.gp.points if local.shape[0] == rows.shape[0] else self.gp.points[local]
                             for label, local in self.label_local.items()}


class PartitionShard:
    """Holds some partitions of the real rows, each with its own exact IncrementalGP over its own rows only.

    A group observed in one partition lowers the variance there and nowhere else: the kernel's effect across
    partitions is dropped (the approximation of the partitioned engine; with one partition per label it is exact).
    `tops()` reports every partition's best anchor candidates per label; `add(pid, anchor)` forms the anchor's group
    (its k most cosine-similar available rows of the same label in the same partition), observes it and reports that
    partition's new candidates, so a coordinator makes one call per group and caches everything else.

    Labels are plain strings (a single "" when the data is unlabelled); row positions are global throughout.
    """

    def __init__(self, partitions: dict[int, dict[str, Any]], k: int, kernel: Kernel, tau: float, noise: float):
        """`partitions`: pid → {"rows", "points", "labels", "weights" (None for the max-variance rule), "capacity",
        "sync_rows", "growth"} (the last three as IncrementalGP takes them)."""
        self.k = k
        self._parts = {pid: _Partition(p["rows"], p["points"], np.asarray(p["labels"]), p["weights"], kernel, tau,
                                       noise, p["capacity"], p["sync_rows"], p["growth"])
                       for pid, p in partitions.items()}

    def state_bytes(self) -> int:
        """Bytes allocated for the float32 V of all partitions held here."""
        return sum(p.gp._v_t.nbytes for p in self._parts.values())

    def tops(self) -> dict[int, dict[str, tuple[float, np.ndarray, float]]]:
        """pid → label → (best score, global rows tied at it, largest variance), for every partition held."""
        return {pid: self._partition_tops(part) for pid, part in self._parts.items()}

    def _partition_tops(self, part: _Partition) -> dict[str, tuple[float, np.ndarray, float]]:
        """Per label with at least k+1 available rows here (fewer cannot form a group)."""
        out = {}
        for label, local in part.label_local.items():
            candidates = local[part.available[local]]
            if candidates.shape[0] < self.k + 1:
                continue
            if part.weights is None:
                best, tops = part.gp.top_variance(candidates)
                largest = best
            else:
                best, tops = part.gp.top_variance(candidates, part.weights[candidates])
                largest = part.gp.top_variance(candidates)[0]
            out[label] = (best, part.rows[tops], largest)
        return out

    def add(self, pid: int, anchor: int) -> tuple[np.ndarray, float, dict[str, tuple[float, np.ndarray, float]]]:
        """Observe `anchor` (a global row of partition `pid`) with its k neighbours: (the group's global rows, the
        anchor's variance before the group, the partition's new `tops` entry)."""
        part = self._parts[pid]
        local_anchor = int(np.searchsorted(part.rows, anchor))
        label = part.labels[local_anchor]
        variance = float(part.gp.variance_at(np.array([local_anchor]))[0])
        group = np.concatenate([[local_anchor], self._neighbours(part, label, local_anchor)]).astype(np.int64)
        part.gp.add(group)
        part.available[group] = False
        return part.rows[group], variance, self._partition_tops(part)

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
