"""Benchmark: selection engines and rules at scale, each figure against a baseline measured in the same run.

--coverage: on SST-2 train (60k rows) and AG News dev (10k), 200 groups of 10 per schedule: the exact engine vs the
partitioned one (with 256 inducing rows, and without: the cross-partition effect dropped), max-variance vs
density-weighted rule, against uniformly random anchors (3 seeds, mean ± sd, same per-label
quotas, disjoint groups of each anchor's k most cosine-similar same-label rows): hull coverage on one t-SNE map per
dataset (a seeded 4,000-row sample plus every schedule's anchors) and k-NN-radius coverage at k = 1…20 and at fixed
distances, over a seeded 8,000-row evaluation sample (radii against all rows); plus where `threshold` stops.
--scope: own-label coverage with one GP per label vs one shared GP, on AG News dev with two labels drawn by coin flip
(independent of topic: the case the issue's check built).
--scale ROWS,GROUPS: the partitioned engine on SST-2 train + AG News dev embeddings tiled to ROWS rows, copy t > 0
displaced by seeded Gaussian jitter of JITTER per coordinate·√d (norm ≈ JITTER) and renormalised, labels kept
(6 labels); wall time, per-group cost, GP state bytes and peak RSS of the process. Run it alone: peak RSS counts all.

--thresholds: where `threshold` stops on AG News dev and SST-2 train.
--partition-sweep: on SST-2 train, the partitioned engine's k-NN-radius coverage over partition_rows, against exact.
--hull-maps SEEDS: on SST-2 train, hull coverage of the max-variance schedules over several t-SNE maps (map noise).
--scale ROWS,GROUPS --shards 1,2: the same selection with its rows in K block actors and its partitions on K Ray
shard actors of one CPU each (as `synalign run` builds them), with the memory of all processes.

Run: python jobs/benchmarks/benchmark_selection_scale.py --coverage --scope --thresholds --scale 250000,5000;
prints tables, asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_common import CACHE, PeakRSS, cached_embeddings, cached_npy

from synalign_ray.config import SelectionConfig
from synalign_ray.metrics import convex_hull_coverage, coverage_profile, knn_radii_of, tsne_map
from synalign_ray.selection.schedule import build_schedule
from synalign_ray.selection.plan import PARTITION_GROWTH
from synalign_ray.selection.steps import actor_shards
from synalign_ray.selection.tracker import SelectionTracker

KS = [1, 2, 5, 10, 20]
DISTANCES = [0.6, 0.8, 1.0]
EVAL_ROWS = 8000
MAP_ROWS = 4000
RANDOM_SEEDS = 3
JITTER = 0.05


RULES = ("max_variance", "density_weighted")
# (engine, inducing_rows): the exact reference, the partitioned engine (PIC, the default inducing rows) and the
# partitioned engine without the cross-partition term
ENGINES = (("exact", 0), ("partitioned", 256), ("partitioned", 0))


def engine_label(rule: str, engine: str, inducing: int) -> str:
    if engine == "exact":
        return f"{rule}, exact"
    return f"{rule}, partitioned, " + (f"PIC {inducing} inducing" if inducing else "no inducing")


def random_groups(emb: np.ndarray, labels: np.ndarray, quota: dict, k: int, seed: int) -> list[np.ndarray]:
    """Disjoint groups: per label, `quota` uniform random available anchors, each with its k most cosine-similar
    available rows of the label."""
    rng = np.random.default_rng(seed)
    groups = []
    for label, q in sorted(quota.items()):
        rows = np.flatnonzero(labels == label)
        points, available = emb[rows], np.ones(rows.shape[0], dtype=bool)
        for _ in range(q):
            anchor = rng.choice(np.flatnonzero(available))
            similarity = points @ points[anchor]
            similarity[~available] = -np.inf
            similarity[anchor] = np.inf
            group = np.argsort(-similarity, kind="stable")[:k + 1]
            available[group] = False
            groups.append(rows[group])
    return groups


def schedule_groups(cfg: SelectionConfig, emb, labels) -> tuple[list[np.ndarray], float, dict]:
    start = time.perf_counter()
    tracker = SelectionTracker(emb, labels.tolist(), np.arange(emb.shape[0]), cfg)
    records = tracker.next_groups(cfg.max_groups)
    seconds = time.perf_counter() - start
    progress = tracker.progress()
    progress["state_mib"] = sum(s.state_bytes() for s in tracker._shards) / 2**20
    return [np.asarray(r["demo_row_ids"]) for r in records], seconds, progress


def coverage(name: str, groups_total: int, partition_rows: int) -> None:
    table, emb = cached_embeddings(name)
    labels = np.asarray(table.column("label").to_pylist())
    n = emb.shape[0]
    eval_rows = np.sort(np.random.default_rng(0).choice(n, size=min(EVAL_ROWS, n), replace=False))
    t = time.perf_counter()
    radii = cached_npy(CACHE / f"knn_radii_{name}_{EVAL_ROWS}.npy", lambda: knn_radii_of(emb, eval_rows, KS))
    prep = time.perf_counter() - t

    runs: dict[str, tuple[list[np.ndarray], float, dict | None]] = {}
    for rule in RULES:
        for engine, inducing in ENGINES:
            cfg = SelectionConfig(max_groups=groups_total, rule=rule, engine=engine, partition_rows=partition_rows,
                                  threshold=1e-6, inducing_rows=inducing)
            runs[engine_label(rule, engine, inducing)] = schedule_groups(cfg, emb, labels)
    quota = dict(zip(*np.unique(labels[[g[0] for g in runs["max_variance, exact"][0]]], return_counts=True)))
    for seed in range(RANDOM_SEEDS):
        runs[f"random anchors, seed {seed}"] = (random_groups(emb, labels, quota, 9, seed), 0.0, None)

    anchors = np.unique(np.concatenate([[g[0] for g in groups] for groups, _, _ in runs.values()]))
    sample = np.union1d(np.random.default_rng(0).choice(n, size=min(MAP_ROWS, n), replace=False), anchors)
    t = time.perf_counter()
    points = tsne_map(emb[sample], seed=0)
    map_seconds = time.perf_counter() - t

    print(f"\n## {name}: {n} rows, {groups_total} groups of 10 per schedule, partition_rows {partition_rows}; "
          f"k-NN radii of {len(eval_rows)} evaluation rows {prep:.0f} s, t-SNE map of {len(sample)} rows "
          f"{map_seconds:.0f} s")
    header = " | ".join([f"kNN k={k}" for k in KS] + [f"d≤{d}" for d in DISTANCES])
    print(f"\n| schedule | select s | partitions | GP state MiB | hull | {header} |")
    print("| --- " * (5 + len(KS) + len(DISTANCES)) + "|")
    scores = {}
    for label, (groups, seconds, progress) in runs.items():
        hull = convex_hull_coverage(points, np.searchsorted(sample, [g[0] for g in groups]), 9)[-1]
        knn, fixed = coverage_profile(emb, emb[np.concatenate(groups)], eval_rows, radii, DISTANCES)
        scores[label] = np.concatenate([[hull], knn, fixed])
        extra = ("- | - | -" if progress is None
                 else f"{seconds:.2f} | {progress['partitions']} | {progress['state_mib']:.0f}")
        print(f"| {label} | {extra} | " + " | ".join(f"{v:.4f}" for v in scores[label]) + " |")
    random = np.array([v for l, v in scores.items() if l.startswith("random")])
    random_mean, random_sd, random_max = random.mean(axis=0), random.std(axis=0, ddof=1), random.max(axis=0)
    print("| random anchors, mean ± sd | - | - | - | "
          + " | ".join(f"{m:.4f} ± {sd:.4f}" for m, sd in zip(random_mean, random_sd)) + " |")
    print("\n| comparison | hull | " + header + " |")
    print("| --- " * (2 + len(KS) + len(DISTANCES)) + "|")
    for rule in RULES:
        exact = scores[engine_label(rule, "exact", 0)]
        for engine, inducing in ENGINES[1:]:
            ratio = scores[engine_label(rule, engine, inducing)] / exact
            print(f"| {engine_label(rule, engine, inducing)} / exact (lowest {ratio.min():.3f}) | "
                  + " | ".join(f"{v:.3f}" for v in ratio) + " |")
    for rule in RULES:
        for engine, inducing in ENGINES:
            label = engine_label(rule, engine, inducing)
            ratio = scores[label] / random_mean
            wins = int((scores[label][1:] >= random_mean[1:]).sum())
            print(f"| {label} / random mean ({wins} of {len(ratio) - 1} k-NN scales ≥ the mean, "
                  f"{int((scores[label][1:] >= random_max[1:]).sum())} ≥ the best seed) | "
                  + " | ".join(f"{v:.3f}" for v in ratio) + " |")



def hull_maps(name: str, groups_total: int, partition_rows: int, seeds: list[int]) -> None:
    """Hull coverage of the max-variance schedules (exact, partitioned with and without inducing rows) and random
    anchors over several t-SNE maps (seed s: a seeded sample of MAP_ROWS rows plus these anchors, t-SNE seed s): the
    map's own noise beside the partitioned / exact ratio."""
    table, emb = cached_embeddings(name)
    labels = np.asarray(table.column("label").to_pylist())
    n = emb.shape[0]
    runs = {}
    for engine, inducing in ENGINES:
        cfg = SelectionConfig(max_groups=groups_total, engine=engine, partition_rows=partition_rows, threshold=1e-6,
                              inducing_rows=inducing)
        runs[engine_label("max_variance", engine, inducing)] = schedule_groups(cfg, emb, labels)[0]
    quota = dict(zip(*np.unique(labels[[g[0] for g in runs["max_variance, exact"]]], return_counts=True)))
    for seed in range(RANDOM_SEEDS):
        runs[f"random anchors, seed {seed}"] = random_groups(emb, labels, quota, 9, seed)
    anchors = np.unique(np.concatenate([[g[0] for g in groups] for groups in runs.values()]))
    hulls = {label: [] for label in runs}
    for seed in seeds:
        sample = np.union1d(np.random.default_rng(seed).choice(n, size=min(MAP_ROWS, n), replace=False), anchors)
        points = tsne_map(emb[sample], seed=seed)
        for label, groups in runs.items():
            hulls[label].append(convex_hull_coverage(points, np.searchsorted(sample, [g[0] for g in groups]), 9)[-1])
    print(f"\n## hull over t-SNE maps of seeds {seeds}: {name}, {groups_total} groups, max-variance\n")
    print("| schedule | " + " | ".join(f"map {s}" for s in seeds)
          + " | mean ± sd | / exact, per map | / exact, mean ± sd |")
    print("| --- " * (len(seeds) + 4) + "|")
    exact = np.array(hulls["max_variance, exact"])
    for label, values in hulls.items():
        values = np.array(values)
        ratio = values / exact
        print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {values.mean():.4f} ± "
              f"{values.std(ddof=1):.4f} | " + ", ".join(f"{r:.3f}" for r in ratio)
              + f" | {ratio.mean():.3f} ± {ratio.std(ddof=1):.3f} |", flush=True)


