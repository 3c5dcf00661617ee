"""Pure numeric core of synthetic distribution alignment (paper §3.4, eqs. 8–11): orthogonal projection features,
simplex weights fitted by exponentiated gradient on ‖mean φ(E_ori) − Σ ω_j φ(e'_j)‖² + λ·KL(ω‖uniform), and the
search for the smallest λ that meets a diversity target. Imports neither Ray nor vLLM; runs in one process or on actors.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np
from threadpoolctl import threadpool_limits

from synalign_ray.alignment.resample import expected_distinct
from synalign_ray.metrics import median_pairwise_distance

FeatureKind = Literal["linear", "rff"]
# Rows per chunk keep one chunk of float32 features near 512 KiB (half a core's L2), so the two products of a step
# (gradient, then the new weighted sum) read it from cache instead of main memory.
_CHUNK_BYTES = 1 << 19
# Real rows are only reduced once, in larger blocks that keep the feature transform an efficient matrix product.
_REAL_BLOCK_ROWS = 4096


def orthogonal_directions(dim: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, dim) unit directions, orthonormal within each block of ≤ dim rows (QR of a Gaussian matrix);
    independent blocks when count exceeds dim."""
    if dim <= 0 or count <= 0:
        raise ValueError(f"need a positive dimension and projection count, got dim={dim}, count={count}")
    blocks = []
    remaining = count
    while remaining > 0:
        k = min(dim, remaining)
        q, r = np.linalg.qr(rng.standard_normal((dim, k)))
        # Fixing the signs by R's diagonal makes Q Haar-distributed rather than biased by the QR convention.
        blocks.append((q * np.sign(np.diag(r))).T)
        remaining -= k
    return np.vstack(blocks)


@dataclass(frozen=True)
class FeatureMap:
    """φ: linear θ·e (eq. 10), or orthogonal random Fourier features √(2/D)·cos(s·θ·e + b) with s ~ χ_d / ℓ,
    whose inner products approximate the RBF kernel exp(−‖x−y‖²/(2ℓ²))."""

    kind: FeatureKind
    directions: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray
    bandwidth: float | None

    @property
    def size(self) -> int:
        return int(self.directions.shape[0])

    @property
    def dim(self) -> int:
        return int(self.directions.shape[1])

    def transform(self, emb: np.ndarray) -> np.ndarray:
        """(n, d) embeddings -> (n, |Θ|) float32 features."""
        z = np.asarray(emb, dtype=np.float32) @ self.directions.T.astype(np.float32)
        if self.kind == "linear":
            return z
        z *= self.scales.astype(np.float32)
        z += self.offsets.astype(np.float32)
        np.cos(z, out=z)
        z *= np.float32(np.sqrt(2.0 / self.size))
        return z


def make_feature_map(kind: FeatureKind, projections: int, real_emb: np.ndarray, seed: int) -> FeatureMap:
    """Seeded feature map; rff takes its bandwidth ℓ from the median pairwise distance of the real rows."""
    if kind not in ("linear", "rff"):
        raise ValueError(f"unknown feature kind {kind!r}: use linear or rff")
    rng = np.random.default_rng(seed)
    dim = int(real_emb.shape[1])
    directions = orthogonal_directions(dim, projections, rng)
    if kind == "linear":
        return FeatureMap("linear", directions, np.ones(projections), np.zeros(projections), None)
    bandwidth = median_pairwise_distance(real_emb, seed=seed)
    # Gaussian rows have χ_d-distributed norms; giving orthogonal directions those norms keeps the RBF kernel.
    scales = np.sqrt(rng.chisquare(dim, size=projections)) / bandwidth
    offsets = rng.uniform(0.0, 2.0 * np.pi, size=projections)
    return FeatureMap("rff", directions, scales, offsets, bandwidth)


def objective(weights: np.ndarray, features: np.ndarray, target: np.ndarray, entropy: float) -> float:
    """‖target − featuresᵀω‖² + λ·Σ ω log(nω) for one group (ω on the simplex)."""
    residual = features.T.astype(np.float64) @ weights - target
    positive = weights > 0
    kl = float(np.sum(weights[positive] * np.log(weights.size * weights[positive])))
    return float(residual @ residual) + entropy * kl


