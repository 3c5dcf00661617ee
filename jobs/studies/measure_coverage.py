"""Coverage of real data by GP-selected vs uniformly random demonstration groups, and the τ sweep (paper §4.4.1, §4.5.1).

Run: python jobs/studies/measure_coverage.py [--rows 4000] [--steps 200]; prints tables, asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
# bench_common (the row type, data and caches) lives beside the benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_common import CACHE, Row, cached_embeddings, cached_npy, write_json

from synalign_ray.config import SelectionConfig
from synalign_ray.metrics import convex_hull_coverage, knn_radii, knn_radius_coverage, random_groups, tsne_map
from synalign_ray.selection.schedule import build_schedule
from synalign_ray.selection.plan import AUTO_TAU_FACTOR, auto_tau

DATASETS = {"SST-2": "sst2_dev", "AG News": "agnews_dev"}
TAUS = [0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 2.0]
KNN_BALL = 5


def load(name: str, rows: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    table, emb = cached_embeddings(name)
    pick = np.sort(np.random.default_rng(0).choice(table.num_rows, size=min(rows, table.num_rows), replace=False))
    return emb[pick], [table.column("label")[int(i)].as_py() for i in pick], pick


def gp_groups(emb, labels, steps, k, tau, kernel, seed) -> list[list[int]]:
    # One exact GP over all rows: the setting the README's τ sweep was measured in (the default is now per label).
    cfg = SelectionConfig(k=k, tau=tau, kernel=kernel, max_groups=steps, seed=seed, threshold=1e-6,
                          gp_scope="shared", engine="exact")
    return build_schedule(cfg, emb, labels, np.arange(emb.shape[0])).column("demo_row_ids").to_pylist()


def scores(groups, points_2d, emb, radii, k) -> tuple[float, float]:
    hull = convex_hull_coverage(points_2d, np.array([g[0] for g in groups]), k)[-1]
    ball = knn_radius_coverage(emb, emb[np.unique(np.concatenate(groups))], KNN_BALL, radii)
    return float(hull), float(ball)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4000, help="seeded sample of each dataset")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sweep-seeds", type=int, default=3)
    parser.add_argument("--kernels", default="exponential,rbf")
    parser.add_argument("--json", help="also write the result rows as JSON to this file")
    args = parser.parse_args()
    kernels = args.kernels.split(",")
    rows: list[Row] = []

    def spread(name: str, runs: np.ndarray) -> None:
        rows.append(Row(name, {"hull_mean": float(runs[:, 0].mean()), "hull_std": float(runs[:, 0].std()),
                               "knn_radius_mean": float(runs[:, 1].mean()), "knn_radius_std": float(runs[:, 1].std()),
                               "seeds": len(runs)}))

    for title, name in DATASETS.items():
        t0 = time.perf_counter()
        emb, labels, _ = load(name, args.rows)
        points = cached_npy(CACHE / f"tsne_{name}_{args.rows}_0.npy", lambda: tsne_map(emb, seed=0))
        radii = knn_radii(emb, KNN_BALL)
        tau_auto = auto_tau(emb, 0)
        print(f"\n## {title}: {emb.shape[0]} rows ({name}), t-SNE seed 0, k={args.k}, {args.steps} steps; "
              f"tau auto = {AUTO_TAU_FACTOR} x median distance = {tau_auto:.3f} (prep {time.perf_counter() - t0:.0f} s)")

        rand = np.array([scores(random_groups(emb, labels, args.steps, args.k, s), points, emb, radii, args.k)
                         for s in range(args.seeds)])
        spread(f"{name}: uniform random", rand)
        print(f"\n| selection ({args.seeds} seeds) | hull coverage | kNN-radius coverage (k={KNN_BALL}) |")
        print("| --- | --- | --- |")
        print(f"| uniform random | {rand[:, 0].mean():.4f} ± {rand[:, 0].std():.4f} "
              f"| {rand[:, 1].mean():.4f} ± {rand[:, 1].std():.4f} |")
        for kernel in kernels:
            gp = np.array([scores(gp_groups(emb, labels, args.steps, args.k, "auto", kernel, s), points, emb, radii,
                                  args.k) for s in range(args.seeds)])
            spread(f"{name}: GP {kernel}, tau auto", gp)
            print(f"| GP {kernel}, tau auto | {gp[:, 0].mean():.4f} ± {gp[:, 0].std():.4f} "
                  f"(x{gp[:, 0].mean() / rand[:, 0].mean():.2f}) | {gp[:, 1].mean():.4f} ± {gp[:, 1].std():.4f} "
                  f"(x{gp[:, 1].mean() / rand[:, 1].mean():.2f}) |")

        print(f"\nτ sweep ({args.sweep_seeds} seeds; hull / kNN-radius coverage after {args.steps} steps)\n")
        print("| tau | " + " | ".join(f"{k} hull | {k} kNN-radius" for k in kernels) + " |")
        print("| --- |" + " --- | --- |" * len(kernels))
        for tau in sorted(TAUS + [round(tau_auto, 3)]):
            cells = []
            for kernel in kernels:
                runs = np.array([scores(gp_groups(emb, labels, args.steps, args.k, tau, kernel, s), points, emb,
                                        radii, args.k) for s in range(args.sweep_seeds)])
                spread(f"{name}: GP {kernel}, tau {tau}{' (auto)' if tau not in TAUS else ''}", runs)
                cells += [f"{runs[:, 0].mean():.4f}", f"{runs[:, 1].mean():.4f}"]
            mark = " (auto)" if tau not in TAUS else ""
            print(f"| {tau}{mark} | " + " | ".join(cells) + " |", flush=True)
    write_json(args.json, rows, args)


if __name__ == "__main__":
    main()
