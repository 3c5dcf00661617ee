"""`synalign select`: run the selection tracker to the end and return the schedule, one row per demonstration group.

Columns: group_id, label, anchor_row_id, demo_row_ids (anchor first, then its k neighbours), variance_at_selection, tau.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from synalign_ray.config import SelectionConfig
from synalign_ray.selection.tracker import SelectionTracker

# Groups drawn per next_groups call while building the whole schedule (only bounds the list held between calls).
DRAIN_BATCH = 64


def schedule_schema(row_id_type: pa.DataType) -> pa.Schema:
    """The schedule table's schema; row ids keep the input's type (integers or strings)."""
    return pa.schema([
        pa.field("group_id", pa.int64(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("anchor_row_id", row_id_type, nullable=False),
        pa.field("demo_row_ids", pa.list_(row_id_type), nullable=False),
        pa.field("variance_at_selection", pa.float64(), nullable=False),
        pa.field("tau", pa.float64(), nullable=False),
    ])


def groups_to_table(groups: list[dict], row_id_type: pa.DataType) -> pa.Table:
    """Schedule rows (the dicts `SelectionTracker.next_groups` returns) as a table."""
    schema = schedule_schema(row_id_type)
    return pa.Table.from_pylist(groups, schema=schema)


def build_schedule(cfg: SelectionConfig, embeddings: np.ndarray, labels: list[str] | None,
                   row_ids: np.ndarray, **shards) -> pa.Table:
    """The full selection schedule for these embeddings: depends on the embeddings, labels, config and seed only
    (`shards`: SelectionTracker's num_shards and make_shard, which do not change it)."""
    tracker = SelectionTracker(embeddings, labels, row_ids, cfg, **shards)
    groups: list[dict] = []
    while batch := tracker.next_groups(DRAIN_BATCH):
        groups.extend(batch)
    return groups_to_table(groups, pa.array(np.asarray(row_ids)[:1]).type)
