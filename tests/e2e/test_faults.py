"""Faults on real components: the driver SIGKILLed mid-generation, S3 going away during writes, an encoder actor
dying during embedding, and an LLM that emits unusable output. Each is bounded in time."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from synalign_ray import io, real_input
from synalign_ray.cli import main
from synalign_ray.config import build_config
from synalign_ray.errors import InputError
from synalign_ray.generation import ledger as ledger_mod
from synalign_ray.stages.common import write_table
from synalign_ray.stages.embed import embed_rows
from synalign_ray.stages.generate import generate_stage
from tests.conftest import REPO, data_file
from tests.e2e.conftest import write_schedule


def _gen_overrides(generation_config, out):
    g = generation_config
    return [f"data.path={data_file('sst2_dev.parquet')}", "data.sample_rows=400", "data.seed=2",
            f"output.path={out}", f"generation.samples_per_summary={g.samples_per_summary}",
            f"generation.groups_per_batch={g.groups_per_batch}",
            f"generation.sampling.max_tokens={g.sampling.max_tokens}",
            f"generation.sampling.temperature={g.sampling.temperature}"]


def test_driver_sigkilled_mid_generation_resumes_exactly(tmp_path, generator_pool, generation_config):
    out = tmp_path / "gen"
    overrides = _gen_overrides(generation_config, out)
    cfg = build_config({}, overrides)
    schedule = write_schedule(tmp_path / "schedule.parquet", real_input.read_real_rows(cfg.data), 6)
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "synalign_ray", "generate", "--schedule", schedule, *overrides]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ledger_dir = out / ledger_mod.LEDGER_DIR
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and not list(ledger_dir.glob("batch-*.json")):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        assert list(ledger_dir.glob("batch-*.json")), "the driver wrote no batch in time"
    finally:
        # The whole process group: the driver and the local Ray it started, as when a node dies.
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
        subprocess.run(["pkill", "-9", "-f", ray_tmp], capture_output=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert io.read_manifest(io.resolve(str(out))) is None
    before = ledger_mod.GenerationLedger(io.resolve(str(out)))
    assert 1 <= len(before.entries) < 3
    manifest = generate_stage(cfg, schedule, pool=generator_pool)
    after = ledger_mod.GenerationLedger(io.resolve(str(out)))
    groups = [g for e in after.entries for g in e["group_ids"]]
    assert sorted(groups) == list(range(6)), "every group exactly once across both runs"
    assert after.entries[:len(before.entries)] == before.entries
    for stage in ("stage1", "stage2"):
        for kind in ("prompt", "completion"):
            assert manifest["tokens"][stage][kind] == sum(e["tokens"][stage][kind] for e in after.entries)
    # Every group is accounted for on disk: rows kept, rows that failed a quality check (a group of the tiny model can
    # write only junk: seen here, one digit run), or a counted failure.
    table = io.read_parts(io.resolve(str(out)))
    dropped_loc = ledger_mod.dropped_location(io.resolve(str(out)))
    dropped = io.read_parts(dropped_loc) if manifest["dropped_rows"] else table.slice(0, 0)
    assert dropped.num_rows == manifest["dropped_rows"]
    accounted = set(table.column("group_id").to_pylist()) | set(dropped.column("group_id").to_pylist())
    assert accounted | set(manifest["failed_groups"]) == set(range(6))


def test_llm_junk_output_is_retried_reported_and_the_job_finishes(tmp_path, generator_pool, generation_config):
    out = tmp_path / "gen"
    cfg = build_config({}, [*_gen_overrides(generation_config, out), "generation.sampling.max_tokens=12",
                            "generation.max_retries=1", "generation.output_format=json"])
    schedule = write_schedule(tmp_path / "schedule.parquet", real_input.read_real_rows(cfg.data), 2)
    with pytest.raises(InputError, match="generation produced no usable rows .*stage1:truncated 2"):
        generate_stage(cfg, schedule, pool=generator_pool)
    # The job finished: every group is accounted for on disk, with the reason it failed.
    manifest = io.read_manifest(io.resolve(str(out)))
    # 12 tokens cannot hold a summary of four attributes: every try is cut off before the JSON closes.
    assert manifest["failed_groups"] == [0, 1] and manifest["rows"] == 0
    assert manifest["failure_reasons"] == {"stage1:truncated": 2}
    assert manifest["tokens"]["stage1"]["completion"] == 2 * 2 * 12  # 2 groups x (1 try + 1 retry) x 12 tokens


class _Moto:
    """A moto S3 server on a fixed port that can be stopped and started again (state lives in-process)."""

    def __init__(self, port: int):
        self.port = port
        self.server = None

    def start(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self):
        self.server.stop()


@pytest.fixture()
def flaky_s3(monkeypatch):
    import socket

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = _Moto(port)
    moto.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "flaky-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "flaky-secret")
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="flaky")
    yield moto, endpoint
    try:
        moto.stop()
    except Exception:
        pass


def test_s3_outage_during_writes_is_retried_and_the_output_completes(flaky_s3, tmp_path):
    import boto3

    moto, endpoint = flaky_s3
    rows = pa.table({"text": [f"row {i}" for i in range(200)], "n": list(range(200))})
    cfg = build_config({}, [f"storage.endpoint_url={endpoint}", "storage.region=us-east-1",
                            "output.rows_per_part=10", "storage.max_attempts=10", "output.path=s3://flaky/out"])
    loc = io.resolve("s3://flaky/out", cfg.storage)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def outage():
        while client.list_objects_v2(Bucket="flaky", Prefix="out/").get("KeyCount", 0) < 3:
            time.sleep(0.01)
        moto.stop()
        time.sleep(2.0)
        moto.start()

    t = threading.Thread(target=outage)
    t.start()
    manifest = write_table(rows, loc, cfg, {"kind": "test"})
    t.join()
    assert len(manifest["parts"]) == 20
    assert io.read_parts(loc).equals(rows)


def test_s3_down_longer_than_retries_fails_clearly_and_a_rerun_completes(flaky_s3, tmp_path, real_embeddings,
                                                                        capsys):
    moto, endpoint = flaky_s3
    rows, emb = real_embeddings("sst2_dev.parquet", 200, 4)
    table = rows.append_column(io.ROW_ID, pa.array(np.arange(rows.num_rows))).append_column(
        io.EMBEDDING, io.embeddings_to_arrow(emb))
    write_table(table, io.resolve(str(tmp_path / "emb")), build_config({}), {"kind": "embeddings"})
    argv = ["select", "--embeddings", str(tmp_path / "emb"), "--output", "s3://flaky/schedule",
            f"storage.endpoint_url={endpoint}", "storage.region=us-east-1", "storage.max_attempts=1",
            "selection.max_groups=4"]
    moto.stop()
    assert main(argv) == 2
    assert "unreachable" in capsys.readouterr().err.strip().splitlines()[-1]
    moto.start()
    cfg = build_config({}, argv[5:])
    assert io.read_manifest(io.resolve("s3://flaky/schedule", cfg.storage)) is None
    assert main(argv) == 0
    assert io.read_manifest(io.resolve("s3://flaky/schedule", cfg.storage))["groups"] == 4


def _encoder_pids() -> list[int]:
    """PIDs of live Ray Data encoder actors (Ray titles them ray::MapWorker(MapBatches(Encoder)))."""
    import psutil

    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "MapWorker" in cmd and "Encoder" in cmd:
            pids.append(p.pid)
    return pids


def test_encoder_actor_killed_during_embedding_is_retried(ray_local, sentence_model):
    cfg = build_config({}, [f"data.path={data_file('sst2_train.parquet')}", "data.sample_rows=3000",
                            "embedding.batch_size=64", "embedding.num_actors=1"])
    rows = real_input.read_real_rows(cfg.data)
    killed = {}
    done = threading.Event()

    def kill_encoder():
        while not done.is_set():
            pids = _encoder_pids()
            if pids:
                done.wait(4.0)  # let it finish a few batches first
                if not done.is_set():
                    killed["pid"] = pids[0]
                    os.kill(pids[0], signal.SIGKILL)
                return
            time.sleep(0.2)

    t = threading.Thread(target=kill_encoder)
    t.start()
    try:
        out = embed_rows(rows, cfg, "text")
    finally:
        done.set()
        t.join()
    assert killed, "the encoder finished before it could be killed"
    assert out.column(io.ROW_ID).to_pylist() == rows.column(io.ROW_ID).to_pylist()
    want = sentence_model.encode(rows.column("text").to_pylist(), normalize_embeddings=True)
    np.testing.assert_allclose(io.embeddings_from_arrow(out.column(io.EMBEDDING)), want, atol=1e-5)
