"""`synalign run` end to end (real Ray, vLLM CPU, MiniLM): local folder and moto S3, resume, and the Ray job
entry point against a two-node cluster started with `ray start` (output to moto S3)."""

import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

import synalign_ray
from synalign_ray import io, quality
from synalign_ray.alignment.rows import FolderRows
from synalign_ray.generation.ledger import LEDGER_DIR
from synalign_ray.config import DEFAULT_RUN_CONFIG, load_config
from synalign_ray.stages import score
from synalign_ray.stages.run import run_stage
from tests.conftest import REPO, data_file

SMALL_RUN = [f"data.path={data_file('sst2_train.parquet')}", "data.sample_rows=600", "selection.max_groups=4",
             "generation.samples_per_summary=3", "generation.groups_per_batch=2",
             "generation.sampling.max_tokens=160", "alignment.projections=200"]


@pytest.fixture(params=["local", "s3"])
def run_target(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run"), []
    storage, bucket = request.getfixturevalue("s3_bucket")
    # Explicit keys travel to the Ray workers that write parts; they must never show up in any output.
    return f"s3://{bucket}/runs/demo", [f"storage.endpoint_url={storage.endpoint_url}", "storage.region=us-east-1",
                                        "storage.access_key_id=AKIDRUNTEST0001", "storage.secret_access_key=runsecret9"]


def _all_text(loc: io.Location) -> str:
    chunks = []
    for path in loc.fs.find(loc.path):
        with loc.fs.open(path, "rb") as fh:
            chunks.append(fh.read().decode("latin-1"))
    return "\n".join(chunks)


def test_default_run_end_to_end_and_resume(run_target, generator_pool):
    out, storage_overrides = run_target
    cfg = load_config(DEFAULT_RUN_CONFIG, [*SMALL_RUN, f"output.path={out}", *storage_overrides])
    manifest = synalign_ray.run(cfg, pool=generator_pool)  # the Python API
    loc = io.resolve(out, cfg.storage)
    assert io.read_manifest(loc) == json.loads(json.dumps(manifest, default=str))
    counts = manifest["counts"]
    assert counts["real_rows"] == 600 and counts["groups"] == 4
    gen = io.read_parts(loc.join("generated"))
    aligned = io.read_parts(loc.join("aligned"))
    dropped = io.read_parts(loc.join("generated_dropped"))
    assert counts["generated_rows"] == gen.num_rows + dropped.num_rows > 0
    assert counts["aligned_rows"] == aligned.num_rows
    # The rows are text: at least 80% of what the packaged model wrote passes every per-row check, and the
    # report shows generated rows themselves (the JSON-format output of the previous release kept ~10%).
    ge = io.read_parts(loc.join("generated_embeddings"))
    assert counts["kept_rows"] == sum(r is None for r in ge.column("drop_reason").to_pylist())
    assert gen.num_rows >= 0.8 * counts["generated_rows"], (counts, dropped.to_pylist()[:10])
    assert set(dropped.column("drop_reason").to_pylist() if dropped.num_rows else []) <= set(quality.CHECK_REASONS)
    q = manifest["quality"]["sets"]
    assert {"all generated", "kept", "aligned draw", "real ceiling"} <= set(q)
    assert 0.0 <= q["kept"]["two_sample_auc"] <= 1.0 and 0.0 < q["kept"]["mauve"] <= 1.0
    # The label check drops exactly the rows whose label its classifier (fit on input rows outside the scoring
    # reference) gives a probability under label_min_probability: rebuilt here from the run's folders. (That the
    # reference's classifier then agrees more with the kept rows is a tendency, not a rule, on a dozen rows.)
    demos = set(pc.list_flatten(ge.column("demo_row_ids")).to_pylist())
    classifier = score._label_classifier(cfg, FolderRows.of(loc.join("embeddings").url, cfg.storage, "embeddings"),
                                         demos)
    probability = quality.label_probability(classifier, io.embeddings_from_arrow(ge.column(io.EMBEDDING)),
                                            ge.column("label").to_pylist())
    for reason, p in zip(ge.column("drop_reason").to_pylist(), probability):
        assert reason != "label_mismatch" or p < cfg.quality.label_min_probability
        assert reason is not None or p >= cfg.quality.label_min_probability
    assert ge.column("drop_reason").to_pylist().count("label_mismatch") == \
        io.read_manifest(loc.join("generated_embeddings"))["failed_checks"].get("label_mismatch", 0)
    labels = set(io.read_parts(loc.join("embeddings")).column("label").to_pylist())
    assert set(gen.column("label").to_pylist()) <= labels and set(aligned.column("label").to_pylist()) <= labels
    # weight = probability of drawing that synthetic row: one value per row, and over all rows they sum to 1.
    by_row = dict(zip(aligned.column("generated_id").to_pylist(), aligned.column("weight").to_pylist()))
    kept_ids = {i for i, r in zip(ge.column("row_id").to_pylist(), ge.column("drop_reason").to_pylist()) if r is None}
    assert set(by_row) <= kept_ids, "the alignment draws only rows that passed every check"
    assert all(w > 0 for w in by_row.values()) and sum(by_row.values()) <= 1 + 1e-9
    assert manifest["report"].endswith("report/index.html")
    page = loc.fs.cat(loc.join("report", "index.html").path).decode()
    assert page.count("data:image/png;base64,") >= 4 and "src='http" not in page
    assert sum(html.escape(t[:300]) in page for t in gen.column("text").to_pylist()) >= 2, "generated rows shown"
    assert "two-sample AUC" in page
    text = _all_text(loc)
    assert "runsecret9" not in text and "AKIDRUNTEST0001" not in text
    _open_with_parquet_readers(loc, manifest)
    # A second invocation finds the run complete and regenerates nothing.
    ledgers = loc.fs.find(loc.join("generated", LEDGER_DIR).path)
    again = run_stage(cfg, pool=generator_pool)
    assert again["counts"] == counts and loc.fs.find(loc.join("generated", LEDGER_DIR).path) == ledgers
    # Losing the last stages: the rerun reuses generation and reproduces alignment exactly (same seed).
    loc.fs.rm(loc.join(io.MANIFEST).path)
    loc.fs.rm(loc.join("aligned").path, recursive=True)
    third = run_stage(cfg, pool=generator_pool)
    assert loc.fs.find(loc.join("generated", LEDGER_DIR).path) == ledgers
    assert io.read_parts(loc.join("aligned")).equals(aligned)
    assert third["counts"] == counts
    if not out.startswith("s3://"):
        _evaluate(out)


def _open_with_parquet_readers(loc: io.Location, manifest: dict) -> None:
    """Every data folder of the run opens as written with pyarrow's dataset and read_table and with Ray Data, and
    holds exactly the rows its manifest lists (metadata files start with `_`, and readers skip them)."""
    import pyarrow.dataset as pds
    import pyarrow.parquet as pq
    import ray

    fs = loc.pyarrow_fs()
    for name in ("embeddings", "generated", "generated_dropped", "generated_embeddings", "aligned"):
        folder = loc.join(name)
        expected = io.read_parts(folder)
        assert pds.dataset(folder.path, filesystem=fs, format="parquet").to_table().num_rows == expected.num_rows
        table = pq.read_table(folder.path, filesystem=fs)
        assert table.num_rows == expected.num_rows and set(table.column_names) == set(expected.column_names), name
        assert ray.data.read_parquet(folder.path, filesystem=fs).count() == expected.num_rows, name
    assert manifest["report"].endswith("index.html")  # report/ is HTML beside the data folders, not a dataset


def _evaluate(run_dir: str) -> None:
    """The downstream check on the finished run, scored on SST-2 dev rows (held out of the run): every loss with
    logistic regression, and the fine-tuning path (GPU clusters) exercised on CPU with the packaged MiniLM as the
    transformer."""
    import pyarrow.parquet as pq

    from synalign_ray import evaluate
    from synalign_ray.models import resolve_embedding_model
    from tests.conftest import sample_rows

    test = Path(run_dir).parent / "test.parquet"
    pq.write_table(sample_rows("sst2_dev.parquet", 300), test)
    for loss in ("ce", "imp", "dimp"):
        res = evaluate(run_dir, test, loss=loss)["results"]
        assert list(res) == ["real only", "real + random", "real + aligned"]
        assert res["real only"]["synthetic_rows"] == 0 and res["real + aligned"]["synthetic_rows"] > 0
        # 600 real SST-2 rows already separate the labels far better than chance.
        assert all(0.6 < r["accuracy"] <= 1.0 and 0.0 < r["macro_f1"] <= 1.0 for r in res.values())
    tuned = evaluate(run_dir, test, loss="dimp", classifier="finetune", model=resolve_embedding_model(
        "all-MiniLM-L6-v2"), epochs=1, batch_size=16, max_train_rows=48)["results"]
    assert all(r["train_rows"] == 48 and 0.0 <= r["accuracy"] <= 1.0 for r in tuned.values())


def test_changed_config_against_an_old_run_dir_is_refused(tmp_path):
    from synalign_ray.errors import InputError

    cfg = load_config(DEFAULT_RUN_CONFIG, [*SMALL_RUN, f"output.path={tmp_path / 'run'}"])
    run_dir = io.resolve(cfg.output.path)
    from synalign_ray.run_folder import SETTINGS, settings_for
    from synalign_ray.stages.run import SECTIONS

    io.write_manifest(run_dir, settings_for(cfg, SECTIONS), name=SETTINGS)
    changed = load_config(DEFAULT_RUN_CONFIG, [*SMALL_RUN, f"output.path={tmp_path / 'run'}", "selection.k=3"])
    with pytest.raises(InputError, match="different settings \\(changed: selection.k\\)"):
        run_stage(changed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_nodes(ray_bin: str, port: int, env: dict) -> int:
    """Alive nodes of the cluster at 127.0.0.1:port as `ray status` lists them (0 while it is not up)."""
    out = subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True, text=True)
    return sum(1 for line in out.stdout.splitlines() if line.strip().startswith("1 node_")) if out.returncode == 0 \
        else 0


@pytest.mark.vllm  # the job runs its own engines in the cluster's workers
@pytest.mark.ray
def test_ray_job_entry_point_on_a_two_node_cluster_with_s3_output(tmp_path, s3_bucket):
    """A local two-node cluster (`ray start --head`, then `ray start --address` with its own CPUs and its own model
    cache): the job entry point joins it; generators, selection shards and alignment shards spread over both
    nodes; each node converts the model into its own cache; the run lands on moto S3 and names no secret."""
    storage, bucket = s3_bucket
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    # A token file left in ~/.ray switches `ray start` to token auth that the client then lacks: this test
    # cluster runs without auth, as a fresh laptop's would.
    env = {k: v for k, v in os.environ.items() if k != "SYNALIGN_CACHE_DIR"}
    env.update({"HF_HUB_OFFLINE": "1", "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "disabled"})
    # A short temp dir: Ray's Unix socket paths must stay under the 107-character limit.
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    caches = {name: tmp_path / f"cache_{name}" for name in ("head", "worker")}
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}",
              "--disable-usage-stats"]
    commands = {"head": [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                "worker": [ray_bin, "start", f"--address=127.0.0.1:{port}", *common]}
    nodes: dict[str, subprocess.Popen] = {}
    try:
        for name in ("head", "worker"):
            # --block in its own process group: stopping it stops this node only (`ray stop` would stop every Ray
            # on the machine, the test session's own included). The node's workers inherit its model cache.
            nodes[name] = subprocess.Popen(commands[name], env={**env, "SYNALIGN_CACHE_DIR": str(caches[name])},
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
            want, deadline = len(nodes), time.monotonic() + 120
            while _ray_nodes(ray_bin, port, env) < want and time.monotonic() < deadline:
                time.sleep(2)
            assert _ray_nodes(ray_bin, port, env) == want, f"ray start ({name}) did not come up"
        out = f"s3://{bucket}/cluster/run"
        secrets = ["storage.access_key_id=AKIDCLUSTER0002", "storage.secret_access_key=clustersecret7"]
        job = subprocess.run(
            [sys.executable, "jobs/synalign_job.py", "--config", "jobs/configs/local.yaml", *SMALL_RUN,
             "selection.max_groups=4", "data.sample_rows=300", f"output.path={out}",
             f"storage.endpoint_url={storage.endpoint_url}", "storage.region=us-east-1", *secrets,
             "generation.num_generators=2", "alignment.num_shards=2", "selection.num_shards=2",
             "selection.num_cpus_per_shard=0.25", "selection.engine=partitioned", "selection.partition_rows=40"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
        assert job.returncode == 0, job.stderr[-3000:]
        assert "connected to cluster Ray" in job.stdout
        cfg = load_config(DEFAULT_RUN_CONFIG, [f"storage.endpoint_url={storage.endpoint_url}",
                                               "storage.region=us-east-1", *secrets])
        loc = io.resolve(out, cfg.storage)
        manifest = io.read_manifest(loc)
        assert manifest["kind"] == "run" and manifest["counts"]["groups"] == 4
        c = manifest["counts"]  # the log's closing line counts what the manifest counts
        assert (f"{c['generated_rows']} generated -> {c['kept_rows']} kept -> {c['aligned_rows']} aligned rows"
                in job.stdout + job.stderr), job.stderr[-2000:]
        assert np.isfinite(manifest["metrics"]["aligned"]["mmd2_rbf"])
        generated, aligned = io.read_manifest(loc.join("generated")), io.read_manifest(loc.join("aligned"))
        assert len(set(generated["pool"]["nodes"])) == 2, generated["pool"]
        assert len(set(aligned["shard_nodes"])) == 2, aligned["shard_nodes"]
        assert io.read_parts(loc.join("aligned")).num_rows == aligned["counts"]["rows"] > 0
        for name, cache in caches.items():
            assert list(cache.rglob("*.safetensors")), f"the {name} node's generator converted no model into {cache}"
        for secret in ("AKIDCLUSTER0002", "clustersecret7"):
            assert secret not in job.stdout + job.stderr and secret not in _all_text(loc)
    finally:
        for proc in reversed(list(nodes.values())):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