def objective_gradient(features: np.ndarray, residual: np.ndarray, log_weights: np.ndarray,
                       entropy: float) -> np.ndarray:
    """∂objective/∂ω_j = 2 φ_j·r + λ(log(nω_j) + 1), with r = featuresᵀω − target. The fit passes unnormalised
    log-weights, off by one constant per group, which a mirror step on the simplex ignores."""
    grad = 2.0 * (features @ residual.astype(features.dtype, copy=False))
    if entropy:
        return grad + entropy * (log_weights + 1.0)
    return grad.astype(np.float64)


@dataclass
class ShardSums:
    """One shard's per-group sums under its own shift m: Σu, Σu·a, Σu², Σu·φ with u = exp(a − m)."""

    shift: np.ndarray
    total: np.ndarray
    log_moment: np.ndarray
    square: np.ndarray
    features: np.ndarray


@dataclass
class Totals:
    """Shard sums combined: the weighted feature mean and what the objective and ESS need, per group."""

    shift: np.ndarray
    total: np.ndarray
    mean: np.ndarray
    ess: np.ndarray
    neg_entropy: np.ndarray
    shard_shares: np.ndarray

    @property
    def log_norm(self) -> np.ndarray:
        """log Σ exp(a): a row's weight is exp(a_j − log_norm[group])."""
        return self.shift + np.log(self.total)


def combine(parts: list[ShardSums]) -> Totals:
    """Reduce per-shard sums into global per-group totals (the driver's side of every iteration)."""
    shifts = np.stack([p.shift for p in parts])
    top = shifts.max(axis=0)
    factor = np.where(np.isfinite(shifts), np.exp(shifts - top), 0.0)
    total = sum(f * p.total for f, p in zip(factor, parts))
    moment = sum(f * p.log_moment for f, p in zip(factor, parts))
    square = sum(f * f * p.square for f, p in zip(factor, parts))
    feats = sum(f[:, None] * p.features for f, p in zip(factor, parts))
    log_norm = top + np.log(total)
    return Totals(shift=top, total=total, mean=feats / total[:, None], ess=total * total / square,
                  neg_entropy=moment / total - log_norm,
                  shard_shares=factor * np.stack([p.total for p in parts]) / total)


