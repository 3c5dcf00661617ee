"""Shared by the benchmark and measurement scripts: real data files, MiniLM embeddings cached on disk, and a
peak-memory sampler that counts Ray worker processes too."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA_DIR = Path(os.environ.get("SYNALIGN_DATA_DIR", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("SYNALIGN_BENCH_CACHE", "/tmp/synalign_bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def data_table(name: str) -> pa.Table:
    """A real data file from ../shared/data by stem, e.g. 'sst2_train'."""
    return pq.read_table(DATA_DIR / f"{name}.parquet")


def cached_npy(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load path, or compute and write it via a temporary file + rename (other processes may race for it)."""
    if path.is_file():
        return np.load(path)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, value)
    os.replace(tmp, path)
    return value


def cached_embeddings(name: str) -> tuple[pa.Table, np.ndarray]:
    """(all rows of a data file, their L2-normalised MiniLM embeddings), encoded once into CACHE."""
    table = data_table(name)

    def encode() -> np.ndarray:
        from synalign_ray.models import load_sentence_transformer

        model = load_sentence_transformer("all-MiniLM-L6-v2")
        return model.encode(table.column("text").to_pylist(), batch_size=128, normalize_embeddings=True,
                            convert_to_numpy=True).astype(np.float32)

    emb = cached_npy(CACHE / f"{name}_emb.npy", encode)
    if emb.shape[0] != table.num_rows:
        raise SystemExit(f"{CACHE / (name + '_emb.npy')} has {emb.shape[0]} rows, {name} has {table.num_rows}")
    return table, emb


class PeakRSS:
    """Samples the resident memory of this process and all its descendants (Ray workers included)."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # a worker exited between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total())
