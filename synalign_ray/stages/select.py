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
from synalign_ray.run_folder import RunFolder, output_manifest, read_output, settings_for
from synalign_ray.stages.common import stamp
from synalign_ray.stages.embed import read_embedded

log = logging.getLogger(__name__)

SCHEDULE_COLUMNS = ("group_id", "label", "demo_row_ids")


def _check_label_column(columns: list[str], cfg: SynAlignConfig, embedded_path: str) -> None:
    label_column = cfg.data.label_column
    if label_column is not None and label_column not in columns:
        raise InputError(f"label column '{label_column}' not in {embedded_path} (set data.label_column=null "
                         "to select without labels)")


def _labels(table: pa.Table, cfg: SynAlignConfig, embedded_path: str) -> list | None:
    _check_label_column(table.column_names, cfg, embedded_path)
    return table.column(cfg.data.label_column).to_pylist() if cfg.data.label_column else None


class TrackerActor:
    """Actor body: the central tracker over the rows of an embeddings folder it reads itself, so the driver receives
    only groups, their demonstration texts and the input's copy keys.
    Loading is a method, not __init__, so that a bad input reaches the driver as the InputError itself."""

    def __init__(self):
        self._tracker = None
        self._texts: pa.Table | None = None
        self._position: dict[int, int] = {}

    def load(self, embedded_path: str, cfg: SynAlignConfig, make_block=None, **shards) -> dict[str, Any]:
        """Track the rows of a completed embeddings folder. With `make_block` (steps.actor_blocks) the embeddings
        stay out of this process: it scans row ids, texts and labels, and each of `num_shards` block actors reads
        its own range of row ids, from which the shard actors receive their partitions' rows."""
        if make_block is None:
            table, emb, manifest = read_embedded(embedded_path, cfg)
            return self._start(table, emb, manifest.get("text_column") or cfg.data.text_column, cfg, embedded_path,
                               shards)
        from synalign_ray.alignment.rows import FolderRows, id_ranges
        from synalign_ray.selection.blocks import block_ranges
        from synalign_ray.selection.steps import call_shard

        manifest = output_manifest(embedded_path, cfg.storage, what="embeddings")
        if manifest is None or manifest.get("kind") != "embeddings":
            raise InputError(f"{embedded_path} is not a completed `synalign embed` output")
        text_column = manifest.get("text_column") or cfg.data.text_column
        _check_label_column(manifest.get("columns", []), cfg, embedded_path)
        rows = FolderRows(embedded_path, tuple(manifest["parts"]), cfg.storage)
        table = rows.scan([text_column] + ([cfg.data.label_column] if cfg.data.label_column else []))
        ids = table.column(io.ROW_ID).to_numpy()
        ranges = block_ranges(table.num_rows, shards["num_shards"])
        blocks = [make_block() for _ in ranges]
        loads = [call_shard(block, "load", rows.slice(*span), lo)
                 for block, span, (lo, _) in zip(blocks, id_ranges(ids, ranges), ranges)]
        for (lo, hi), reply in zip(ranges, loads):
            if reply.result() != hi - lo:
                raise InputError(f"{embedded_path}: rows {lo}..{hi - 1} read {reply.result()} embedding(s) for "
                                 f"{hi - lo} row ids: did the folder change while it was read?")
        facts = self._start(table, blocks, text_column, cfg, embedded_path, shards)
        return {**facts, "blocks": [hi - lo for lo, hi in ranges]}

    def _start(self, table: pa.Table, emb: np.ndarray | list, text_column: str, cfg: SynAlignConfig, where: str,
               shards: dict[str, Any]) -> dict[str, Any]:
        from synalign_ray.selection.tracker import SelectionTracker

        labels = _labels(table, cfg, where)
        row_ids = table.column(io.ROW_ID).to_numpy()
        self._tracker = SelectionTracker(emb, labels, row_ids, cfg.selection, **shards)
        self._texts = table.select([text_column]).rename_columns(["text"])
        self._position = {int(r): i for i, r in enumerate(row_ids)}
        return {"rows": table.num_rows, "row_id_type": table.schema.field(io.ROW_ID).type,
                "groups_planned": self._tracker.progress()["groups_planned"]}

    def next_groups(self, n: int, with_texts: bool = False) -> list[dict]:
        """The tracker's next groups; `with_texts` adds each group's demonstration texts (`demo_texts`)."""
        groups = self._tracker.next_groups(n)
        if with_texts:
            column = self._texts.column("text")
            for g in groups:
                g["demo_texts"] = [column[self._position[int(i)]].as_py() for i in g["demo_row_ids"]]
        return groups

    def copy_keys(self) -> np.ndarray:
        """The tracked rows' copy keys (quality.copy_keys), for the copy_of_input check: 8 bytes a row."""
        from synalign_ray.quality import copy_keys

        return copy_keys(self._texts.column("text").to_pylist())

    def progress(self) -> dict[str, Any]:
        return self._tracker.progress()

    def state_bytes(self, used: bool = False) -> int:
        return self._tracker.state_bytes(used)


