"""Benchmark: incremental GP tracker vs gpytorch ExactGP refit after every group, and vs the N·|S|² flop bound.

The bound is given twice, both measured in the same run: N·|S|² flop at the square-GEMM rate (peak), and the time of
the run's V-write products alone at their real shapes (N × s)·(s × rows per write).

Run: python jobs/benchmarks/benchmark_selection.py; prints a table of times, memory and ratios measured in this run;
asserts nothing.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import gpytorch
import numpy as np
import torch
from bench_common import Row, cached_embeddings, compared, print_rows, write_json

from synalign_ray.config import SelectionConfig
from synalign_ray.selection.gp import SYNC_ROWS, lengthscale
from synalign_ray.selection.plan import auto_tau
from synalign_ray.selection.tracker import SelectionTracker

PREDICT_ROWS = 2048  # rows per ExactGP prediction call


class ExactGPRefit:
    """The authors' approach: a fresh exact GP posterior over all rows after every group (gpytorch, float64)."""

    def __init__(self, points: np.ndarray, kernel: str, tau: float, noise: float):
        self.points = points
        self.x = torch.from_numpy(points.astype(np.float64))
        self.kernel, self.tau, self.noise = kernel, tau, noise
        self.observed = np.empty(0, dtype=np.int64)
        self.variance = np.ones(points.shape[0])

    def add(self, group: np.ndarray) -> None:
        self.observed = np.concatenate([self.observed, group])
        kernel, tau = self.kernel, self.tau

        class ZeroMeanGP(gpytorch.models.ExactGP):
            def __init__(self, x, y, likelihood):
                super().__init__(x, y, likelihood)
                self.mean_module = gpytorch.means.ZeroMean()
                base = gpytorch.kernels.MaternKernel(nu=0.5) if kernel == "exponential" else gpytorch.kernels.RBFKernel()
                base.lengthscale = lengthscale(kernel, tau)
                self.covar_module = base

            def forward(self, x):
                return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

        likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
        likelihood.noise = self.noise
        train_x = self.x[torch.from_numpy(self.observed)]
        model = ZeroMeanGP(train_x, torch.zeros(len(self.observed), dtype=torch.float64), likelihood).double()
        model.eval()
        # Predicted in row chunks: gpytorch forms the test-test kernel block, which for all 60k rows at once would be
        # 29 GB; the training Cholesky is cached by the model across chunks.
        with torch.no_grad(), gpytorch.settings.fast_pred_var(False), gpytorch.settings.max_cholesky_size(10**6):
            self.variance = np.concatenate([model(chunk).variance.numpy() for chunk in self.x.split(PREDICT_ROWS)])

    def variance_at(self, rows: np.ndarray) -> np.ndarray:
        return self.variance[rows]

    def top_variance(self, candidates: np.ndarray) -> tuple[float, np.ndarray]:
        values = self.variance[candidates]
        best = values.max()
        return float(best), candidates[values == best]


def run_tracker(emb, labels, cfg, refit: bool = False) -> tuple[list[list[int]], float]:
    """Drain a tracker; with refit, its GP is swapped for ExactGPRefit (same selection rule, other variance source).

    The config is one exact GP over all rows (gp_scope shared, engine exact): the tracker's one partition."""
    tracker = SelectionTracker(emb, labels, np.arange(emb.shape[0]), cfg)
    if refit:
        (part,) = tracker._shards[0]._parts.values()
        part.gp = ExactGPRefit(part.gp.points, cfg.kernel, tracker.tau, cfg.noise)
    start = time.perf_counter()
    groups = [record["demo_row_ids"] for record in tracker.next_groups(cfg.max_groups)]
    return groups, time.perf_counter() - start


def refit_seconds_full(emb: np.ndarray, groups: list[list[int]], cfg: SelectionConfig,
                       samples: int = 5) -> tuple[float, np.ndarray]:
    """What the ExactGP refit would take over the full-N run, without running all its refits.

    The refit step is timed at `samples` observed-set sizes m spread over the run (the tracker's own groups); a
    quadratic in m (its N·m² solve and N·m·d kernel terms) is fitted through them and summed over every step:
    interpolation over the run's range of m, not extrapolation from a small subset.
    """
    unit = np.ascontiguousarray(emb / np.linalg.norm(emb, axis=1, keepdims=True), dtype=np.float32)
    refit = ExactGPRefit(unit, cfg.kernel, auto_tau(unit, cfg.seed), cfg.noise)
    steps = np.linspace(0, len(groups) - 1, samples).round().astype(int)
    seconds = []
    for j in steps:
        refit.observed = np.array([row for g in groups[:j] for row in g], dtype=np.int64)
        t = time.perf_counter()
        refit.add(np.asarray(groups[j], dtype=np.int64))
        seconds.append(time.perf_counter() - t)
    group = len(groups[0])
    coef = np.polyfit(steps * group, seconds, 2)
    return float(np.polyval(coef, np.arange(len(groups)) * group).clip(min=0).sum()), steps * group


