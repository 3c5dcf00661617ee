"""Shared fixtures: real data samples from ../shared/data, real MiniLM embeddings, local Ray, moto S3 server.

Everything here is a real component; expensive ones are session-scoped so the suite starts each once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SYNALIGN_DATA_DIR", REPO.parent / "shared" / "data"))


def data_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.fail(f"real data file missing: {path} (the tests read ../shared/data beside the repo)")
    return path


def sample_rows(name: str, n: int, seed: int = 0) -> pa.Table:
    """A seeded sample of n rows of a real data file (sorted by original position)."""
    table = pq.read_table(data_file(name))
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(table.num_rows, size=min(n, table.num_rows), replace=False))
    return table.take(pa.array(keep))


_EMBED_CACHE: dict[tuple, tuple[pa.Table, np.ndarray]] = {}


@pytest.fixture(scope="session")
def sentence_model():
    from synalign_ray.models import load_sentence_transformer

    return load_sentence_transformer("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def real_embeddings(request, pytestconfig):
    """real_embeddings(name, n, seed) -> (rows table, L2-normalised float32 MiniLM embeddings), disk-cached;
    the model loads only when a sample is not cached yet."""
    cache_dir = Path(pytestconfig.cache.mkdir("synalign_embeddings"))

    def get(name: str, n: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
        key = (name, n, seed)
        if key not in _EMBED_CACHE:
            rows = sample_rows(name, n, seed)
            f = cache_dir / f"{Path(name).stem}-{n}-{seed}.npy"
            if f.is_file():
                emb = np.load(f)
            else:
                emb = request.getfixturevalue("sentence_model").encode(rows.column("text").to_pylist(), batch_size=128,
                                            normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
                np.save(f, emb)
            _EMBED_CACHE[key] = (rows, emb)
        return _EMBED_CACHE[key]

    return get


# Floats computed in two processes (or under two BLAS thread counts) sum float32 products in another order: the
# schedule's ids must be identical, its variances agree to float32 accuracy.
VARIANCE_ATOL = 1e-6


@pytest.fixture(scope="session")
def same_schedule():
    """same_schedule(a, b): two selection schedules (tables or lists of group dicts) name the same groups, anchors
    and demonstration rows in the same order, with variances and τ within float32 accuracy."""

    def check(a, b) -> None:
        a = a.to_pylist() if isinstance(a, pa.Table) else list(a)
        b = b.to_pylist() if isinstance(b, pa.Table) else list(b)
        ids = ("group_id", "label", "anchor_row_id", "demo_row_ids")
        assert [[r[k] for k in ids] for r in a] == [[r[k] for k in ids] for r in b]
        for key in ("variance_at_selection", "tau"):
            np.testing.assert_allclose([r[key] for r in a], [r[key] for r in b], rtol=0, atol=VARIANCE_ATOL)

    return check


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session, sized for the 2-core CI machine."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1: a real HTTP endpoint. Yields its URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on the moto server, with test credentials in the environment. Yields (storage, bucket)."""
    import uuid

    import boto3

    from synalign_ray.config import StorageConfig

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"synalign-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return StorageConfig(endpoint_url=s3_server, region="us-east-1"), bucket


# Test tiers (markers registered in pyproject.toml), derived from the fixtures a test uses so that a new test is
# tiered without anyone remembering a mark; a test that starts one of these another way carries the mark itself.
_TIER_FIXTURES = {"generator_pool": "vllm", "ray_local": "ray", "s3_server": "s3", "flaky_s3": "s3"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in _TIER_FIXTURES.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)
