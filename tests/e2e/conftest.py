"""End-to-end fixtures: one real vLLM CPU generator pool (packaged SmolLM2) shared by the whole session."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synalign_ray.config import GenerationConfig, SamplingConfig


@pytest.fixture(scope="session")
def generation_config() -> GenerationConfig:
    """Small budgets so a batch of groups finishes in seconds on 2 cores."""
    return GenerationConfig(samples_per_summary=3, groups_per_batch=2,
                            sampling=SamplingConfig(max_tokens=160, temperature=0.8))


@pytest.fixture(scope="package")
def generator_pool(ray_local, generation_config):
    """One engine for all end-to-end tests, shut down after them so its CPU is free for the rest of the suite."""
    from synalign_ray.generation.pool import GeneratorPool

    pool = GeneratorPool(generation_config)
    yield pool
    pool.shutdown()


def write_schedule(path, real: pa.Table, n_groups: int, group_size: int = 4) -> str:
    """A schedule of n_groups groups of same-label real rows (a `synalign select`-shaped Parquet file)."""
    rows = real.to_pylist()
    by_label: dict[str, list[int]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r["row_id"])
    labels = sorted(by_label)
    groups = []
    for gid in range(n_groups):
        label = labels[gid % len(labels)]
        start = (gid // len(labels)) * group_size
        ids = by_label[label][start:start + group_size]
        groups.append({"group_id": gid, "label": label, "anchor_row_id": ids[0], "demo_row_ids": ids,
                       "variance_at_selection": 1.0, "tau": 0.5})
    pq.write_table(pa.Table.from_pylist(groups), path)
    return str(path)
