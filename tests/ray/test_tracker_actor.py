"""The selection tracker as a Ray actor: same schedule as the plain class, and resumable from its checkpoint."""

from __future__ import annotations

import numpy as np

from synalign_ray.config import SelectionConfig
from synalign_ray.selection.schedule import build_schedule
from synalign_ray.selection.tracker import SelectionTracker

N_ROWS = 600


def test_actor_schedule_equals_plain_class_and_resumes(ray_local, real_embeddings, same_schedule):
    rows, emb = real_embeddings("agnews_dev.parquet", N_ROWS, 0)
    labels = rows.column("label").to_pylist()
    ids = np.arange(N_ROWS, dtype=np.int64)
    cfg = SelectionConfig(k=9, max_groups=24, budget="average")
    plain = build_schedule(cfg, emb, labels, ids)

    TrackerActor = ray_local.remote(SelectionTracker)
    actor = TrackerActor.remote(emb, labels, ids, cfg)
    groups = []
    while batch := ray_local.get(actor.next_groups.remote(5)):
        groups.extend(batch)
    # The actor runs with one BLAS thread, the driver with several: same ids, variances to float32 accuracy.
    same_schedule(groups, plain)
    progress = ray_local.get(actor.progress.remote())
    assert progress["groups_issued"] == 24 and progress["done"]

    # a fresh actor given the first actor's mid-run checkpoint continues exactly where it stopped
    first = TrackerActor.remote(emb, labels, ids, cfg)
    head = ray_local.get(first.next_groups.remote(10))
    checkpoint = ray_local.get(first.checkpoint.remote())
    ray_local.kill(first)
    resumed = TrackerActor.remote(emb, labels, ids, cfg, checkpoint=checkpoint)
    same_schedule(head + ray_local.get(resumed.next_groups.remote(100)), groups)
