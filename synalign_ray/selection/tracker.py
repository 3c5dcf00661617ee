"""The selection tracker: owns the embeddings and GP state and hands out demonstration groups (Algorithm 1, step 1).

A plain class; the driver wraps it with `ray.remote` to make it the central actor. Checkpoints list the issued groups.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from synalign_ray.config import SelectionConfig
from synalign_ray.errors import ConfigError, InputError
from synalign_ray.selection.gp import IncrementalGP, median_pairwise_distance

# tau: auto = AUTO_TAU_FACTOR × median pairwise distance of AUTO_TAU_SAMPLE seeded rows (see jobs/measure_coverage.py).
AUTO_TAU_FACTOR = 0.5
AUTO_TAU_SAMPLE = 2_000
CHECKPOINT_VERSION = 1


def auto_tau(unit_embeddings: np.ndarray, seed: int) -> float:
    """The `tau: auto` rule: half the median pairwise distance between L2-normalised embeddings."""
    return AUTO_TAU_FACTOR * median_pairwise_distance(unit_embeddings, AUTO_TAU_SAMPLE, seed)


def plan_quotas(label_counts: dict[Any, int], max_groups: int, budget: str, k: int) -> dict[Any, int]:
    """Groups per label: equal shares (average) or shares ∝ label frequency (proportional, largest remainder).

    Leftover groups go to labels in sorted order (largest remainder first for proportional). Each quota is then
    clamped to n_label // (k + 1), the most disjoint groups a label can give: a documented clamp, not an error.
    """
    labels = list(label_counts)
    if budget == "average":
        shares = np.full(len(labels), max_groups / len(labels))
    else:
        counts = np.array([label_counts[l] for l in labels], dtype=np.float64)
        shares = max_groups * counts / counts.sum()
    quotas = np.floor(shares).astype(np.int64)
    # stable sort on -remainder: ties keep the sorted label order
    for i in np.argsort(-(shares - quotas), kind="stable")[: max_groups - int(quotas.sum())]:
        quotas[i] += 1
    return {l: int(min(q, label_counts[l] // (k + 1))) for l, q in zip(labels, quotas)}


def _validate(embeddings: np.ndarray, labels: list[str] | None, row_ids: np.ndarray, cfg: SelectionConfig) -> None:
    if not isinstance(cfg, SelectionConfig):
        raise ConfigError(f"selection config must be a SelectionConfig, got {type(cfg).__name__}")
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2 or embeddings.shape[0] == 0:
        shape = getattr(embeddings, "shape", None)
        raise InputError(f"embeddings must be a non-empty 2-D array (rows × dim), got shape {shape}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise InputError(f"embeddings must be floating point, got dtype {embeddings.dtype}")
    n = embeddings.shape[0]
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        raise InputError(f"embeddings hold NaN or infinite values (first at row {int(np.argmin(finite))})")
    norms = np.linalg.norm(embeddings, axis=1)
    if (norms == 0).any():
        raise InputError(f"embedding of row {int(np.argmax(norms == 0))} is all zeros: it has no direction")
    if len(row_ids) != n:
        raise InputError(f"row_ids has {len(row_ids)} entries for {n} embeddings")
    if len(np.unique(np.asarray(row_ids))) != n:
        raise InputError("row_ids are not unique")
    groups_need = cfg.k + 1
    if labels is None:
        if n < groups_need:
            raise InputError(f"{n} rows cannot form one group of selection.k+1 = {groups_need} rows")
        return
    if len(labels) != n:
        raise InputError(f"labels has {len(labels)} entries for {n} embeddings")
    for i, label in enumerate(labels):
        if label is None or str(label).strip() == "":
            raise InputError(f"empty label at row {i}")
    values, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    for label, count in zip(values, counts):
        if count < groups_need:
            raise InputError(f"label {str(label)!r} has {count} rows; selection.k={cfg.k} needs at least {groups_need}")


def _fingerprint(unit_embeddings: np.ndarray, labels: list[str] | None, row_ids: np.ndarray,
                 cfg: SelectionConfig) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(unit_embeddings).tobytes())
    digest.update(json.dumps(labels).encode())
    digest.update(json.dumps(np.asarray(row_ids).tolist()).encode())
    digest.update(cfg.model_dump_json().encode())
    return digest.hexdigest()


class SelectionTracker:
    """Issues demonstration groups in the order the GP uncertainty dictates; identical for identical inputs.

    Each step takes the label whose turn it is (the active label with the smallest issued/quota ratio, ties in
    sorted label order), its not-yet-issued row of largest posterior variance (exact ties broken by a seeded
    permutation) and that row's k most cosine-similar not-yet-issued rows of the same label. Groups are disjoint:
    no row is observed twice, and an issued row is never an anchor again. A label stops when its quota is spent
    or its largest variance falls below `threshold`.
    """

    def __init__(self, embeddings: np.ndarray, labels: list[str] | None, row_ids: np.ndarray,
                 cfg: SelectionConfig, checkpoint: dict | None = None):
        _validate(embeddings, labels, row_ids, cfg)
        self.cfg = cfg
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self._unit = np.ascontiguousarray(embeddings / norms, dtype=np.float32)
        self._labels = None if labels is None else [str(l) for l in labels]
        self._row_ids = np.asarray(row_ids)
        self._fingerprint = _fingerprint(self._unit, self._labels, self._row_ids, cfg)
        if checkpoint is not None:
            self._check_checkpoint(checkpoint)
        self.tau = auto_tau(self._unit, cfg.seed) if cfg.tau == "auto" else float(cfg.tau)
        n = self._unit.shape[0]
        self._rank = np.random.default_rng(cfg.seed).permutation(n)
        self._available = np.ones(n, dtype=bool)
        if self._labels is None:
            self._label_rows = {None: np.arange(n)}
        else:
            label_arr = np.asarray(self._labels)
            self._label_rows = {l: np.flatnonzero(label_arr == l) for l in sorted(set(self._labels))}
        # Each label's unit embeddings, contiguous, so a group's kNN is one matvec without gathering rows each step.
        self._label_unit = {l: self._unit if len(rows) == n else self._unit[rows]
                            for l, rows in self._label_rows.items()}
        counts = {l: len(rows) for l, rows in self._label_rows.items()}
        self._quota = plan_quotas(counts, cfg.max_groups, cfg.budget, cfg.k)
        planned_rows = sum(self._quota.values()) * (cfg.k + 1)
        self._gp = IncrementalGP(self._unit, cfg.kernel, self.tau, cfg.noise, capacity=planned_rows)
        self._issued_per_label = {l: 0 for l in self._label_rows}
        self._active = [l for l in self._label_rows if self._quota[l] > 0]
        self._issued: list[np.ndarray] = []
        self._variances: list[float] = []
        if checkpoint is not None:
            self._replay(checkpoint["groups"])

    def _check_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("version") != CHECKPOINT_VERSION or "groups" not in checkpoint:
            raise InputError("selection checkpoint is not a version-1 tracker checkpoint")
        if checkpoint.get("fingerprint") != self._fingerprint:
            raise InputError("selection checkpoint was written for other embeddings, labels, row ids or config")

    def _replay(self, groups: list[list[int]]) -> None:
        # Re-running the same float operations in the same order restores the state bit for bit.
        for i, expected in enumerate(groups):
            record = self._select_next()
            if record is None or list(self._issued[-1]) != list(expected):
                raise InputError(f"selection checkpoint diverges from these inputs at group {i}")

    def _label_top(self, label) -> tuple[float, np.ndarray] | None:
        """(largest variance, the rows that have it) among the label's not-yet-issued rows, or None once its quota
        is spent or that variance is below threshold."""
        if self._issued_per_label[label] >= self._quota[label]:
            return None
        rows = self._label_rows[label]
        best, tops = self._gp.top_variance(rows[self._available[rows]])
        if best < self.cfg.threshold:
            return None
        return best, tops

    def _next_label(self):
        while self._active:
            label = min(self._active, key=lambda l: self._issued_per_label[l] / self._quota[l])
            top = self._label_top(label)
            if top is None:
                self._active.remove(label)
                continue
            return label, top
        return None

    def _select_next(self) -> dict | None:
        turn = self._next_label()
        if turn is None:
            return None
        label, (variance_at_selection, tops) = turn
        anchor = int(tops[np.argmin(self._rank[tops])])
        neighbours = self._neighbours(label, anchor)
        group = np.concatenate([[anchor], neighbours]).astype(np.int64)
        self._gp.add(group)
        self._available[group] = False
        self._issued_per_label[label] += 1
        self._issued.append(group)
        self._variances.append(variance_at_selection)
        return self._record(len(self._issued) - 1, label)

    def _neighbours(self, label, anchor: int) -> np.ndarray:
        """The k not-yet-issued rows of `label` most cosine-similar to `anchor`, ties in row order."""
        rows = self._label_rows[label]
        similarity = self._label_unit[label] @ self._unit[anchor]
        similarity[~self._available[rows]] = -np.inf
        similarity[np.searchsorted(rows, anchor)] = -np.inf
        # Stable order of the top k without sorting the whole label: everything ≥ the k-th largest value, sorted.
        # The quota clamp leaves ≥ k + 1 available rows per label, so the k chosen are all finite.
        k = self.cfg.k
        top = np.flatnonzero(similarity >= np.partition(similarity, -k)[-k])
        return rows[top[np.argsort(-similarity[top], kind="stable")[:k]]]

    def _record(self, group_id: int, label) -> dict:
        group = self._issued[group_id]
        return {
            "group_id": group_id,
            "label": label,
            "anchor_row_id": self._row_ids[group[0]].item(),
            "demo_row_ids": [x.item() for x in self._row_ids[group]],
            "variance_at_selection": self._variances[group_id],
            "tau": self.tau,
        }

    def next_groups(self, n: int) -> list[dict]:
        """Up to n further groups (fewer, then none, once every label has stopped); each a schedule row dict."""
        if n <= 0:
            raise ConfigError(f"next_groups needs a positive count, got {n}")
        out = []
        for _ in range(n):
            record = self._select_next()
            if record is None:
                break
            out.append(record)
        return out

    def progress(self) -> dict:
        """Groups issued and planned, and the largest variance among rows not yet issued."""
        remaining = self._gp.variance[self._available]
        return {
            "groups_issued": len(self._issued),
            "groups_planned": sum(self._quota.values()),
            "max_variance": float(remaining.max()) if remaining.size else 0.0,
            "done": all(self._label_top(l) is None for l in self._active),
            "tau": self.tau,
        }

    def checkpoint(self) -> dict:
        """JSON-safe state: the issued groups (row positions) and a fingerprint of the inputs they came from."""
        return {
            "version": CHECKPOINT_VERSION,
            "fingerprint": self._fingerprint,
            "groups": [[int(i) for i in g] for g in self._issued],
        }
