"""Exact incremental GP posterior variance over real embeddings (paper §3.2, eqs. 1-5), without refits.

Pure numpy/scipy: keeps V = L⁻¹ K_S,all (L the Cholesky factor of K_SS + σ_n² I), extended by one block per group.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from synalign_ray.metrics import squared_distances

Kernel = Literal["exponential", "rbf"]

# float32 ‖a‖² + ‖b‖² − 2ab loses ~1e-7·(‖a‖² + ‖b‖²) to cancellation. Where the squared distance is below this
# fraction of ‖a‖² + ‖b‖² the entry is recomputed in float64 from a − b: the exponential kernel's slope is unbounded
# at d = 0, so near-duplicate rows would otherwise be off by ~1e-4, while above it the error stays below ~1e-6.
NEAR_FRACTION = 0.02
VARIANCE_CHUNK = 4096  # rows per pending-column evaluation when every variance is asked for
SYNC_ROWS = 64  # pending observed rows that trigger writing V for all points (products this wide, or a group more)
# Variances within this of the largest count as tied (the caller then breaks the tie by its seeded rank). float32
# products summed in another order (another BLAS thread count, another process) move a variance by ~1e-7, so an
# exact-equality argmax would let the machine's thread layout pick the anchor between near-equal rows.
TIE_TOLERANCE = 1e-6


def lengthscale(kernel: Kernel, tau: float) -> float:
    """gpytorch lengthscale for bandwidth τ: eq. 2's exp(-d/(2τ)) is Matérn-½ with ℓ = 2τ; RBF uses ℓ = τ."""
    return 2.0 * tau if kernel == "exponential" else tau


def kernel_from_sq_dist(sq_dist: np.ndarray, kernel: Kernel, tau: float, overwrite: bool = False) -> np.ndarray:
    """κ from squared Euclidean distances, unit prior variance (κ(e, e) = 1); keeps the input's float dtype.

    With `overwrite` the result is computed in the input's memory (no N-sized temporaries)."""
    ell = lengthscale(kernel, tau)
    out = sq_dist if overwrite else np.array(sq_dist, copy=True)
    if kernel == "exponential":
        np.sqrt(out, out=out)
        out *= -1.0 / ell
    else:
        out *= -1.0 / (2.0 * ell * ell)
    return np.exp(out, out=out)


def cross_kernel(rows: np.ndarray, points: np.ndarray, kernel: Kernel, tau: float) -> np.ndarray:
    """κ(rows, points) as a float64 (len(rows), len(points)) block: the exact form, for blocks of a few thousand rows.

    Distances are taken in float64, where the cancellation in ‖a‖² + ‖b‖² − 2ab is ~1e-16 and harmless.
    """
    sq = squared_distances(np.asarray(rows, dtype=np.float64), np.asarray(points, dtype=np.float64))
    return kernel_from_sq_dist(sq, kernel, tau, overwrite=True)


def _touched_zeros(shape: tuple[int, int]) -> np.ndarray:
    """float32 zeros written once up front. np.zeros maps pages lazily, and the column-slice writes of `sync` then
    fault them in scattered order: 1.05 s against 0.17 s over a 60k × 2,000 run here."""
    out = np.empty(shape, dtype=np.float32)
    out.fill(0.0)
    return out