def square_rate(seconds: float = 2.0) -> float:
    """float32 GEMM flop/s on 2048² operands, best of repeated runs: the peak yardstick."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    best, until = np.inf, time.perf_counter() + seconds
    while time.perf_counter() < until:
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best


def update_products_seconds(n: int, width: int, selected: int) -> float:
    """Wall time of the run's dominant products alone, float32: (N × s)·(s × width) for s = 0, width, …, |S| − width.

    IncrementalGP writes the pending rows of V for all N rows once `width` rows are pending, so these are its
    N·|S|² flops at the shapes and memory traffic the tracker really has.
    """
    rng = np.random.default_rng(0)
    state = rng.standard_normal((n, selected), dtype=np.float32)
    coef = rng.standard_normal((selected, width), dtype=np.float32)
    start = time.perf_counter()
    for m in range(width, selected, width):
        state[:, :m] @ coef[:m]
    return time.perf_counter() - start


def run(n_groups: int = 200, k: int = 9, subset: int = 5000, baseline_groups: int = 60) -> list[Row]:
    """Time the tracker, its bounds and the refit baseline; print the table and return benchmark rows."""
    args = argparse.Namespace(groups=n_groups, k=k, subset=subset, baseline_groups=baseline_groups)
    table, emb = cached_embeddings("sst2_train")
    labels = table.column("label").to_pylist()
    n = emb.shape[0]
    cfg = SelectionConfig(k=args.k, max_groups=args.groups, threshold=1e-6, gp_scope="shared", engine="exact")

    # The machine is shared: the square rate is the best seen in the run (the peak yardstick), while the products
    # bound is timed just before and just after the tracker and averaged, so it sees the load the tracker saw.
    group = args.k + 1
    width = -(-SYNC_ROWS // group) * group  # rows per V write: whole groups until SYNC_ROWS are pending
    selected_planned = args.groups * group
    products_before, rate_before = update_products_seconds(n, width, selected_planned), square_rate()
    groups, t_full = run_tracker(emb, labels, cfg)
    rate = max(rate_before, square_rate())
    products_after = update_products_seconds(n, width, selected_planned)
    t_shape_bound = (products_before + products_after) / 2
    # Memory in a second run: tracemalloc's bookkeeping would slow the timed one.
    tracemalloc.start()
    run_tracker(emb, labels, cfg)
    peak_full = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    selected = sum(len(g) for g in groups)

    pick = np.sort(np.random.default_rng(0).choice(n, size=args.subset, replace=False))
    sub_emb, sub_labels = emb[pick], [labels[i] for i in pick]
    sub_cfg = cfg.model_copy(update={"max_groups": args.baseline_groups})
    inc_groups, t_inc_sub = run_tracker(sub_emb, sub_labels, sub_cfg)
    ref_groups, t_ref_sub = run_tracker(sub_emb, sub_labels, sub_cfg, refit=True)
    identical = inc_groups == ref_groups

    t_ref_full, m_timed = refit_seconds_full(emb, groups, cfg)

    flops = n * selected**2
    t_bound = flops / rate

    print(f"\nSST-2 train: N = {n}, k = {args.k}, {len(groups)} groups = {selected} rows selected, tau auto; "
          f"float32 square-GEMM rate {rate / 1e9:.1f} GFLOP/s; the run's V-update products alone "
          f"{products_before:.2f} s before and {products_after:.2f} s after the tracker "
          f"({flops / t_shape_bound / 1e9:.1f} GFLOP/s)")
    print("\n| measurement | wall s | peak traced MiB | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| incremental tracker, full N | {t_full:.2f} | {peak_full / 2**20:.0f} | 1 |")
    print(f"| (b) lower bound N·|S|² = {flops:.2e} flop at square-GEMM rate | {t_bound:.2f} | - "
          f"| tracker / bound = {t_full / t_bound:.2f} |")
    print(f"| (b') lower bound: the same flops as the run's (N×s)·(s×{width}) products, timed | {t_shape_bound:.2f} "
          f"| - | tracker / bound = {t_full / t_shape_bound:.2f} |")
    print(f"| (a) ExactGP refit per group at full N, timed at m = {', '.join(map(str, m_timed))}, "
          f"summed over {len(groups)} groups | {t_ref_full:.0f} | - "
          f"| refit / tracker = {t_ref_full / t_full:.0f} |")
    print(f"| subset {args.subset} rows, {args.baseline_groups} groups: incremental | {t_inc_sub:.2f} | - | 1 |")
    print(f"| subset {args.subset} rows, {args.baseline_groups} groups: ExactGP refit | {t_ref_sub:.2f} | - "
          f"| refit / incremental = {t_ref_sub / t_inc_sub:.0f} |")
    print(f"\nselections on the subset identical (incremental vs ExactGP refit): {identical}")
    return [compared("selection: refit / incremental (s)", t_full, t_ref_full,
                     t_ref_full / t_full, f">= 100x, identical selections: {identical}"),
            compared("selection: incremental / flop bound (s)", t_full, t_bound,
                     t_full / t_bound, "<= 5x"),
            compared("selection: incremental / update-shape bound (s)", t_full, t_shape_bound,
                     t_full / t_shape_bound, "<= 5x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=200, help="groups on the full data (k+1 rows each)")
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--baseline-groups", type=int, default=60, help="groups the ExactGP refit runs on the subset")
    parser.add_argument("--json", help="also write the result rows as JSON to this file")
    args = parser.parse_args()
    rows = run(args.groups, args.k, args.subset, args.baseline_groups)
    print_rows(rows)
    write_json(args.json, rows, args)


if __name__ == "__main__":
    main()
