"""Shared by the benchmark and study scripts: the one result-row type with its table printer and JSON writer, real
data files, MiniLM embeddings cached on disk, and a peak-memory sampler that counts Ray worker processes too."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DATA_DIR = Path(os.environ.get("SYNALIGN_DATA_DIR", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("SYNALIGN_BENCH_CACHE", "/tmp/synalign_bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Row:
    """One line of a benchmark or study table: what was measured (`name`) and its figures by column name. The
    headline benchmarks use the columns ours / baseline / ratio / target (see `compared`)."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)


def compared(name: str, ours: float, baseline: float, ratio: float, target: str) -> Row:
    """A headline row: our figure, the baseline measured in the same run, their ratio and the target it meets."""
    return Row(name, {"ours": ours, "baseline": baseline, "ratio": ratio, "target": target})


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.4g}"
    return "-" if x is None else str(x)


def print_rows(rows: Iterable[Row], first: str = "measurement") -> None:
    """The rows as one Markdown table; columns in the order they first appear."""
    rows = list(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r.values))
    print(f"| {first} | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 1))
    for r in rows:
        print(f"| {r.name} | " + " | ".join(_cell(r.values.get(c)) for c in columns) + " |", flush=True)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "load_average": round(os.getloadavg()[0], 2)}


def write_json(path: str | None, rows: Iterable[Row], args: Any = None, **extra: Any) -> None:
    """With a path (each script's --json): the rows, the script's arguments and the machine as one JSON file.
    NaN (no baseline) is written as null, so any JSON reader opens the file."""
    if not path:
        return

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    body = {"script": Path(sys.argv[0]).name, "args": vars(args) if args is not None else None,
            "machine": machine(), "rows": [asdict(r) for r in rows], **extra}
    Path(path).write_text(json.dumps(clean(body), indent=2, default=str) + "\n")


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


# The sampler of PeakRSS, run in a process of its own: reading every process's smaps costs CPU and, in a thread of
# the measured process, its GIL (17% of a selection coordinator's samples under py-spy). It samples until its stdin
# closes, then prints the peak in bytes.
_SAMPLER = """
import select, sys, psutil
pid, interval, driver_only, proportional = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
root, me, peak = psutil.Process(pid), psutil.Process().pid, 0
def total():
    n = 0
    for p in [root, *([] if driver_only else root.children(recursive=True))]:
        if p.pid == me:
            continue
        try:
            n += p.memory_full_info().pss if proportional else p.memory_info().rss
        except Exception:  # a worker exited between listing and reading
            pass
    return n
while True:
    peak = max(peak, total())
    if select.select([sys.stdin], [], [], interval)[0] and not sys.stdin.read(1):
        break
print(max(peak, total()), flush=True)
"""


class PeakRSS:
    """Samples the resident memory of this process and all its descendants (Ray workers included), or with
    `driver_only` of this process alone, from a sampler process of its own. With `proportional` each process counts
    its proportional set size (a page shared by n processes, such as Ray's object store, counts 1/n in each), so
    the sum is the memory in use."""

    def __init__(self, interval: float = 0.2, driver_only: bool = False, proportional: bool = False):
        self.args = [str(os.getpid()), str(interval), "1" if driver_only else "0", "1" if proportional else "0"]
        self.peak = 0

    def __enter__(self) -> "PeakRSS":
        import subprocess

        self._sampler = subprocess.Popen([sys.executable, "-c", _SAMPLER, *self.args], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        self._sampler.stdin.close()
        self.peak = int(self._sampler.stdout.read().strip() or 0)
        self._sampler.wait()