class IncrementalGP:
    """Posterior variance of every row of `points` given the observed rows, updated one group at a time.

    Prior N(0, κ) with κ(e, e) = 1, Gaussian observation noise σ_n² = `noise`. With L the Cholesky factor of
    K_SS + σ_n² I and V = L⁻¹ K_S,all, adding a group G extends L by [L21 L22] and V by V_G = L22⁻¹ (K_G,all − L21 V).
    L21ᵀ = L11⁻¹ K_S,G is V's columns at the rows of G, so L itself is never stored or solved against (reading L21
    from the float32 V instead of a float64 solve moved the variance by ≤ 4e-6 against a float64 recomputation at
    σ_n² = 1e-2, |S| = 1500, tight kNN groups). Variance = 1 − Σ_rows V², kept as a running sum; memory O(N·|S|).

    Deferred update: extending V for all N rows after every group streams the whole of V through memory for a
    product only |G| wide, which ran at a fifth of this machine's matmul rate. Instead the new groups' rows of V are
    kept pending (only their rows of L: against the synced rows, and the inverse of their own block) and written for
    all points at once when `sync_rows` rows are pending: the same N·|S|² flops, in products `sync_rows` wide.
    Between syncs, `top_variance` finds the exact maximum from upper bounds: a row's variance as of the last sync
    bounds it from above (variance never increases), so only the rows whose bound reaches the best exact value so far
    have their pending rows of V computed, a few dozen per step on real data. `variance` adds the pending terms for
    every row, so every value it returns is exact.

    The N-sized pieces (embeddings, V, kernel blocks, the products) are float32: syncs stream them through
    memory. The |G|-sized pieces (K_GG, the Schur complement, L22) and the bounded rows' pending values are float64.
    """

    def __init__(self, points: np.ndarray, kernel: Kernel, tau: float, noise: float, capacity: int = 0,
                 sync_rows: int = SYNC_ROWS, growth: float = 2.0, features: np.ndarray | None = None):
        """`features` (N × M, optional): the GP's kernel becomes the residual κ(a, b) − φ(a)·φ(b), prior variance
        1 − ‖φ‖² (the block part of the partitioned engine's PIC prior, see partitions.py)."""
        if points.ndim != 2 or points.shape[0] == 0:
            raise ValueError(f"points must be a non-empty 2-D array, got shape {points.shape}")
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        self.features = None if features is None else np.ascontiguousarray(features, dtype=np.float32)
        # prior variance per row: 1, or 1 − ‖φ‖² in float64 (φ from a Cholesky solve keeps ‖φ‖² ≤ 1 up to rounding)
        self._prior = (np.ones(points.shape[0]) if features is None
                       else np.maximum(1.0 - np.einsum("ij,ij->i", np.asarray(features, dtype=np.float64),
                                                       np.asarray(features, dtype=np.float64)), 0.0))
        self.kernel: Kernel = kernel
        self.tau = float(tau)
        self.noise = float(noise)
        self.sync_rows = max(int(sync_rows), 1)
        self.growth = float(growth)
        n = self.points.shape[0]
        self._sq_norms = np.einsum("ij,ij->i", self.points, self.points)
        self._n_observed = 0
        self._n_synced = 0  # observed rows whose rows of V are written for every point
        # Since the last sync: the pending rows of L restricted to the synced columns (pending × synced), and the
        # inverse of their block among themselves (pending × pending, lower triangular); float64, both small.
        self._pending_l21 = np.zeros((0, 0))
        self._pending_inv = np.zeros((0, 0))
        self._last_block: tuple[np.ndarray, np.ndarray] | None = None  # (L21, L22⁻¹) of the last group added
        # `capacity` observed rows are allocated up front (no regrowth copies when the caller knows its budget);
        # beyond it, capacity grows by the factor `growth`.
        self._observed = np.empty(capacity, dtype=np.int64)
        # Vᵀ, row-major (N, capacity): the sync product is then (N × |S|)·(|S| × width), which OpenBLAS ran
        # several times faster than (width × |S|)·(|S| × N) here (numpy or torch; |S| = 2000, N = 60k).
        self._v_t = _touched_zeros((n, capacity))
        self._sum_sq = np.zeros(n, dtype=np.float64)  # Σ_rows V² over synced rows; float64 so it never drifts

    @property
    def n_observed(self) -> int:
        return self._n_observed

    @property
    def observed(self) -> np.ndarray:
        """Observed row positions in the order they were added."""
        return self._observed[:self._n_observed]

    @property
    def variance(self) -> np.ndarray:
        """Posterior variance of the latent function at every row (float64, length N), exact, pending groups
        included. Reading it leaves the state as it was, so queries never change later results."""
        variance = self._prior - self._sum_sq
        if self._n_observed > self._n_synced:
            for start in range(0, variance.shape[0], VARIANCE_CHUNK):
                rows = np.arange(start, min(start + VARIANCE_CHUNK, variance.shape[0]))
                pending = self._pending_columns(rows)
                variance[rows] -= np.einsum("ij,ij->i", pending, pending)
        return variance

    def variance_at(self, rows: np.ndarray) -> np.ndarray:
        """Exact posterior variance at the points `rows` (float64), pending groups included."""
        rows = np.asarray(rows, dtype=np.int64)
        variance = self._prior[rows] - self._sum_sq[rows]
        if self._n_observed > self._n_synced:
            pending = self._pending_columns(rows)
            variance -= np.einsum("ij,ij->i", pending, pending)
        return variance

    def variance_and_v(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(`variance_at(rows)`, V's columns at `rows`: (len(rows), n_observed) float64, the observed rows in order,
        pending ones included)."""
        rows = np.asarray(rows, dtype=np.int64)
        variance = self._prior[rows] - self._sum_sq[rows]
        v = self._v_t[rows, :self._n_synced].astype(np.float64)
        if self._n_observed > self._n_synced:
            pending = self._pending_columns(rows)
            variance -= np.einsum("ij,ij->i", pending, pending)
            v = np.concatenate([v, pending], axis=1)
        return variance, v

    def _reserve(self, needed: int) -> None:
        capacity = self._observed.shape[0]
        if needed <= capacity:
            return
        # Never past one observation per point (all the selection tracker can make) unless asked.
        new_capacity = max(needed, min(max(int(self.growth * capacity), 16), self.points.shape[0]))
        m = self._n_observed
        observed = np.empty(new_capacity, dtype=np.int64)
        observed[:m] = self._observed[:m]
        v_t = _touched_zeros((self.points.shape[0], new_capacity))
        v_t[:, :self._n_synced] = self._v_t[:, :self._n_synced]
        self._observed, self._v_t = observed, v_t

    def _kernel_to_all(self, group: np.ndarray) -> np.ndarray:
        """κ(all rows, group) as a float32 (N, |G|) block: one GEMM against the stored embeddings and norms."""
        cols = self.points[group]
        col_norms = self._sq_norms[group]
        sq = self.points @ cols.T
        sq *= -2.0
        sq += self._sq_norms[:, None]
        sq += col_norms[None, :]
        # Near pairs: sq < NEAR_FRACTION·(‖a‖² + ‖b‖²), screened against the largest ‖a‖² (no N-sized temporary).
        near_row, near_col = np.nonzero(sq < NEAR_FRACTION * (self._sq_norms.max() + col_norms)[None, :])
        keep = sq[near_row, near_col] < NEAR_FRACTION * (self._sq_norms[near_row] + col_norms[near_col])
        near_row, near_col = near_row[keep], near_col[keep]
        diff = self.points[near_row].astype(np.float64) - cols[near_col].astype(np.float64)
        sq[near_row, near_col] = np.einsum("ij,ij->i", diff, diff)
        np.maximum(sq, 0.0, out=sq)
        block = kernel_from_sq_dist(sq, self.kernel, self.tau, overwrite=True)
        if self.features is not None:
            block -= self.features @ self.features[group].T
        return block

    def _cross(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The GP's kernel between the points `rows` and `cols`, float64 (cross_kernel, less φ·φ with features)."""
        block = cross_kernel(self.points[rows], self.points[cols], self.kernel, self.tau)
        if self.features is not None:
            block -= self.features[rows].astype(np.float64) @ self.features[cols].T.astype(np.float64)
        return block

    def _pending_columns(self, rows: np.ndarray) -> np.ndarray:
        """Pending rows of V at the points `rows`, float64 (len(rows), pending)."""
        s, m = self._n_synced, self._n_observed
        residual = self._cross(rows, self._observed[s:m])
        if s:
            residual -= self._v_t[rows, :s].astype(np.float64) @ self._pending_l21.T
        return residual @ self._pending_inv.T

    def add(self, group: np.ndarray, sync: bool = True) -> None:
        """Observe the rows `group` (target 0); V and the variances follow (now or at the next sync). `sync=False`
        leaves a due sync to the caller's `sync()`, made before anything reads V again (so the floats are the same)."""
        group = np.asarray(group, dtype=np.int64)
        s, m, g = self._n_synced, self._n_observed, group.shape[0]
        self._reserve(m + g)
        schur = self._cross(group, group) + self.noise * np.eye(g)
        l21_synced = self._v_t[group, :s].astype(np.float64)
        l21_pending = self._pending_columns(group)
        schur -= l21_synced @ l21_synced.T + l21_pending @ l21_pending.T
        # L22 is well conditioned (the Schur complement is ≥ σ_n² I), and so is the pending block of L built from
        # such diagonal blocks: its inverse turns every later forward substitution into one product.
        l22_inv = np.linalg.inv(np.linalg.cholesky(schur))
        j = m - s
        self._last_block = (np.concatenate([l21_synced, l21_pending], axis=1), l22_inv)
        inverse = np.zeros((j + g, j + g))
        inverse[:j, :j] = self._pending_inv
        inverse[j:, :j] = -l22_inv @ l21_pending @ self._pending_inv
        inverse[j:, j:] = l22_inv
        self._pending_inv = inverse
        self._pending_l21 = np.concatenate([self._pending_l21.reshape(j, s), l21_synced])
        self._observed[m:m + g] = group
        self._n_observed = m + g
        if sync and self._n_observed - s >= self.sync_rows:
            self.sync()

    def solve_last(self, rhs: np.ndarray, solved: np.ndarray) -> np.ndarray:
        """The last group's rows of L⁻¹B for a right-hand side B: `rhs` its rows of B (|G| × M), `solved` L⁻¹B's rows
        for the rows observed before it (synced or pending alike: L's new rows span both)."""
        if self._last_block is None:
            raise ValueError("solve_last needs a group added first")
        l21, l22_inv = self._last_block
        return l22_inv @ (rhs - l21 @ solved) if solved.shape[0] else l22_inv @ rhs

    def sync(self) -> None:
        """Write the pending groups' rows of V for every point: one product as wide as all of them together.

        Called by `add` every `sync_rows` rows (or, with `add(sync=False)`, by its caller before V is read again) and
        nowhere else, so the state (and its rounding) depends on the groups added, never on which queries were made in
        between: a resumed tracker reproduces the original bit for bit.
        """
        s, m = self._n_synced, self._n_observed
        if m == s:
            return
        residual = self._kernel_to_all(self._observed[s:m])  # (N, pending) float32: K_P,allᵀ
        if s:
            residual -= self._v_t[:, :s] @ self._pending_l21.T.astype(np.float32)
        new_rows_t = residual @ self._pending_inv.T.astype(np.float32)
        self._v_t[:, s:m] = new_rows_t
        # Only the new rows of V change the sum: a block Cholesky extension leaves the older rows untouched.
        self._sum_sq += np.einsum("ij,ij->i", new_rows_t, new_rows_t)
        self._n_synced = m
        self._pending_l21 = np.zeros((0, m))
        self._pending_inv = np.zeros((0, 0))

    def top_variance(self, candidates: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """(largest exact variance among `candidates`, the candidates within TIE_TOLERANCE of it), without a sync.

        With `weights` (≥ 0, one per candidate) the score is weight × variance instead. Candidates are bounded by
        their score as of the last sync; the best bounds are evaluated exactly in chunks that double in size until
        the next bound falls below the best exact value less the tolerance.
        """
        candidates = np.asarray(candidates, dtype=np.int64)
        bound = self._prior[candidates] - self._sum_sq[candidates]
        if weights is not None:
            bound *= weights
        if self._n_observed == self._n_synced:
            best = bound.max()
            return float(best), candidates[bound >= best - TIE_TOLERANCE]
        best, done, chunk = -np.inf, 0, 64
        near_rows, near_values = [], []  # evaluated rows within the tolerance of the best value seen so far
        # Bounds in decreasing order, sorted a prefix at a time (most steps stop within the first chunk). A longer
        # prefix appends only rows not yet evaluated: among tied bounds the partition may pick other rows each time.
        order = np.empty(0, dtype=np.int64)
        evaluated = np.zeros(bound.shape[0], dtype=bool)
        while done < bound.shape[0]:
            if done == order.shape[0]:
                width = min(done + chunk, bound.shape[0])
                part = np.argpartition(-bound, width - 1)[:width] if width < bound.shape[0] else np.arange(width)
                part = np.sort(part[~evaluated[part]])
                order = np.concatenate([order, part[np.argsort(-bound[part], kind="stable")]])
            if bound[order[done]] < best - TIE_TOLERANCE:
                break
            take = order[done:done + chunk]
            evaluated[take] = True
            pending = self._pending_columns(candidates[take])
            reduction = np.einsum("ij,ij->i", pending, pending)
            exact = bound[take] - (reduction if weights is None else weights[take] * reduction)
            best = max(best, exact.max())
            near = exact >= best - TIE_TOLERANCE
            near_rows.append(candidates[take][near])
            near_values.append(exact[near])
            done += take.shape[0]
            chunk = min(2 * chunk, VARIANCE_CHUNK)
        rows, values = np.concatenate(near_rows), np.concatenate(near_values)
        return float(best), np.sort(rows[values >= best - TIE_TOLERANCE])
