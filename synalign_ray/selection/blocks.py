"""The real rows' unit embeddings in blocks of consecutive positions (in the tracker's process, or one Ray actor each),
and the passes the selection makes over them before any GP exists: gathers, the balanced 2-means bisection into
partitions, local density. Every result is the same however the rows are cut into blocks. Pure numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from synalign_ray.selection.plan import check_points, raw_density
from synalign_ray.selection.steps import call_shard

# Sums over rows are formed per chunk of CHUNK_ROWS positions and added in chunk order, and blocks start at multiples
# of it, so a sum has the same bits for any blocks. Small: a block returns one d-vector per chunk a part touches.
CHUNK_ROWS = 1024
PROJECT_ROWS = 16_384  # rows per float64 projection product (bounds its temporary copy)
LLOYD_ITERATIONS = 5  # 2-means steps per bisection: they only orient the cut, the median makes it balanced


def block_ranges(n: int, num_blocks: int, chunk_rows: int = CHUNK_ROWS) -> list[tuple[int, int]]:
    """[lo, hi) position ranges of `num_blocks` blocks over n rows, cut at multiples of `chunk_rows` (so a small n
    leaves later blocks empty)."""
    cuts = [min(n, round(n * i / num_blocks / chunk_rows) * chunk_rows) for i in range(num_blocks)] + [n]
    return list(zip(cuts[:-1], cuts[1:]))


def unit_rows(embeddings: np.ndarray, first_row: int = 0) -> np.ndarray:
    """Float32 rows scaled to unit length, after plan.check_points (an error names the row counting from
    `first_row`)."""
    check_points(embeddings, first_row)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.ascontiguousarray(embeddings / norms, dtype=np.float32)


def _project(points: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """points · axis in float64, row by row (einsum, not BLAS: a row's value does not depend on its neighbours)."""
    return np.concatenate([np.einsum("ij,j->i", points[s:s + PROJECT_ROWS], axis)
                           for s in range(0, points.shape[0], PROJECT_ROWS)] or [np.zeros(0)])


class RowBlock:
    """Rows `first` … `first` + n − 1 (positions in row-id order) as float32 unit vectors, and the parts of the
    bisection that it holds rows of (part id → its rows here, block-local and sorted)."""

    def __init__(self, embeddings: np.ndarray | None = None, first: int = 0, chunk_rows: int = CHUNK_ROWS):
        self.chunk_rows = chunk_rows
        self.first = first
        self.points = None if embeddings is None else unit_rows(embeddings, first)
        self._parts: dict[int, np.ndarray] = {}

    def load(self, source: Any, first: int) -> int:
        """Read the rows from `source` (anything whose load(first_row) gives (table, embeddings), such as
        alignment.rows.FolderSlice); returns their count. A method, so a bad row reaches the caller as the
        InputError itself."""
        import pyarrow as pa

        _, emb = source.load(first)
        if emb.shape[0] and first % self.chunk_rows:
            raise ValueError(f"a block starts at a multiple of {self.chunk_rows} rows, not {first}")
        self.first = first
        self.points = unit_rows(emb, first)
        # The read's Arrow buffers are freed now, but Arrow's allocator keeps them for reuse unless told: at 500,000
        # rows a block held 2.8 GiB for 0.7 GiB of rows (measured, benchmark_selection_scale.py --shards).
        del emb
        pa.default_memory_pool().release_unused()
        return self.points.shape[0]

    def size(self) -> int:
        return self.points.shape[0]

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, their unit rows) for positions inside this block."""
        return positions, self.points[np.asarray(positions) - self.first]

    def density(self, positions: np.ndarray, sample: np.ndarray, kernel: str, tau: float) -> np.ndarray:
        """plan.raw_density of the rows at these positions."""
        return raw_density(self.points, np.asarray(positions) - self.first, sample, kernel, tau)

    def begin(self, part: int, positions: np.ndarray) -> None:
        self._parts[part] = np.asarray(positions, dtype=np.int64) - self.first

    def split_sums(self, part: int, axis: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
        """The part's rows split by points · axis > threshold (the nearer of two centroids): per chunk of positions
        it touches, the float64 sums of the rows beyond and not beyond, and their counts."""
        local = self._parts[part]
        chunk = (local + self.first) // self.chunk_rows
        starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
        ends = np.r_[starts[1:], local.shape[0]]
        d = self.points.shape[1]
        beyond_sum, other_sum = np.zeros((starts.shape[0], d)), np.zeros((starts.shape[0], d))
        beyond_count = np.zeros(starts.shape[0], dtype=np.int64)
        for c, (lo, hi) in enumerate(zip(starts, ends)):
            x = self.points[local[lo:hi]]
            beyond = _project(x, axis) > threshold
            beyond_sum[c] = x[beyond].sum(axis=0, dtype=np.float64)
            other_sum[c] = x[~beyond].sum(axis=0, dtype=np.float64)
            beyond_count[c] = int(beyond.sum())
        return beyond_sum, beyond_count, other_sum, (ends - starts) - beyond_count

    def project(self, part: int, axis: np.ndarray) -> np.ndarray:
        return _project(self.points[self._parts[part]], axis)

    def cut(self, part: int, upper: np.ndarray, upper_id: int, lower_id: int) -> None:
        """Part `part` becomes `upper_id` (its rows at the positions `upper`) and `lower_id` (the others)."""
        local = self._parts.pop(part)
        is_upper = np.isin(local, np.asarray(upper, dtype=np.int64) - self.first, assume_unique=True)
        self._parts[upper_id], self._parts[lower_id] = local[is_upper], local[~is_upper]

    def end(self) -> None:
        self._parts.clear()

    def release(self) -> None:
        """Drop the rows: called after the shards' `rows` calls (an actor runs its calls in order), whose answers
        the shards receive, so a row is not held here, in the object store and in a shard at once."""
        self.points = None


def split_by_block(positions: np.ndarray, starts: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Sorted `positions` → (block index, the positions it holds) for the blocks holding any."""
    cuts = np.searchsorted(positions, starts)
    ends = np.r_[cuts[1:], positions.shape[0]]
    return [(b, positions[lo:hi]) for b, (lo, hi) in enumerate(zip(cuts, ends)) if hi > lo]