def start_tracker(ray, cfg: SynAlignConfig, embeddings_path: str):
    """The tracker actor over the embeddings folder at `embeddings_path` (a location the actor can resolve);
    returns it with its load facts."""
    from synalign_ray.runtime import raise_original
    from synalign_ray.selection.steps import actor_blocks, shard_options

    tracker = ray.remote(TrackerActor).options(num_cpus=0).remote()
    shards = shard_options(ray, cfg.selection)
    if shards:
        # Block actors hold the rows only while the tracker builds its partitions, before the shard actors exist,
        # so they reserve no CPU.
        shards["make_block"] = actor_blocks(ray, num_cpus=0, scheduling_strategy="SPREAD")
    try:
        facts = ray.get(tracker.load.remote(embeddings_path, cfg, **shards))
    except Exception as err:
        ray.kill(tracker)
        raise_original(err)
        raise
    return tracker, facts


def _schedule_on_actors(cfg: SynAlignConfig, embedded_path: str, log_every_s: float = 10.0) -> tuple[pa.Table, int]:
    """The schedule from a TrackerActor and its `selection.num_shards` shard actors: (schedule, real rows)."""
    from synalign_ray.runtime import ray_session
    from synalign_ray.selection.schedule import DRAIN_BATCH, groups_to_table

    with ray_session(cfg.resources) as ray:
        tracker, facts = start_tracker(ray, cfg, embedded_path)
        try:
            log.info("the tracker actor read %d rows from %s; selecting %d group(s) on %d shard actor(s)",
                     facts["rows"], embedded_path, facts["groups_planned"], cfg.selection.num_shards)
            groups: list[dict] = []
            t0 = last = time.monotonic()
            while batch := ray.get(tracker.next_groups.remote(DRAIN_BATCH)):
                groups.extend(batch)
                if (now := time.monotonic()) - last >= log_every_s:
                    log.info("selected %d of %d group(s) (%.1f groups/s)", len(groups), facts["groups_planned"],
                             len(groups) / (now - t0))
                    last = now
        finally:
            ray.kill(tracker)
    return groups_to_table(groups, facts["row_id_type"]), facts["rows"]


def select_stage(cfg: SynAlignConfig, embedded_path: str) -> dict[str, Any]:
    """`synalign select`: the whole GP selection schedule for a `synalign embed` output. With one shard it runs in
    this process; with `selection.num_shards` > 1 a tracker actor reads the rows and the driver sees the schedule."""
    from synalign_ray.selection.plan import check_inputs
    from synalign_ray.selection.schedule import build_schedule

    label_column = cfg.data.label_column
    in_process = cfg.selection.num_shards == 1
    if in_process:
        table, emb, _ = read_embedded(embedded_path, cfg)
        labels = _labels(table, cfg, embedded_path)
        # Before the output's lease: a job that cannot select must not hold (or contend for) the folder.
        check_inputs(emb, labels, table.column(io.ROW_ID).to_numpy(), cfg.selection)
    else:
        # Only the manifest here; the tracker actor checks the rows themselves when it reads them.
        manifest = output_manifest(embedded_path, cfg.storage, what="embeddings")
        if manifest is None or manifest.get("kind") != "embeddings":
            raise InputError(f"{io.resolve(embedded_path, cfg.storage).url} is not a completed `synalign embed` "
                             "output (selection.num_shards > 1 reads one in the tracker actor)")
        _check_label_column(manifest.get("columns", []), cfg, embedded_path)
    loc = io.resolve(cfg.output.path, cfg.storage)
    settings = settings_for(cfg, ("selection",), embeddings=embedded_path, label_column=label_column)
    with RunFolder(loc, cfg.storage).open(settings, cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused
        t0 = time.monotonic()
        if in_process:
            schedule = build_schedule(cfg.selection, emb, labels, table.column(io.ROW_ID).to_numpy())
            real_rows = table.num_rows
        else:
            # The actor's working directory is not the driver's: it gets the resolved location.
            schedule, real_rows = _schedule_on_actors(cfg, io.resolve(embedded_path, cfg.storage).url)
        seconds = time.monotonic() - t0
        log.info("selected %d group(s) from %d rows in %.1f s (tau %.4g)", schedule.num_rows, real_rows,
                 seconds, schedule.column("tau")[0].as_py() if schedule.num_rows else float("nan"))
        parts = folder.write_table(schedule, cfg.output.rows_per_part)
        return folder.finish(stamp({"kind": "schedule", "input": embedded_path, "groups": schedule.num_rows,
                                    "real_rows": real_rows, "seconds": round(seconds, 3), "parts": parts,
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
