"""The generation ledger's quality filter: kept rows in the output, failing rows beside it with their reason,
counted per check, and resumable; on a local folder and on moto S3 under the same assertions."""

import pytest

from synalign_ray import io
from synalign_ray.config import build_config
from synalign_ray.generation.ledger import GenerationLedger, dropped_location
from synalign_ray.generation.presets import PRESETS
from synalign_ray.quality import copy_keys
from synalign_ray.stages.generate import row_bounds, row_checker
from tests.conftest import sample_rows

# Written by the packaged model under strict compact JSON (issue 12), each with the check it must fail.
JUNK = {"1,001,001,3,1,1,1,3,1,3,1,1,1,1,3,1,1": "low_letter_share", "movie_genre": "prompt_echo",
        "nothray_sentence_word_nothray_sentence_word_nothray_sentence_word": "repetition", "},": "too_short"}


def rows_for(texts, group_id):
    return [{"text": t, "label": "positive", "group_id": group_id, "demo_row_ids": [1, 2], "summary": None,
             "model": "m", "prompt_tokens": 1, "completion_tokens": 1} for t in texts]


@pytest.fixture(params=["local", "s3"])
def out_loc(request, tmp_path):
    if request.param == "local":
        return io.resolve(str(tmp_path / "gen")), None
    storage, bucket = request.getfixturevalue("s3_bucket")
    return io.resolve(f"s3://{bucket}/run/gen", storage), storage


def test_failing_rows_go_beside_the_output_with_their_reason_and_resume(out_loc):
    loc, storage = out_loc
    real = sample_rows("sst2_dev.parquet", 30, seed=3).column("text").to_pylist()
    inputs = real[:10]
    cfg = build_config({})
    check = row_checker(cfg, PRESETS["sst2"], row_bounds(cfg, PRESETS["sst2"]), copy_keys(inputs))
    ledger = GenerationLedger(loc, storage, row_check=check)
    good = real[10:20]
    batch = [*good[:5], *JUNK, inputs[0]]  # a copy of an input row too
    entry = ledger.record(rows_for(batch, 0), [0], [], {"stage2": {"prompt": 3, "completion": 4}}, 1.0)
    assert entry["rows"] == 5 and entry["dropped"] == len(JUNK) + 1
    assert entry["failed_checks"] == {"low_letter_share": 1, "prompt_echo": 1, "repetition": 1, "too_short": 1,
                                      "copy_of_input": 1}
    ledger.record(rows_for(good[5:] + [good[0]], 1), [1], [], {"stage2": {"prompt": 1, "completion": 1}}, 1.0)
    totals = ledger.totals()
    assert totals["rows"] == 10 and totals["duplicates_removed"] == 1 and totals["dropped_rows"] == 5
    kept = io.read_parts(loc, {"parts": totals["parts"]}).column("text").to_pylist()
    assert kept == good
    dropped_loc = dropped_location(loc)
    assert dropped_loc.url.endswith("gen_dropped")
    dropped = io.read_parts(dropped_loc, {"parts": totals["dropped_parts"]}).to_pylist()
    assert {d["text"]: d["drop_reason"] for d in dropped} == {**JUNK, inputs[0]: "copy_of_input"}
    # A rerun reads the same state back; a dropped part of a batch that never reached the ledger is an orphan.
    io.write_part(io.read_parts(dropped_loc, {"parts": totals["dropped_parts"]}), dropped_loc, "part-00042.parquet",
                  storage)
    again = GenerationLedger(loc, storage, row_check=check)
    assert again.done_groups == {0, 1} and again.totals() == totals
    assert not dropped_loc.fs.exists(dropped_loc.join("part-00042.parquet").path)


def test_without_the_filter_failing_rows_are_counted_and_kept(tmp_path):
    cfg = build_config({}, ["quality.filter=false"])
    check = row_checker(cfg, PRESETS["sst2"], row_bounds(cfg, PRESETS["sst2"]), copy_keys([]))
    ledger = GenerationLedger(io.resolve(str(tmp_path / "gen")), row_check=check, drop=cfg.quality.filter)
    entry = ledger.record(rows_for(["A warm and funny film .", *JUNK], 0), [0], [], {}, 0.1)
    assert entry["rows"] == 1 + len(JUNK) and entry["dropped"] == 0 and sum(entry["failed_checks"].values()) == 4


def test_impossible_bounds_fail_before_any_model():
    from synalign_ray.errors import ConfigError

    cfg = build_config({}, ["quality.min_chars=500"])  # above the sst2 preset's 192-character maximum
    with pytest.raises(ConfigError, match="no row could pass"):
        row_bounds(cfg, PRESETS["sst2"])
