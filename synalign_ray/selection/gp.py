"""Exact incremental GP posterior variance over real embeddings (paper §3.2, eqs. 1-5), without refits.

Pure numpy/scipy: keeps the Cholesky factor of K_ss + σ_n² I and V = L⁻¹ K_s,all, extended by one block per group.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.linalg import solve_triangular

Kernel = Literal["exponential", "rbf"]

# Rows per chunk when a kernel block is formed: bounds the float64 scratch to CHUNK_ROWS × dim.
CHUNK_ROWS = 16_384


def lengthscale(kernel: Kernel, tau: float) -> float:
    """gpytorch lengthscale for bandwidth τ: eq. 2's exp(-d/(2τ)) is Matérn-½ with ℓ = 2τ; RBF uses ℓ = τ."""
    return 2.0 * tau if kernel == "exponential" else tau


def kernel_from_sq_dist(sq_dist: np.ndarray, kernel: Kernel, tau: float) -> np.ndarray:
    """κ from squared Euclidean distances, unit prior variance (κ(e, e) = 1)."""
    ell = lengthscale(kernel, tau)
    if kernel == "exponential":
        return np.exp(-np.sqrt(sq_dist) / ell)
    return np.exp(-sq_dist / (2.0 * ell * ell))


def cross_kernel(rows: np.ndarray, points: np.ndarray, kernel: Kernel, tau: float) -> np.ndarray:
    """κ(rows, points) as a float64 (len(rows), len(points)) block, formed in row chunks of `points`.

    Distances are taken in float64: the exponential kernel's slope is unbounded at d = 0, so float32
    cancellation in ‖a‖² + ‖b‖² − 2ab would shift κ by ~1e-4 between near-duplicate rows.
    """
    a = np.asarray(rows, dtype=np.float64)
    a_sq = np.einsum("ij,ij->i", a, a)
    out = np.empty((a.shape[0], points.shape[0]), dtype=np.float64)
    for start in range(0, points.shape[0], CHUNK_ROWS):
        b = np.asarray(points[start:start + CHUNK_ROWS], dtype=np.float64)
        sq = a_sq[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (a @ b.T)
        np.maximum(sq, 0.0, out=sq)
        out[:, start:start + b.shape[0]] = kernel_from_sq_dist(sq, kernel, tau)
    return out


def median_pairwise_distance(points: np.ndarray, sample_size: int, seed: int) -> float:
    """Median Euclidean distance over all pairs of a seeded sample of `sample_size` rows."""
    rng = np.random.default_rng(seed)
    n = points.shape[0]
    pick = np.sort(rng.choice(n, size=min(sample_size, n), replace=False))
    sample = np.asarray(points[pick], dtype=np.float64)
    sq = pairwise_sq_dist(sample)
    upper = np.triu_indices(sample.shape[0], k=1)
    return float(np.median(np.sqrt(sq[upper])))


def pairwise_sq_dist(sample: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between all rows of a small float64 sample."""
    sq_norm = np.einsum("ij,ij->i", sample, sample)
    sq = sq_norm[:, None] + sq_norm[None, :] - 2.0 * (sample @ sample.T)
    return np.maximum(sq, 0.0)


class IncrementalGP:
    """Posterior variance of every row of `points` given the observed rows, updated one group at a time.

    Prior N(0, κ) with κ(e, e) = 1, Gaussian observation noise σ_n² = `noise`. Adding a group G to the observed
    set S costs one triangular solve against L (|S|²·|G|), one product L21 · V (|G|·|S|·N, the dominant term) and
    one |G|×|G| Cholesky; memory is O(N·|S|) for V and O(|S|²) for L. Variance = 1 − Σ_rows V².
    """

    def __init__(self, points: np.ndarray, kernel: Kernel, tau: float, noise: float, capacity: int = 0):
        if points.ndim != 2 or points.shape[0] == 0:
            raise ValueError(f"points must be a non-empty 2-D array, got shape {points.shape}")
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        self.kernel: Kernel = kernel
        self.tau = float(tau)
        self.noise = float(noise)
        n = self.points.shape[0]
        self.observed = np.empty(0, dtype=np.int64)
        # `capacity` observed rows are allocated up front (no regrowth copies when the caller knows its budget);
        # beyond it, capacity doubles.
        self._chol = np.zeros((capacity, capacity), dtype=np.float64)  # L, lower, float64
        self._v = np.zeros((capacity, n), dtype=np.float32)            # V = L⁻¹ K_s,all: the O(N·|S|) state
        self._sum_sq = np.zeros(n, dtype=np.float64)      # Σ_rows V², kept in float64 so it never drifts

    @property
    def n_observed(self) -> int:
        return int(self.observed.shape[0])

    @property
    def variance(self) -> np.ndarray:
        """Posterior variance of the latent function at every row (float64, length N)."""
        return 1.0 - self._sum_sq

    def _reserve(self, needed: int) -> None:
        capacity = self._v.shape[0]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity, 16)
        m = self.n_observed
        chol = np.zeros((new_capacity, new_capacity), dtype=np.float64)
        chol[:m, :m] = self._chol[:m, :m]
        v = np.zeros((new_capacity, self.points.shape[0]), dtype=np.float32)
        v[:m] = self._v[:m]
        self._chol, self._v = chol, v

    def add(self, group: np.ndarray) -> None:
        """Observe the rows `group` (target 0) and update L, V and the variance of every row."""
        group = np.asarray(group, dtype=np.int64)
        m, g = self.n_observed, group.shape[0]
        self._reserve(m + g)
        k_group_all = cross_kernel(self.points[group], self.points, self.kernel, self.tau)  # (g, N)
        k_group_group = k_group_all[:, group] + self.noise * np.eye(g)
        if m:
            l11 = self._chol[:m, :m]
            # L21ᵀ = L11⁻¹ K_s,g in float64: it feeds the Schur complement, whose Cholesky needs the precision.
            l21 = solve_triangular(l11, k_group_all[:, self.observed].T, lower=True, check_finite=False).T
            schur = k_group_group - l21 @ l21.T
            residual = k_group_all - (l21.astype(np.float32) @ self._v[:m]).astype(np.float64)
        else:
            l21 = np.zeros((g, 0))
            schur = k_group_group
            residual = k_group_all
        l22 = np.linalg.cholesky(schur)
        v_new = solve_triangular(l22, residual, lower=True, check_finite=False)
        self._chol[m:m + g, :m] = l21
        self._chol[m:m + g, m:m + g] = l22
        self._v[m:m + g] = v_new
        self._sum_sq += np.einsum("ij,ij->j", v_new, v_new)
        self.observed = np.concatenate([self.observed, group])
