"""The selection tracker as a Ray actor: same schedule as the plain class, and the same again when restarted."""

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

    # a fresh actor after a killed one selects the same groups (what a resumed `generate` relies on)
    first = TrackerActor.remote(emb, labels, ids, cfg)
    head = ray_local.get(first.next_groups.remote(10))
    ray_local.kill(first)
    again = ray_local.get(TrackerActor.remote(emb, labels, ids, cfg).next_groups.remote(100))
    same_schedule(again[:10], head)
    same_schedule(again, groups)


class ActorShard:
    """A PartitionShard in a Ray actor, answering the tracker's calls synchronously (the caller's own wrapper)."""

    def __init__(self, ray, **kwargs):
        from synalign_ray.selection.partitions import PartitionShard

        self._ray = ray
        self._actor = ray.remote(PartitionShard).remote(**kwargs)

    def tops(self):
        return self._ray.get(self._actor.tops.remote())

    def add(self, pid, anchor, updates):
        return self._ray.get(self._actor.add.remote(pid, anchor, updates))

    def refresh(self, pid, updates):
        return self._ray.get(self._actor.refresh.remote(pid, updates))

    def state_bytes(self):
        return self._ray.get(self._actor.state_bytes.remote())


def test_partitions_on_two_shard_actors_give_the_in_process_schedule(ray_local, real_embeddings, same_schedule):
    rows, emb = real_embeddings("agnews_dev.parquet", N_ROWS, 0)
    labels = rows.column("label").to_pylist()
    ids = np.arange(N_ROWS, dtype=np.int64)
    # inducing rows make every group's block of h travel to the other actor (the cross-partition term)
    cfg = SelectionConfig(k=9, max_groups=30, budget="average", engine="partitioned", partition_rows=60,
                          rule="density_weighted", inducing_rows=32)
    plain = SelectionTracker(emb, labels, ids, cfg)
    spread = SelectionTracker(emb, labels, ids, cfg, num_shards=2,
                              make_shard=lambda **kwargs: ActorShard(ray_local, **kwargs))
    assert plain.n_partitions == spread.n_partitions >= 8
    assert all(s.state_bytes() > 0 for s in spread._shards), "both actors hold partitions"
    same_schedule(spread.next_groups(100), plain.next_groups(100))