def gather(blocks: list, starts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The unit rows at `positions` (any order, no repeats), from the blocks that hold them."""
    positions = np.asarray(positions, dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    held = split_by_block(positions[order], starts)
    replies = [call_shard(blocks[b], "rows", sub) for b, sub in held]
    out = None
    done = 0
    for (_, sub), reply in zip(held, replies):
        rows = reply.result()[1]
        if out is None:
            out = np.empty((positions.shape[0], rows.shape[1]), dtype=np.float32)
        out[order[done:done + sub.shape[0]]] = rows
        done += sub.shape[0]
    return out


def bisect(blocks: list, starts: np.ndarray, rows: np.ndarray, max_rows: int, seed: int) -> list[np.ndarray]:
    """`rows` (positions) split into parts of at most `max_rows` rows (each more than max_rows // 2), sorted
    positions each, the blocks doing the passes over the rows.

    A part too large is cut in two at the median of its projection onto the axis between its two 2-means centroids
    (seeded initial centroids, LLOYD_ITERATIONS steps): compact like k-means, balanced like a median split, so the
    partition sizes, and with them the GP state per partition, stay bounded. The tracker holds only positions, the
    centroids and one projection per row of the part it cuts. Deterministic for a given seed, whatever the blocks.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    stack, parts, next_id = [(0, rows)], [], 1
    if rows.shape[0] > max_rows:
        for reply in [call_shard(blocks[b], "begin", 0, sub) for b, sub in split_by_block(rows, starts)]:
            reply.result()
    while stack:
        pid, part = stack.pop()
        if part.shape[0] <= max_rows:
            parts.append(part)
            continue
        held = split_by_block(part, starts)
        centroids = gather(blocks, starts, part[rng.choice(part.shape[0], size=2, replace=False)]).astype(np.float64)
        for _ in range(LLOYD_ITERATIONS):
            # nearest centroid by ‖x − c‖² up to the common ‖x‖² term
            axis = centroids[1] - centroids[0]
            threshold = 0.5 * (centroids[1] @ centroids[1] - centroids[0] @ centroids[0])
            # every block's pass is sent before any answer is awaited, so actor-held blocks work at once
            calls = [call_shard(blocks[b], "split_sums", pid, axis, threshold) for b, _ in held]
            replies = [call.result() for call in calls]
            beyond_sum, beyond_count, other_sum, other_count = (np.concatenate(r) for r in zip(*replies))
            n_beyond = int(beyond_count.sum())
            if n_beyond in (0, part.shape[0]):
                break
            centroids = np.stack([other_sum.sum(axis=0) / (part.shape[0] - n_beyond),
                                  beyond_sum.sum(axis=0) / n_beyond])
        axis = centroids[1] - centroids[0]
        projection = np.concatenate([r.result() for r in [call_shard(blocks[b], "project", pid, axis)
                                                          for b, _ in held]])
        order = np.argsort(projection, kind="stable")
        half = part.shape[0] // 2
        upper, lower = np.sort(part[order[half:]]), np.sort(part[order[:half]])
        upper_id, lower_id = next_id, next_id + 1
        next_id += 2
        by_block = dict(split_by_block(upper, starts))
        for reply in [call_shard(blocks[b], "cut", pid, by_block.get(b, np.zeros(0, np.int64)), upper_id, lower_id)
                      for b, _ in held]:
            reply.result()
        stack.extend([(upper_id, upper), (lower_id, lower)])
    for reply in [call_shard(block, "end") for block in blocks]:
        reply.result()
    return parts
