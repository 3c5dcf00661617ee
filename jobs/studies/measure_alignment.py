"""Measure alignment on real data: a skewed pool (SST-2 dev, negatives over-represented, plus AG News rows with
random SST-2 labels) aligned to SST-2 train; distances to held-out SST-2 rows and downstream accuracy per setting.

Run: python jobs/studies/measure_alignment.py [--size 4000]  (prints a table; embeddings cached in SYNALIGN_BENCH_CACHE)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
# bench_common (the row type, data and caches) lives beside the benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_common import Row, cached_embeddings, write_json
from sklearn.linear_model import LogisticRegression

from synalign_ray import metrics
from synalign_ray.alignment.importance import importance_weights
from synalign_ray.alignment.mmd import FitParams, fit_weights, make_feature_map
from synalign_ray.alignment.resample import allot, distinct_fraction, draw_within, rng_for

LABELS = np.array(["negative", "positive"])
HELD_OUT = 5000
METRIC_ROWS = 2000


def embeddings(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, MiniLM embeddings) of a data file, encoded once into the shared cache."""
    table, emb = cached_embeddings(name)
    return np.asarray(table.column("label").to_pylist()), emb


def build_sets(seed: int):
    train_labels, train_emb = embeddings("sst2_train")
    dev_labels, dev_emb = embeddings("sst2_dev")
    news_labels, news_emb = embeddings("agnews_dev")
    rng = np.random.default_rng(seed)
    held = np.zeros(len(train_emb), bool)
    held[rng.choice(len(train_emb), size=HELD_OUT, replace=False)] = True
    # The skew: every dev negative but half the dev positives, and AG News rows (40% more rows than all of SST-2
    # dev kept) given seeded random SST-2 labels so they act as off-distribution junk inside both labels.
    positives = np.flatnonzero(dev_labels == "positive")
    keep = np.sort(np.concatenate([np.flatnonzero(dev_labels == "negative"),
                                   rng.choice(positives, size=len(positives) // 2, replace=False)]))
    pool_emb = np.vstack([dev_emb[keep], news_emb])
    pool_labels = np.concatenate([dev_labels[keep], rng.choice(LABELS, size=len(news_emb))])
    is_news = np.r_[np.zeros(len(keep), bool), np.ones(len(news_emb), bool)]
    return (train_emb[~held], train_labels[~held]), (train_emb[held], train_labels[held]), \
        (pool_emb, pool_labels, is_news)


def codes(labels: np.ndarray) -> np.ndarray:
    return np.searchsorted(LABELS, labels)


def resample(weights: np.ndarray, groups: np.ndarray | None, shares: np.ndarray, size: int, seed: int):
    """ζ rows with replacement by ω; by label: ζ allotted by the real label shares, drawn within each label."""
    if groups is None:
        return draw_within(weights, size, seed, 0, 0)
    picks = []
    for g, count in enumerate(allot(size, shares)):
        members = np.flatnonzero(groups == g)
        picks.append(members[draw_within(weights[members], int(count), seed, g, 0)])
    return np.concatenate(picks)


def evaluate(idx: np.ndarray, pool, test, real_sample: np.ndarray, bandwidth: float, seed: int,
             sample_weight: np.ndarray | None = None) -> dict:
    pool_emb, pool_labels, is_news = pool
    emb = pool_emb[idx]
    sub = emb[rng_for(seed, 9).choice(len(emb), size=min(METRIC_ROWS, len(emb)), replace=False)]
    ref = real_sample[: len(sub)]
    clf = LogisticRegression(max_iter=1000, random_state=seed)
    clf.fit(emb, pool_labels[idx], sample_weight=None if sample_weight is None else sample_weight[idx])
    return {"mmd2": metrics.mmd2_rbf(sub, ref, bandwidth=bandwidth), "w1": metrics.wasserstein1(sub, ref),
            "sw": metrics.sliced_wasserstein(sub, ref, seed=seed), "distinct": distinct_fraction(idx),
            "news": float(is_news[idx].mean()), "acc": float((clf.predict(test[0]) == test[1]).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--learning-rate", type=float, default=1.0)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--projections", default="10,50,100,500,1000")
    ap.add_argument("--features", default="linear,rff")
    ap.add_argument("--entropy", default="linear:0.002,rff:0.0005",
                    help="λ per feature kind for the 'with diversity control' rows")
    ap.add_argument("--json", help="also write the result rows as JSON to this file")
    args = ap.parse_args()
    (real_emb, real_labels), test, pool = build_sets(args.seed)
    pool_emb, pool_labels, is_news = pool
    real_groups, pool_groups = codes(real_labels), codes(pool_labels)
    shares = np.bincount(real_groups, minlength=2) / len(real_groups)
    real_sample = test[0][rng_for(args.seed, 8).choice(len(test[0]), size=METRIC_ROWS, replace=False)]
    bandwidth = metrics.median_pairwise_distance(real_sample, seed=args.seed)
    entropy = {k: float(v) for k, v in (item.split(":") for item in args.entropy.split(","))}
    print(f"real {len(real_emb)} rows, held-out {len(test[0])}, pool {len(pool_emb)} "
          f"({is_news.mean():.0%} AG News, pool positive share {np.mean(pool_labels == 'positive'):.2f}, "
          f"real {shares[1]:.2f}), ζ={args.size}, steps={args.steps}, lr={args.learning_rate}, "
          f"momentum={args.momentum}, metric rows {METRIC_ROWS}, RBF ℓ={bandwidth:.3f}")
    header = f"{'setting':<34}{'MMD²':>9}{'W1':>8}{'SW':>8}{'distinct':>9}{'AGnews':>8}{'acc':>7}{'ESS':>8}{'fit s':>7}"
    print(header)
    print("-" * len(header))

    rows: list[Row] = []

    def row(name: str, res: dict, ess: float = float("nan"), seconds: float = float("nan")) -> None:
        rows.append(Row(name, {"mmd2": res["mmd2"], "w1": res["w1"], "sw": res["sw"], "distinct": res["distinct"],
                               "agnews_share": res["news"], "accuracy": res["acc"], "ess": ess, "fit_s": seconds}))
        print(f"{name:<34}{res['mmd2']:>9.5f}{res['w1']:>8.4f}{res['sw']:>8.4f}{res['distinct']:>9.3f}"
              f"{res['news']:>8.3f}{res['acc']:>7.3f}{ess:>8.0f}{seconds:>7.1f}", flush=True)

    uniform = np.ones(len(pool_emb))
    row("all (pool)", evaluate(np.arange(len(pool_emb)), pool, test, real_sample, bandwidth, args.seed))
    row("random", evaluate(resample(uniform, None, shares, args.size, args.seed), pool, test, real_sample,
                           bandwidth, args.seed))
    by_label_random = resample(uniform, pool_groups, shares, args.size, args.seed)
    row("random, real label shares", evaluate(by_label_random, pool, test, real_sample, bandwidth, args.seed))
    imp = importance_weights(real_emb, real_labels, pool_emb, pool_labels, seed=args.seed)
    row("importance (random by label + w)", evaluate(by_label_random, pool, test, real_sample, bandwidth,
                                                     args.seed, sample_weight=imp))
    for kind in args.features.split(","):
        for count in (int(c) for c in args.projections.split(",")):
            fmap = make_feature_map(kind, count, real_emb, args.seed)
            for by_label in (False, True):
                for lam in (0.0, entropy[kind]):
                    params = FitParams(steps=args.steps, learning_rate=args.learning_rate, entropy=lam,
                                       momentum=args.momentum)
                    rg = real_groups if by_label else np.zeros(len(real_groups), np.int64)
                    pg = pool_groups if by_label else np.zeros(len(pool_groups), np.int64)
                    t = time.perf_counter()
                    w, fit = fit_weights(real_emb, rg, pool_emb, pg, fmap, params)
                    seconds = time.perf_counter() - t
                    idx = resample(w, pg if by_label else None, shares, args.size, args.seed)
                    name = f"{kind} |Θ|={count} {'label' if by_label else 'blind'} λ={lam:g}"
                    row(name, evaluate(idx, pool, test, real_sample, bandwidth, args.seed), float(fit.ess.sum()),
                        seconds)
    write_json(args.json, rows, args)


if __name__ == "__main__":
    main()
