"""`synalign coverage`: a schedule's coverage of the real rows against random groups of the same shape."""

import numpy as np
import pyarrow as pa
import pytest

from synalign_ray import io
from synalign_ray.cli import main
from synalign_ray.config import build_config
from synalign_ray.errors import InputError
from synalign_ray.stages.common import write_table
from synalign_ray.stages.select import coverage_stage


@pytest.fixture(scope="module")
def embedded_and_schedule(tmp_path_factory, real_embeddings):
    root = tmp_path_factory.mktemp("coverage")
    rows, emb = real_embeddings("agnews_dev.parquet", 600, 1)
    table = rows.append_column(io.ROW_ID, pa.array(np.arange(rows.num_rows))).append_column(
        io.EMBEDDING, io.embeddings_to_arrow(emb))
    write_table(table, io.resolve(str(root / "emb")), build_config({}), {"kind": "embeddings"})
    assert main(["select", "--embeddings", str(root / "emb"), "--output", str(root / "sched"),
                 "selection.max_groups=12", "selection.k=4"]) == 0
    return root


def test_coverage_of_a_schedule(embedded_and_schedule, capsys):
    root = embedded_and_schedule
    cfg = build_config({})
    r = coverage_stage(cfg, str(root / "emb"), str(root / "sched"), seeds=2, map_rows=300)
    assert r["groups"] == 12 and r["k"] == 4 and r["map_rows"] == 300
    for key in ("hull_coverage", "hull_coverage_random", "knn_radius_coverage", "knn_radius_coverage_random"):
        assert 0.0 < r[key] <= 1.0
    assert coverage_stage(cfg, str(root / "emb"), str(root / "sched"), seeds=2, map_rows=300) == r
    assert main(["coverage", "--embeddings", str(root / "emb"), "--schedule", str(root / "sched"), "--seeds", "1"]) == 0
    assert "hull coverage" in capsys.readouterr().out


def test_schedule_from_another_input_is_refused(embedded_and_schedule, tmp_path, real_embeddings):
    root = embedded_and_schedule
    rows, emb = real_embeddings("agnews_dev.parquet", 600, 1)
    other = rows.slice(0, 50).append_column(io.ROW_ID, pa.array(np.arange(50))).append_column(
        io.EMBEDDING, io.embeddings_to_arrow(emb[:50]))
    write_table(other, io.resolve(str(tmp_path / "other")), build_config({}), {"kind": "embeddings"})
    with pytest.raises(InputError, match="built from another input"):
        coverage_stage(build_config({}), str(tmp_path / "other"), str(root / "sched"), seeds=1, map_rows=40)
