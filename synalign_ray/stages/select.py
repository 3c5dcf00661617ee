"""`synalign select`: the GP selection schedule of an embeddings folder; its reader; `synalign coverage`."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from synalign_ray import io
from synalign_ray.config import SynAlignConfig
from synalign_ray.errors import InputError
from synalign_ray.run_folder import RunFolder, read_output, settings_for
from synalign_ray.stages.common import stamp
from synalign_ray.stages.embed import read_embedded

log = logging.getLogger(__name__)

SCHEDULE_COLUMNS = ("group_id", "label", "demo_row_ids")


def select_stage(cfg: SynAlignConfig, embedded_path: str) -> dict[str, Any]:
    """`synalign select`: the whole GP selection schedule for a `synalign embed` output."""
    from synalign_ray.selection.schedule import build_schedule

    table, emb, _ = read_embedded(embedded_path, cfg)
    label_column = cfg.data.label_column
    if label_column is not None and label_column not in table.column_names:
        raise InputError(f"label column '{label_column}' not in {embedded_path} (set data.label_column=null "
                         "to select without labels)")
    from synalign_ray.selection.plan import check_inputs

    labels = table.column(label_column).to_pylist() if label_column else None
    # Before the output's lease: a job that cannot select must not hold (or contend for) the folder.
    check_inputs(emb, labels, table.column(io.ROW_ID).to_numpy(), cfg.selection)
    loc = io.resolve(cfg.output.path, cfg.storage)
    settings = settings_for(cfg, ("selection",), embeddings=embedded_path, label_column=label_column)
    with RunFolder(loc, cfg.storage).open(settings, cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused
        t0 = time.monotonic()
        row_ids = table.column(io.ROW_ID).to_numpy()
        if cfg.selection.num_shards == 1:
            schedule = build_schedule(cfg.selection, emb, labels, row_ids)
        else:
            from synalign_ray.runtime import ray_session
            from synalign_ray.selection.steps import shard_options

            with ray_session(cfg.resources) as ray:
                schedule = build_schedule(cfg.selection, emb, labels, row_ids, **shard_options(ray, cfg.selection))
        seconds = time.monotonic() - t0
        log.info("selected %d group(s) from %d rows in %.1f s (tau %.4g)", schedule.num_rows, table.num_rows,
                 seconds, schedule.column("tau")[0].as_py() if schedule.num_rows else float("nan"))
        parts = folder.write_table(schedule, cfg.output.rows_per_part)
        return folder.finish(stamp({"kind": "schedule", "input": embedded_path, "groups": schedule.num_rows,
                                    "real_rows": table.num_rows, "seconds": round(seconds, 3), "parts": parts,
                                    "rows": schedule.num_rows, "columns": schedule.column_names}, folder, cfg))


def read_schedule(path: str, cfg: SynAlignConfig) -> pa.Table:
    """A `synalign select` output folder (or a plain Parquet file) with group_id, label, demo_row_ids."""
    table, _ = read_output(path, cfg.storage, fmt="parquet", what="schedule")
    url = io.resolve(path, cfg.storage).url
    missing = [c for c in SCHEDULE_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"schedule {url} lacks column(s) {missing}: is it a `synalign select` output?")
    if table.num_rows == 0:
        raise InputError(f"schedule {url} has no groups")
    return table


def coverage_stage(cfg: SynAlignConfig, embedded_path: str, schedule_path: str, seeds: int = 5,
                   map_rows: int = 4000) -> dict[str, Any]:
    """`synalign coverage`: how well a schedule's groups cover the real rows, against uniform random anchors.

    Hull coverage (paper Appendix A.2.3) on a t-SNE map of at most `map_rows` rows (the anchors always on it) and
    the k-NN-radius coverage of all demonstration rows in embedding space.
    """
    from synalign_ray import metrics

    table, emb, _ = read_embedded(embedded_path, cfg)
    schedule = read_schedule(schedule_path, cfg)
    pos = {rid: i for i, rid in enumerate(table.column(io.ROW_ID).to_pylist())}
    groups = schedule.column("demo_row_ids").to_pylist()
    try:
        anchors = np.array([pos[g[0]] for g in groups])
        demo_rows = np.array([pos[r] for g in groups for r in g])
    except KeyError as err:
        raise InputError(f"schedule row id {err} is not in {embedded_path}: built from another input?") from None
    k = len(groups[0]) - 1
    rng = np.random.default_rng(cfg.selection.seed)
    others = np.setdiff1d(np.arange(len(emb)), anchors)
    sample = np.concatenate([anchors, rng.choice(others, size=min(len(others), max(map_rows - len(anchors), 0)),
                                                 replace=False)])
    points = metrics.tsne_map(emb[sample], seed=cfg.selection.seed)
    radii = metrics.knn_radii(emb, k=5)
    hull = float(metrics.convex_hull_coverage(points, np.arange(len(anchors)), k)[-1])
    knn = metrics.knn_radius_coverage(emb, emb[demo_rows], k=5, radii=radii)
    label = cfg.data.label_column
    labels = np.asarray(table.column(label).to_pylist())[sample] if label in table.column_names else None
    rand_hull, rand_knn = [], []
    for s in range(seeds):
        # Random groups of the same shape among the mapped rows (metrics.random_groups, the one random baseline).
        picked = metrics.random_groups(emb[sample], labels, len(anchors), k, cfg.selection.seed + 1 + s)
        rand_hull.append(float(metrics.convex_hull_coverage(points, np.array([g[0] for g in picked]), k)[-1]))
        rand_knn.append(metrics.knn_radius_coverage(emb, emb[sample[np.concatenate(picked)]], k=5, radii=radii))
    return {"groups": len(groups), "k": k, "map_rows": int(len(sample)), "hull_coverage": hull,
            "hull_coverage_random": float(np.mean(rand_hull)), "knn_radius_coverage": knn,
            "knn_radius_coverage_random": float(np.mean(rand_knn)), "random_seeds": seeds}