class WeightShard:
    """A slice of synthetic rows (features grouped by label code) with their log-weights, plus a slice of real
    rows reduced once to per-group feature sums. Plain class: used directly, or as a Ray actor's state."""

    def __init__(self, syn_emb: np.ndarray, syn_groups: np.ndarray, real_emb: np.ndarray,
                 real_groups: np.ndarray, feature_map: FeatureMap, num_groups: int):
        self.num_groups = num_groups
        self._order = np.argsort(syn_groups, kind="stable")
        self._groups = np.asarray(syn_groups)[self._order]
        self._features = feature_map.transform(np.asarray(syn_emb)[self._order]) if len(self._order) else \
            np.zeros((0, feature_map.size), np.float32)
        self._log_w = np.zeros(len(self._order))
        self._velocity = np.zeros(len(self._order))
        self._saved: dict[str, np.ndarray] = {}
        bounds = np.searchsorted(self._groups, np.arange(num_groups + 1))
        step = max(16, _CHUNK_BYTES // (4 * feature_map.size))
        self._chunks = [(g, lo, min(lo + step, bounds[g + 1]))
                        for g in range(num_groups) for lo in range(bounds[g], bounds[g + 1], step)]
        # Real rows with a negative code belong to no fitted group (a label no synthetic row carries).
        fitted = np.asarray(real_groups) >= 0
        real_emb, real_groups = np.asarray(real_emb)[fitted], np.asarray(real_groups, dtype=np.int64)[fitted]
        self._real_sums = np.zeros((num_groups, feature_map.size))
        self._real_counts = np.bincount(real_groups, minlength=num_groups)
        for lo in range(0, len(real_groups), _REAL_BLOCK_ROWS):
            hi = lo + _REAL_BLOCK_ROWS
            one_hot = np.eye(num_groups, dtype=np.float32)[np.asarray(real_groups[lo:hi])]
            self._real_sums += one_hot.T @ feature_map.transform(real_emb[lo:hi])

    def real_sums(self) -> tuple[np.ndarray, np.ndarray]:
        return self._real_sums, self._real_counts

    def group_sizes(self) -> np.ndarray:
        return np.bincount(self._groups, minlength=self.num_groups)

    def max_sq_norm(self) -> float:
        return float((self._features.astype(np.float64) ** 2).sum(1).max()) if len(self._features) else 0.0

    def begin(self) -> ShardSums:
        """Start a fit from the current log-weights (uniform at first, the previous fit's for a warm start):
        momentum starts at rest. Returns the sums of the starting weights."""
        self._velocity[:] = 0.0
        return self._update(None)

    def step(self, residual: np.ndarray, eta: float, entropy: float, momentum: float,
             keep_current: bool = False) -> ShardSums:
        """One heavy-ball mirror-descent step on every row's log-weight (v ← βv − η∇, a ← a + v), fused with
        the next iteration's sums so the features are read once per iteration. keep_current: the weights before
        this step are the best iterate so far (the driver knows their objective): save them as "best"."""
        if keep_current:
            self.save("best")
        return self._update(residual, eta, entropy, momentum)

    def save(self, slot: str) -> None:
        self._saved[slot] = self._log_w.copy()

    def restore(self, slot: str) -> None:
        self._log_w = self._saved[slot].copy()

    def expected_distinct(self, log_norm: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """Per group, E[distinct rows of this shard] when draws[g] rows are drawn from the whole group by ω."""
        weights = np.exp(self._log_w - log_norm[self._groups])
        bounds = np.searchsorted(self._groups, np.arange(self.num_groups + 1))
        return np.array([expected_distinct(weights[bounds[g]:bounds[g + 1]], int(draws[g]))
                         for g in range(self.num_groups)])

    def _update(self, residual: np.ndarray | None, eta: float = 0.0, entropy: float = 0.0,
                momentum: float = 0.0) -> ShardSums:
        g_n, d = self.num_groups, self._features.shape[1]
        shift = np.full(g_n, -np.inf)
        total, moment, square = np.zeros(g_n), np.zeros(g_n), np.zeros(g_n)
        feats = np.zeros((g_n, d))
        for g, lo, hi in self._chunks:
            phi = self._features[lo:hi]
            a = self._log_w[lo:hi]
            if residual is not None:
                v = self._velocity[lo:hi]
                v *= momentum
                v -= eta * objective_gradient(phi, residual[g], a, entropy)
                a += v
            top = a.max()
            if top > shift[g]:
                # Online rescaling (as in a streaming softmax) keeps exp() in range without a second pass.
                rescale = np.exp(shift[g] - top)
                total[g] *= rescale
                moment[g] *= rescale
                square[g] *= rescale * rescale
                feats[g] *= rescale
                shift[g] = top
            u = np.exp(a - shift[g])
            total[g] += u.sum()
            moment[g] += u @ a
            square[g] += u @ u
            feats[g] += u.astype(np.float32) @ phi
        return ShardSums(shift, total, moment, square, feats)

    def weights(self, log_norm: np.ndarray) -> np.ndarray:
        """This shard's ω in its input row order (each group sums to its shard share, not 1)."""
        out = np.empty(len(self._order))
        out[self._order] = np.exp(self._log_w - log_norm[self._groups])
        return out


@dataclass
class FitParams:
    steps: int = 300
    learning_rate: float = 1.0
    entropy: float = 0.0
    momentum: float = 0.0

    def __post_init__(self):
        if self.steps < 0 or self.learning_rate <= 0 or self.entropy < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"invalid fit parameters {self}")


ShardCall = Callable[..., list]


@dataclass
class FitProblem:
    """What every fit over the same shards shares: the real per-group feature means (the target), the real label
    shares, group sizes, the smoothness bound and the MMD² of uniform weights."""

    call: ShardCall
    target: np.ndarray
    shares: np.ndarray
    sizes: np.ndarray
    max_sq_norm: float
    mmd_uniform: np.ndarray

    @classmethod
    def gather(cls, call: ShardCall) -> "FitProblem":
        """Reduce the real means and the shards' sizes; the shards' weights must still be uniform."""
        real = call("real_sums")
        real_count = sum(r[1] for r in real)
        target = sum(r[0] for r in real) / np.maximum(real_count, 1)[:, None]
        sizes = sum(call("group_sizes"))
        if np.any(sizes == 0) or np.any(real_count == 0):
            raise ValueError("every group needs real and synthetic rows")
        residual = combine(call("begin")).mean - target
        return cls(call, target, real_count / real_count.sum(), sizes, max(call("max_sq_norm")),
                   (residual * residual).sum(1))

    def measure(self, totals: Totals) -> tuple[np.ndarray, np.ndarray]:
        """Per group: feature-space MMD² of the weights, and KL(ω‖uniform)."""
        residual = totals.mean - self.target
        return (residual * residual).sum(1), totals.neg_entropy + np.log(self.sizes)

    def step_size(self, params: FitParams) -> float:
        # Step 1/L for the L1-smoothness of the objective on the simplex: 2·max‖φ‖² for the data term, λ for KL.
        eta = params.learning_rate / (2.0 * self.max_sq_norm + params.entropy)
        if eta * params.entropy >= 1.0:
            raise ValueError("learning_rate too large for the entropy weight: need learning_rate·λ < 2·max‖φ‖² + λ")
        return eta

    def max_entropy(self, learning_rate: float) -> float:
        """The largest λ whose step keeps η·λ < 1 (the mirror step would otherwise overshoot uniform)."""
        return np.inf if learning_rate <= 1.0 else 2.0 * self.max_sq_norm / (learning_rate - 1.0)

    def expected_distinct(self, totals: Totals, draws: np.ndarray) -> float:
        """Expected share of distinct rows when draws[g] rows are drawn with replacement from group g by ω."""
        return float(sum(self.call("expected_distinct", totals.log_norm, draws)).sum() / draws.sum())


@dataclass
class FitResult:
    """What a fit reports, per group and share-weighted over groups (shares = real label shares). The weights
    left on the shards are the best iterate (lowest objective seen), which these figures describe."""

    shares: np.ndarray
    mmd_before: np.ndarray
    mmd_after: np.ndarray
    kl_after: np.ndarray
    ess: np.ndarray
    objective_history: list[float]
    best_step: int
    eta: float
    entropy: float
    totals: Totals
    group_sizes: np.ndarray

    @property
    def objective(self) -> float:
        return self.objective_history[self.best_step]

    def summary(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "objective_start": self.objective_history[0],
            "objective_last": self.objective_history[-1],
            "best_step": self.best_step,
            "steps": len(self.objective_history) - 1,
            "entropy": self.entropy,
            "mmd_before": float(self.shares @ self.mmd_before),
            "mmd_after": float(self.shares @ self.mmd_after),
            "kl_to_uniform": float(self.shares @ self.kl_after),
            "ess": float(self.ess.sum()),
            "ess_per_group": self.ess.tolist(),
            "mmd_before_per_group": self.mmd_before.tolist(),
            "mmd_after_per_group": self.mmd_after.tolist(),
            "step_size": self.eta,
        }


def run_fit(call: ShardCall, params: FitParams, problem: FitProblem | None = None) -> FitResult:
    """The driver loop: per iteration gather every shard's weighted feature sums (|Θ| numbers per group) and
    totals, form the residual and broadcast it. `call(method, *args)` runs a WeightShard method on every shard
    and returns the results in shard order. Starts from the shards' current weights (a warm start when a fit
    ran before) and leaves them at the best iterate: heavy-ball momentum does not decrease the objective
    monotonically, so the last iterate can be worse than an earlier one."""
    problem = problem or FitProblem.gather(call)
    eta = problem.step_size(params)

    def value(totals: Totals) -> tuple[float, np.ndarray, np.ndarray]:
        data, kl = problem.measure(totals)
        return float(problem.shares @ (data + params.entropy * kl)), data, kl

    totals = combine(call("begin"))
    first, data, kl = value(totals)
    history, best_step, best = [first], 0, (totals, data, kl)
    for _ in range(params.steps):
        current_is_best = best_step == len(history) - 1
        totals = combine(call("step", totals.mean - problem.target, eta, params.entropy, params.momentum,
                              current_is_best))
        objective_value, data, kl = value(totals)
        history.append(objective_value)
        if objective_value < history[best_step]:
            best_step, best = len(history) - 1, (totals, data, kl)
    if best_step != len(history) - 1:
        call("restore", "best")
    totals, data, kl = best
    return FitResult(shares=problem.shares, mmd_before=problem.mmd_uniform, mmd_after=data, kl_after=kl,
                     ess=totals.ess, objective_history=history, best_step=best_step, eta=eta,
                     entropy=params.entropy, totals=totals, group_sizes=problem.sizes)


@dataclass(frozen=True)
class DiversityTarget:
    """What the λ search must keep: an expected share of distinct rows in the draw and/or an effective sample size
    (Σ over groups of (Σω)²/Σω², in rows). draws[g]: rows the resample takes from group g."""

    draws: np.ndarray
    min_distinct: float | None = None
    min_ess: float | None = None

    def met(self, distinct: float, ess: float) -> bool:
        return (self.min_distinct is None or distinct >= self.min_distinct) and \
            (self.min_ess is None or ess >= self.min_ess)


@dataclass(frozen=True)
class SearchSettings:
    """The λ search: the first fit runs `steps` from uniform weights, later ones `warm_steps` from the nearest
    fit that met the target (or the last fit while none has); at most `max_fits` fits; bisection in log λ stops
    when the bracket's ratio is at most `ratio`."""

    steps: int
    warm_steps: int
    max_fits: int
    learning_rate: float
    momentum: float
    ratio: float = 2.0


# The first λ tried, in units of the problem's scale λ₀ = MMD²(uniform) / mean log n (where the KL term at its
# largest equals the data term at uniform weights). On the SST-2 pools measured (jobs/benchmarks/benchmark_alignment.py
# --only diversity) the chosen λ lay between 10⁻⁴·λ₀ and 10⁻¹·λ₀, so starting at the top of that range reaches
# it within 3 decades, before bisection.
_FIRST_ENTROPY = 0.1
# The bracket grows by this factor per fit until one side meets the target and the other does not.
_BRACKET_FACTOR = 10.0
# The search goes no lower: there the expected distinct share moved by under 1% per decade of λ on those pools.
_MIN_ENTROPY = 1e-4


@dataclass
class SearchResult:
    """The chosen fit (its weights left on the shards), and every fit tried, as the MMD–diversity frontier."""

    mode: Literal["auto", "fixed"]
    fit: FitResult
    expected_distinct: float
    met: bool | None
    reason: str
    frontier: list[dict[str, Any]]
    total_steps: int

    def summary(self, target: DiversityTarget) -> dict[str, Any]:
        return {"mode": self.mode, "entropy": self.fit.entropy,
                "targets": {"min_distinct": target.min_distinct, "min_ess": target.min_ess},
                "achieved": {"expected_distinct": self.expected_distinct, "ess": float(self.fit.ess.sum())},
                "met": self.met, "reason": self.reason, "fits": len(self.frontier), "total_steps": self.total_steps,
                "frontier": self.frontier}


def frontier_point(result: FitResult, distinct: float, met: bool | None) -> dict[str, Any]:
    """One fit on the MMD–diversity frontier (feature-space MMD² of the fit rows: in-sample)."""
    return {"entropy": result.entropy, "mmd2_features": float(result.shares @ result.mmd_after),
            "expected_distinct": distinct, "ess": float(result.ess.sum()),
            "kl_to_uniform": float(result.shares @ result.kl_after), "objective": result.objective,
            "steps": len(result.objective_history) - 1, "meets_target": met}


def search_entropy(call: ShardCall, settings: SearchSettings, target: DiversityTarget) -> SearchResult:
    """The smallest λ (on a log grid refined by bisection) whose fit meets the diversity target; each fit is
    warm-started, so the search costs about steps + (max_fits − 1)·warm_steps iterations. Larger λ keeps more
    rows distinct and costs MMD²; the weights of the chosen fit are left on the shards."""
    problem = FitProblem.gather(call)
    scale = float(problem.shares @ problem.mmd_uniform) / float(np.mean(np.log(np.maximum(problem.sizes, 2))))
    floor, ceiling = _MIN_ENTROPY * scale, 0.5 * problem.max_entropy(settings.learning_rate)
    entropy = min(_FIRST_ENTROPY * scale, ceiling)
    tried: list[tuple[FitResult, float, bool]] = []
    met_fit: tuple[FitResult, float, bool] | None = None  # the smallest λ so far that meets the target
    unmet_entropy = 0.0  # the largest λ so far that does not
    reason = "fit budget (alignment.search_fits) spent"
    while True:
        steps = settings.steps if not tried else settings.warm_steps
        if met_fit is not None:
            call("restore", "chosen")
        result = run_fit(call, FitParams(steps, settings.learning_rate, entropy, settings.momentum), problem)
        distinct = problem.expected_distinct(result.totals, target.draws)
        met = target.met(distinct, float(result.ess.sum()))
        tried.append((result, distinct, met))
        if met:
            met_fit = tried[-1]
            call("save", "chosen")
        else:
            unmet_entropy = entropy
        if met_fit is None:
            if entropy >= ceiling:
                reason = "targets not met at the largest λ the step allows"
                break
            entropy = min(entropy * _BRACKET_FACTOR, ceiling)
        elif unmet_entropy == 0.0:
            if entropy <= floor * (1 + 1e-9):  # the grid λ₀/10^k lands on the floor up to rounding
                reason = "targets met at the smallest λ searched"
                break
            entropy = max(entropy / _BRACKET_FACTOR, floor)
        else:
            if met_fit[0].entropy / unmet_entropy <= settings.ratio:
                reason = (f"smallest λ that meets the targets, the next below ({unmet_entropy:.3g}) does not "
                          f"(ratio ≤ {settings.ratio:g})")
                break
            entropy = float(np.sqrt(met_fit[0].entropy * unmet_entropy))
        if len(tried) >= settings.max_fits:
            break
    chosen = met_fit if met_fit is not None else tried[-1]
    if chosen is not tried[-1]:
        call("restore", "chosen")
    if met_fit is not None and reason.startswith("fit budget"):
        reason += ": smallest λ tried that meets the targets"
    frontier = sorted((frontier_point(r, d, m) for r, d, m in tried), key=lambda p: p["entropy"])
    return SearchResult(mode="auto", fit=chosen[0], expected_distinct=chosen[1], met=chosen[2], reason=reason,
                        frontier=frontier, total_steps=sum(len(r.objective_history) - 1 for r, _, _ in tried))


def fit_fixed(call: ShardCall, params: FitParams, target: DiversityTarget) -> SearchResult:
    """One fit at a λ the user set, reported like a search of one point; targets are checked, not enforced."""
    problem = FitProblem.gather(call)
    result = run_fit(call, params, problem)
    distinct = problem.expected_distinct(result.totals, target.draws)
    has_target = target.min_distinct is not None or target.min_ess is not None
    met = target.met(distinct, float(result.ess.sum())) if has_target else None
    return SearchResult(mode="fixed", fit=result, expected_distinct=distinct, met=met,
                        reason="alignment.entropy set explicitly", frontier=[frontier_point(result, distinct, met)],
                        total_steps=params.steps)


def split_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges of near-equal size covering 0..n."""
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


@contextmanager
def local_shards(real_emb: np.ndarray, real_groups: np.ndarray, syn_emb: np.ndarray, syn_groups: np.ndarray,
                 feature_map: FeatureMap, threads: int = 1) -> Iterator[tuple[ShardCall, list[WeightShard]]]:
    """`threads` in-process shards (BLAS held to one thread each, as in a Ray actor) and the call that drives them."""
    num_groups = int(max(np.max(real_groups), np.max(syn_groups))) + 1
    syn_parts, real_parts = split_ranges(len(syn_emb), threads), split_ranges(len(real_emb), threads)
    with ThreadPoolExecutor(threads) as pool, threadpool_limits(1):
        shards = list(pool.map(lambda r: WeightShard(syn_emb[r[0][0]:r[0][1]], syn_groups[r[0][0]:r[0][1]],
                                                     real_emb[r[1][0]:r[1][1]], real_groups[r[1][0]:r[1][1]],
                                                     feature_map, num_groups), zip(syn_parts, real_parts)))
        yield (lambda method, *args: list(pool.map(lambda s: getattr(s, method)(*args), shards))), shards


def fit_weights(real_emb: np.ndarray, real_groups: np.ndarray, syn_emb: np.ndarray, syn_groups: np.ndarray,
                feature_map: FeatureMap, params: FitParams, threads: int = 1) -> tuple[np.ndarray, FitResult]:
    """Single-process fit. Returns ω in input order (each group sums to 1) and the report."""
    with local_shards(real_emb, real_groups, syn_emb, syn_groups, feature_map, threads) as (call, shards):
        result = run_fit(call, params)
    return np.concatenate([s.weights(result.totals.log_norm) for s in shards]), result


def search_weights(real_emb: np.ndarray, real_groups: np.ndarray, syn_emb: np.ndarray, syn_groups: np.ndarray,
                   feature_map: FeatureMap, settings: SearchSettings, target: DiversityTarget,
                   threads: int = 1) -> tuple[np.ndarray, SearchResult]:
    """Single-process λ search. Returns the chosen fit's ω in input order and the search report."""
    with local_shards(real_emb, real_groups, syn_emb, syn_groups, feature_map, threads) as (call, shards):
        search = search_entropy(call, settings, target)
    return np.concatenate([s.weights(search.fit.totals.log_norm) for s in shards]), search