def thresholds(name: str, engine: str, max_groups: int, partition_rows: int) -> None:
    """Where `threshold` stops: each label's stop level, and the groups issued when it fired (or the budget ran out)."""
    table, emb = cached_embeddings(name)
    labels = np.asarray(table.column("label").to_pylist())
    n = emb.shape[0]
    print(f"\n## where threshold stops: {name}, {n} rows, engine {engine}, budget {max_groups} groups (most possible "
          f"{n // 10})\n")
    print("| threshold | stop level | groups issued | share of rows | largest variance left | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for threshold in (0.3, 0.2, 0.1, 0.05):
        cfg = SelectionConfig(max_groups=max_groups, threshold=threshold, engine=engine, partition_rows=partition_rows)
        groups, seconds, progress = schedule_groups(cfg, emb, labels)
        print(f"| {threshold} | {progress['stop_variance']:.3f} | {len(groups)} | {len(groups) * 10 / n:.1%} "
              f"| {progress['max_variance']:.4f} | {seconds:.1f} |", flush=True)


def partition_sweep(name: str, groups_total: int, sizes: list[int]) -> None:
    """k-NN-radius coverage of the partitioned engine over partition sizes, as a ratio to the exact schedule's."""
    table, emb = cached_embeddings(name)
    labels = np.asarray(table.column("label").to_pylist())
    n = emb.shape[0]
    eval_rows = np.sort(np.random.default_rng(0).choice(n, size=min(EVAL_ROWS, n), replace=False))
    radii = cached_npy(CACHE / f"knn_radii_{name}_{EVAL_ROWS}.npy", lambda: knn_radii_of(emb, eval_rows, KS))
    header = " | ".join([f"kNN k={k}" for k in KS] + [f"d≤{d}" for d in DISTANCES])
    print(f"\n## partition size: {name}, {groups_total} groups, max-variance; coverage / the exact schedule's\n")
    print(f"| partition_rows | partitions | select s | GP state MiB | {header} |")
    print("| --- " * (4 + len(KS) + len(DISTANCES)) + "|")
    exact = None
    for engine, size in [("exact", sizes[0]), *[("partitioned", s) for s in sizes]]:
        cfg = SelectionConfig(max_groups=groups_total, engine=engine, partition_rows=size, threshold=1e-6)
        groups, seconds, progress = schedule_groups(cfg, emb, labels)
        knn, fixed = coverage_profile(emb, emb[np.concatenate(groups)], eval_rows, radii, DISTANCES)
        scores = np.concatenate([knn, fixed])
        exact = scores if exact is None else exact
        print(f"| {size if engine == 'partitioned' else 'exact'} | {progress['partitions']} | {seconds:.1f} "
              f"| {progress['state_mib']:.0f} | " + " | ".join(f"{v:.3f}" for v in scores / exact) + " |", flush=True)


def own_label_coverage(groups_per_label: int) -> None:
    table, emb = cached_embeddings("agnews_dev")
    coin = np.where(np.random.default_rng(10).random(emb.shape[0]) < 0.5, "a", "b")
    own = {label: np.flatnonzero(coin == label) for label in "ab"}
    radii = {label: knn_radii_of(emb[rows], np.arange(rows.shape[0]), KS) for label, rows in own.items()}
    header = " | ".join([f"kNN k={k}" for k in KS] + [f"d≤{d}" for d in DISTANCES])
    print(f"\n## own-label coverage: AG News dev, labels a/b by coin flip, {groups_per_label} groups of 10 per label\n")
    print(f"| rule | GP scope | label | {header} |")
    print("| --- " * (3 + len(KS) + len(DISTANCES)) + "|")
    for rule in ("max_variance", "density_weighted"):
        for scope in ("per_label", "shared"):
            cfg = SelectionConfig(max_groups=2 * groups_per_label, gp_scope=scope, rule=rule, budget="average",
                                  threshold=1e-6)
            schedule = build_schedule(cfg, emb, coin.tolist(), np.arange(emb.shape[0])).to_pylist()
            for label, rows in own.items():
                chosen = np.searchsorted(rows, [d for r in schedule if r["label"] == label for d in r["demo_row_ids"]])
                knn, fixed = coverage_profile(emb[rows], emb[rows][chosen], np.arange(rows.shape[0]), radii[label],
                                              DISTANCES)
                print(f"| {rule} | {scope} | {label} | " + " | ".join(f"{v:.4f}" for v in [*knn, *fixed]) + " |")


def tiled_embeddings(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """SST-2 train + AG News dev embeddings tiled to `rows` rows; copy t > 0 jittered (seed t) and renormalised."""
    parts = [cached_embeddings(name) for name in ("sst2_train", "agnews_dev")]
    base = np.concatenate([emb for _, emb in parts])
    base_labels = np.concatenate([np.asarray(t.column("label").to_pylist()) for t, _ in parts])
    out = np.empty((rows, base.shape[1]), dtype=np.float32)
    for t, start in enumerate(range(0, rows, base.shape[0])):
        block = out[start:start + base.shape[0]]
        block[:] = base[:block.shape[0]]
        if t:
            block += np.random.default_rng(t).standard_normal(block.shape, dtype=np.float32) * np.float32(
                JITTER / np.sqrt(base.shape[1]))
            block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out, np.resize(base_labels, rows)


def scale(rows: int, groups: int, partition_rows: int, rule: str, inducing_rows: int) -> None:
    emb, labels = tiled_embeddings(rows)
    cfg = SelectionConfig(max_groups=groups, threshold=1e-6, engine="partitioned", partition_rows=partition_rows,
                          rule=rule, inducing_rows=inducing_rows)
    with PeakRSS() as peak:
        start = time.perf_counter()
        tracker = SelectionTracker(emb, labels.tolist(), np.arange(rows), cfg)
        setup = time.perf_counter() - start
        issued = 0
        while batch := tracker.next_groups(256):
            issued += len(batch)
        total = time.perf_counter() - start
        state = tracker.state_bytes()
        progress = tracker.progress()
    selected = issued * (cfg.k + 1)
    print(f"\n## scale: {rows:,} rows (SST-2 train + AG News dev tiled, jitter {JITTER}), {issued:,} groups "
          f"(|S| = {selected:,}), rule {rule}, partition_rows {partition_rows}, {progress['partitions']} partitions, "
          f"inducing_rows {inducing_rows}\n")
    print("| measure | value |\n| --- | --- |")
    print(f"| setup (validation, τ, partitions, GPs) s | {setup:.1f} |")
    print(f"| selection s | {total - setup:.1f} |")
    print(f"| per group ms | {1e3 * (total - setup) / issued:.2f} |")
    print(f"| total s | {total:.1f} |")
    print(f"| GP state allocated (V and inducing features) MiB | {state / 2**20:.0f} |")
    print(f"| GP state used Σ n_p·|S_p|·4 B MiB | {tracker.state_bytes(used=True) / 2**20:.0f} |")
    print(f"| state bound partition_rows·|S|·4 B MiB (refusal uses {PARTITION_GROWTH}× it) | "
          f"{partition_rows * selected * 4 / 2**20:.0f} |")
    print(f"| exact engine would need (Σ_label n·|S_label|·4 B, |S_label| ∝ n) GiB | "
          f"{sum((labels == l).sum() ** 2 * selected / rows * 4 for l in set(labels)) / 2**30:.1f} |")
    print(f"| peak RSS of the process GiB | {peak.peak / 2**30:.2f} |")
    print(f"| embeddings alone (N·d·4 B) GiB | {emb.nbytes / 2**30:.2f} |")


def _cpu_seconds() -> dict:
    """CPU seconds (user + system) so far of this process (the coordinator) and of each shard actor process (Ray
    titles them ray::PartitionShard…): the work that divides over K shows in the shards' columns even where the
    machine has fewer cores than busy processes."""
    import psutil

    out = {"coordinator": sum(psutil.Process().cpu_times()[:2])}
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        if "ray::PartitionShard" in " ".join(proc.info["cmdline"] or []):
            out[proc.pid] = sum(proc.info["cpu_times"][:2])
    return out


def shard_scaling(rows: int, groups: int, partition_rows: int, rule: str, inducing_rows: int,
                  shard_counts: list[int], unlabelled: bool = False) -> None:
    """The same selection as the tracker actor of `synalign run` builds it: the tiled rows written once as an
    embeddings folder, K RowBlock actors each reading its row-id range, the partitions on K shard actors of one CPU
    each (they receive their rows from the blocks), the coordinator here holding positions, labels and per-row
    scalars. Time per group at each K against K = the first, the CPU time per group of the coordinator and of the
    shard actors (the busiest one and all together), the tracker's memory growth in this process, and the peak
    memory of all processes (Ray's included), summed as proportional set sizes so that the object store's shared
    pages count once."""
    import psutil
    import pyarrow as pa
    import ray

    from synalign_ray import io
    from synalign_ray.alignment.rows import FolderRows, id_ranges
    from synalign_ray.config import build_config
    from synalign_ray.selection.blocks import RowBlock, block_ranges
    from synalign_ray.selection.steps import ActorShard, call_shard
    from synalign_ray.stages.common import write_table

    emb, labels = tiled_embeddings(rows)
    folder = CACHE / f"tiled-{rows}"
    if io.read_manifest(io.resolve(str(folder))) is None:
        table = pa.table({io.ROW_ID: pa.array(np.arange(rows)), "label": pa.array(labels),
                          io.EMBEDDING: io.embeddings_to_arrow(emb)})
        write_table(table, io.resolve(str(folder)), build_config({}, ["output.rows_per_part=50000"]),
                    {"kind": "embeddings", "dim": emb.shape[1]})
        del table
    emb_bytes = emb.nbytes
    del emb  # from here on the rows are only in the folder, the block actors and the shard actors
    source = FolderRows.of(str(folder), None, "embeddings")
    cfg = SelectionConfig(max_groups=groups, threshold=1e-6, engine="partitioned", partition_rows=partition_rows,
                          rule=rule, inducing_rows=inducing_rows)
    ray.init(num_cpus=max(shard_counts), include_dashboard=False, log_to_driver=False)
    block_class = ray.remote(RowBlock).options(num_cpus=0)
    print(f"\n## shard actors: {rows:,} rows (tiled as --scale){', unlabelled (one unit)' if unlabelled else ''}, "
          f"{groups:,} groups, rule {rule}, partition_rows "
          f"{partition_rows}, inducing_rows {inducing_rows}; the rows in K block actors, the partitions on K shard "
          f"actors of 1 CPU (1 BLAS thread) each, the coordinator in the driver; the rows read from an embeddings "
          f"folder ({emb_bytes / 2**30:.2f} GiB of float32)\n")
    print("| shard actors K | setup s | selection s | per group ms | per group vs K = first | same schedule as K = first | "
          "CPU ms per group: coordinator | busiest shard | all shards | "
          "tracker growth in the driver GiB | peak memory, all processes (PSS) GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    first, reference = None, None
    for k in shard_counts:
        with PeakRSS(interval=1.0, proportional=True) as peak:
            before = psutil.Process().memory_info().rss
            start = time.perf_counter()
            ranges = block_ranges(rows, k)
            blocks = [ActorShard(block_class.remote()) for _ in ranges]
            for reply in [call_shard(block, "load", source.slice(*span), lo)
                          for block, span, (lo, _) in zip(blocks, id_ranges(np.arange(rows), ranges), ranges)]:
                reply.result()
            tracker = SelectionTracker(blocks, None if unlabelled else labels.tolist(), np.arange(rows), cfg,
                                       num_shards=k,
                                       make_shard=actor_shards(ray, num_cpus=1))
            del blocks  # the shards hold their rows now: the block actors exit
            tracker.progress()  # the shards' replies to the constructor's tops() are in
            setup = time.perf_counter() - start  # reading the folder included
            growth = psutil.Process().memory_info().rss - before
            cpu_before = _cpu_seconds()
            schedule = []
            while batch := tracker.next_groups(256):
                schedule.extend(tuple(g["demo_row_ids"]) for g in batch)
            per_group = (time.perf_counter() - start - setup) / len(schedule)
            cpu = {pid: (t - cpu_before.get(pid, 0.0)) / len(schedule) for pid, t in _cpu_seconds().items()}
        first = first or per_group
        reference = reference or schedule
        shards_cpu = [t for pid, t in cpu.items() if pid != "coordinator"]
        print(f"| {k} | {setup:.1f} | {per_group * len(schedule):.1f} | {1e3 * per_group:.2f} | "
              f"{per_group / first:.3f} | {'(reference)' if k == shard_counts[0] else schedule == reference} | "
              f"{1e3 * cpu['coordinator']:.2f} | {1e3 * max(shards_cpu):.2f} | {1e3 * sum(shards_cpu):.2f} | "
              f"{growth / 2**30:.2f} | {peak.peak / 2**30:.2f} |", flush=True)
        del tracker
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--coverage", action="store_true")
    parser.add_argument("--scope", action="store_true")
    parser.add_argument("--thresholds", action="store_true")
    parser.add_argument("--partition-sweep", action="store_true")
    parser.add_argument("--hull-maps", help="SEEDS, e.g. 0,1,2: hull of the max-variance schedules over those maps")
    parser.add_argument("--scale", help="ROWS,GROUPS")
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--partition-rows", type=int, default=2000)
    parser.add_argument("--rule", default="density_weighted", help="rule of the --scale run")
    parser.add_argument("--inducing-rows", type=int, default=256, help="inducing_rows of the --scale run")
    parser.add_argument("--shards", help="K1,K2,...: run the --scale selection on K shard actors instead")
    parser.add_argument("--unlabelled", action="store_true",
                        help="--shards without labels: one unit, as a production query log (data.label_column null)")
    args = parser.parse_args()
    if args.coverage:
        coverage("sst2_train", args.groups, args.partition_rows)
        coverage("agnews_dev", args.groups, args.partition_rows)
    if args.thresholds:
        thresholds("agnews_dev", "exact", 1000, args.partition_rows)
        thresholds("sst2_train", "partitioned", 6061, args.partition_rows)
    if args.hull_maps:
        hull_maps("sst2_train", args.groups, args.partition_rows, [int(x) for x in args.hull_maps.split(",")])
    if args.partition_sweep:
        partition_sweep("sst2_train", args.groups, [2000, 4000, 8000, 16000])
    if args.scope:
        own_label_coverage(100)
    if args.scale:
        rows, groups = (int(x) for x in args.scale.split(","))
        if args.shards:
            shard_scaling(rows, groups, args.partition_rows, args.rule, args.inducing_rows,
                          [int(x) for x in args.shards.split(",")], args.unlabelled)
        else:
            scale(rows, groups, args.partition_rows, args.rule, args.inducing_rows)


if __name__ == "__main__":
    main()
