"""`synalign evaluate` on a run folder built from real SST-2 rows and MiniLM embeddings (no LLM: other real rows
stand in for the generated ones): held-out rows only from a test file, the aligned rows joined on generated_id,
and the quality checker read through its own classes."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synalign_ray import io
from synalign_ray.alignment.importance import label_probability
from synalign_ray.cli import main
from synalign_ray.config import build_config
from synalign_ray.errors import InputError
from synalign_ray.evaluation import TRAIN_SETS, evaluate, quality_checker, synthetic_sets
from synalign_ray.stages.common import write_table

DROPPED = 40  # generated rows that failed a check: the kept rows' positions are then not their ids


def _with_embedding(rows: pa.Table, emb: np.ndarray, ids) -> pa.Table:
    return rows.select(["text", "label"]).append_column(io.ROW_ID, pa.array(ids, pa.int64())).append_column(
        io.EMBEDDING, io.embeddings_to_arrow(emb))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, real_embeddings):
    root = tmp_path_factory.mktemp("evaluate") / "run"
    cfg = build_config({})
    real_rows, real_emb = real_embeddings("sst2_train.parquet", 400, 0)
    write_table(_with_embedding(real_rows, real_emb, np.arange(400)), io.resolve(str(root / "embeddings")), cfg,
                {"kind": "embeddings"})
    gen_rows, gen_emb = real_embeddings("sst2_train.parquet", 300, 11)
    gen = _with_embedding(gen_rows, gen_emb, np.arange(300) + 5000)  # ids as the run numbers them, not positions
    reasons = ["near_copy"] * DROPPED + [None] * (300 - DROPPED)
    gen = gen.append_column("drop_reason", pa.array(reasons, pa.string()))
    write_table(gen, io.resolve(str(root / "generated_embeddings")), cfg, {"kind": "embeddings"})
    drawn = np.random.default_rng(3).choice(np.arange(DROPPED, 300), size=200, replace=True)
    aligned = pa.table({"text": [gen_rows.column("text")[int(i)].as_py() for i in drawn] + ["a real row"] * 5,
                        "label": [gen_rows.column("label")[int(i)].as_py() for i in drawn] + ["1"] * 5,
                        "source": ["synthetic"] * 200 + ["real"] * 5,
                        "generated_id": pa.array([int(i) + 5000 for i in drawn] + [None] * 5, pa.int64())})
    write_table(aligned, io.resolve(str(root / "aligned")), cfg, {"kind": "aligned"})
    io.write_manifest(io.resolve(str(root)), {"kind": "run", "config": cfg.redacted()})
    return root, real_rows, gen_rows, drawn


@pytest.fixture(scope="module")
def test_file(tmp_path_factory, real_embeddings, run_dir):
    """200 SST-2 dev rows plus 25 of the run's own real rows, which evaluate must not score on."""
    _, real_rows, _, _ = run_dir
    dev_rows, dev_emb = real_embeddings("sst2_dev.parquet", 200, 0)
    _, real_emb = real_embeddings("sst2_train.parquet", 400, 0)
    leaked = _with_embedding(real_rows.slice(0, 25), real_emb[:25], np.arange(25))
    table = pa.concat_tables([_with_embedding(dev_rows, dev_emb, np.arange(200)), leaked])
    path = tmp_path_factory.mktemp("test_rows") / "test.parquet"
    pq.write_table(table.drop_columns([io.ROW_ID]), path)
    return str(path)


def test_without_a_test_file_evaluate_refuses(run_dir):
    # The run's real rows were demonstrations and the alignment target: a split of them would leak.
    with pytest.raises(InputError, match="held-out labelled rows"):
        evaluate(str(run_dir[0]), None)


def test_test_rows_that_are_run_input_rows_are_dropped(run_dir, test_file):
    res = evaluate(run_dir[0], test_file)
    train_texts = {" ".join(t.casefold().split()) for t in run_dir[1].column("text").to_pylist()}
    dev_texts = pq.read_table(test_file).column("text").to_pylist()
    fresh = [t for t in dev_texts if " ".join(t.casefold().split()) not in train_texts]
    assert res["test_rows"] == len(fresh) and res["test_rows_in_run_input"] == len(dev_texts) - len(fresh) >= 25
    assert list(res["results"]) == list(TRAIN_SETS)
    r = res["results"]
    assert r["real only"]["train_rows"] == 400 and r["real only"]["synthetic_rows"] == 0
    assert r["real + random"]["synthetic_rows"] == r["real + aligned"]["synthetic_rows"] == 200
    # 400 real SST-2 rows already separate the labels far better than chance.
    assert all(0.6 < v["accuracy"] <= 1.0 and 0.0 < v["macro_f1"] <= 1.0 for v in r.values())


def test_aligned_rows_join_on_generated_id(run_dir):
    root, _, gen_rows, drawn = run_dir
    from synalign_ray.evaluation import _read_run

    _, _, gen, aligned = _read_run(str(root), build_config({}))
    assert gen.num_rows == 300 - DROPPED
    sets = synthetic_sets(gen, aligned, seed=0)
    got = gen.column("text").take(pa.array(sets["real + aligned"])).to_pylist()
    assert got == [gen_rows.column("text")[int(i)].as_py() for i in drawn]
    assert sets["real only"].size == 0 and sets["real + random"].size == 200
    foreign = aligned.set_column(aligned.column_names.index("generated_id"), "generated_id",
                                 pa.array([5000] * aligned.num_rows, pa.int64()))  # a dropped row's id
    with pytest.raises(InputError, match="do not belong together"):
        synthetic_sets(gen, foreign.filter(pa.compute.equal(foreign.column("source"), "synthetic")), seed=0)


def test_checker_probability_by_its_own_classes(real_embeddings):
    # The checker never saw label code 1: indexing predict_proba by code would read label 2's column for it (or
    # fail out of bounds); by the checker's classes it is 0, and the others are their own columns.
    rows, emb = real_embeddings("agnews_dev.parquet", 300, 0)
    names = sorted(set(rows.column("label").to_pylist()))
    y = np.array([names.index(v) for v in rows.column("label").to_pylist()])
    seen = y != 1
    checker = quality_checker(emb[seen], y[seen], seed=0)
    p = label_probability(checker, emb, y)
    proba = checker.predict_proba(emb)
    assert np.all(p[y == 1] == 0.0)
    for k in (0, 2, 3):
        np.testing.assert_allclose(p[y == k], proba[y == k, list(checker.classes_).index(k)])


@pytest.mark.parametrize("loss", ["imp", "dimp"])
def test_weighted_losses_and_the_command(run_dir, test_file, tmp_path, capsys, loss):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir[0]), "--test", test_file, "--loss", loss, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["loss"] == loss and "real + aligned" in printed and f"{res['test_rows']} held-out rows" in printed
    assert all(0.5 < v["accuracy"] <= 1.0 for v in res["results"].values())
