"""Bad input to `synalign embed` fails with exit code 2 and a one-line message before any model or Ray starts."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synalign_ray.stages import embed
from synalign_ray.cli import main


@pytest.fixture(autouse=True)
def no_embedding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the embedding stage started despite bad input")

    monkeypatch.setattr(embed, "embed_rows", fail)
    monkeypatch.setattr(embed, "embed_input_into", fail)


def write(tmp_path, table, name="in.parquet"):
    p = tmp_path / name
    pq.write_table(table, p)
    return str(p)


CASES = {
    "missing file": (lambda t: [str(t / "nope.parquet")], "input not found"),
    "unsupported format": (lambda t: [str((t / "x.txt").write_text("a") and t / "x.txt")],
                           "unsupported input format '.txt'"),
    "missing text column": (lambda t: [write(t, pa.table({"sentence": ["a"], "label": ["x"]}))],
                            "text column 'text' not found"),
    "empty dataset": (lambda t: [write(t, pa.table({"text": pa.array([], pa.string())}))], "has no rows"),
    "label column absent": (lambda t: [write(t, pa.table({"text": ["a"]}))], "label column 'label' not found"),
    "unknown config key": (lambda t: [write(t, pa.table({"text": ["a"], "label": ["x"]})), "embedding.modle=x"],
                           "embedding.modle: unknown config key"),
    "negative batch size": (lambda t: [write(t, pa.table({"text": ["a"], "label": ["x"]})),
                                       "embedding.batch_size=-4"], "embedding.batch_size"),
    "unknown embedding model": (lambda t: [write(t, pa.table({"text": ["a"], "label": ["x"]})),
                                           "embedding.model=no-such-model"], "unknown embedding model"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    make, message = CASES[case]
    inp, *overrides = make(tmp_path)
    code = main(["embed", "--input", inp, "--output", str(tmp_path / "out"), *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("synalign embed: error:") and message in err[-1]
    assert not (tmp_path / "out" / "_manifest.json").exists()
