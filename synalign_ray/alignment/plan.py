"""What an alignment fit uses, decided and checked before any fitting or writing: the label groups, the seeded
held-out split of the real rows, and the rows drawn per group; every input problem as one clear error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from synalign_ray.alignment.resample import allot, expected_distinct, holdout_counts, holdout_mask
from synalign_ray.config import SynAlignConfig
from synalign_ray.errors import InputError


def _labels(table: pa.Table, column: str | None) -> np.ndarray | None:
    if column is None or column not in table.column_names:
        return None
    return np.asarray(table.column(column).cast(pa.string()).to_pylist(), dtype=object)


def check_inputs(cfg: SynAlignConfig, real: pa.Table, real_emb: np.ndarray, synthetic: pa.Table,
                 syn_emb: np.ndarray) -> "FitPlan":
    """Every input problem as one clear error, before any fitting or writing; returns the fit's plan."""
    for name, table, emb in (("real", real, real_emb), ("synthetic", synthetic, syn_emb)):
        if table.num_rows == 0 or len(emb) == 0:
            raise InputError(f"the {name} set is empty")
        if np.ndim(emb) != 2:
            raise InputError(f"{name} embeddings must be a 2-D matrix, got shape {np.shape(emb)}")
        if len(emb) != table.num_rows:
            raise InputError(f"{name} set has {table.num_rows} rows but {len(emb)} embeddings")
        if not np.isfinite(emb).all():
            bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
            raise InputError(f"{name} embeddings hold NaN or infinite values (first at row {bad})")
        if cfg.data.text_column not in table.column_names:
            raise InputError(f"text column '{cfg.data.text_column}' not found in the {name} set")
    if real_emb.shape[1] != syn_emb.shape[1]:
        raise InputError(f"embedding dimensions differ: real {real_emb.shape[1]}, synthetic {syn_emb.shape[1]} "
                         "(embed both sets with the same model)")
    return check_tables(cfg, real, synthetic)


def check_tables(cfg: SynAlignConfig, real: pa.Table, synthetic: pa.Table) -> "FitPlan":
    """The checks that need only the rows' labels and counts (a folder scan of ids and labels is enough); returns the
    fit's plan."""
    a = cfg.alignment
    for name, table in (("real", real), ("synthetic", synthetic)):
        if table.num_rows == 0:
            raise InputError(f"the {name} set is empty")
    if a.weighting in ("importance", "both"):
        label = cfg.data.label_column
        for name, table in (("real", real), ("synthetic", synthetic)):
            if label is None or label not in table.column_names:
                raise InputError(f"alignment.weighting={a.weighting} needs labels, but the {name} set has no "
                                 f"label column '{label}'")
    return plan_fit(cfg, real, synthetic)


@dataclass
class FitPlan:
    """Which rows the fit uses: real group codes (-1: a label without synthetic rows), the held-out real rows (of
    labels the draw covers), the rows drawn per group and the shares of the fitted real rows they follow."""

    group_names: list[str]
    missing: list[str]
    real_labels: np.ndarray | None
    syn_labels: np.ndarray | None
    real_groups: np.ndarray
    syn_groups: np.ndarray
    held_out: np.ndarray
    size: int
    shares: np.ndarray
    counts: np.ndarray

    @property
    def fitted(self) -> np.ndarray:
        """Real rows the fit sees."""
        return (self.real_groups >= 0) & ~self.held_out

    @property
    def fit_groups(self) -> np.ndarray:
        """Group codes for the fit: held-out rows get -1, which the shards leave out of every sum."""
        return np.where(self.held_out, -1, self.real_groups)


def plan_fit(cfg: SynAlignConfig, real: pa.Table, synthetic: pa.Table) -> FitPlan:
    """Groups, the seeded held-out split (per real label) and the draw counts; every problem with them (a label
    left without fit rows, too few held-out rows, a diversity target no weights can reach) as one clear error."""
    a = cfg.alignment
    label_col = cfg.data.label_column
    real_labels, syn_labels = _labels(real, label_col), _labels(synthetic, label_col)
    code, group_names, missing = _groups(cfg, real_labels, syn_labels)
    if code is not None:
        real_groups = np.array([code.get(lab, -1) for lab in real_labels], dtype=np.int64)
        syn_groups = np.array([code[lab] for lab in syn_labels], dtype=np.int64)
    else:
        real_groups = np.zeros(real.num_rows, np.int64)
        syn_groups = np.zeros(synthetic.num_rows, np.int64)
    strata = real_labels if real_labels is not None else np.zeros(real.num_rows, np.int64)
    held_out = holdout_mask(strata, a.holdout_fraction, a.seed)
    if a.holdout_fraction > 0:
        names, inverse = np.unique(strata, return_inverse=True)
        sizes = np.bincount(inverse, minlength=len(names))
        for name, n, held in zip(names, sizes, holdout_counts(sizes, a.holdout_fraction)):
            if n - held < 1 and (code is None or name in code):
                raise InputError(f"alignment.holdout_fraction={a.holdout_fraction} holds out all {n} real rows of "
                                 f"label '{name}', leaving none for the fit; lower it or add real rows")
    # Held-out rows of labels without synthetic rows are left out of the fit anyway and of the held-out metrics too.
    held_out &= real_groups >= 0
    if a.holdout_fraction > 0 and held_out.sum() < 2:
        raise InputError(f"alignment.holdout_fraction={a.holdout_fraction} holds out {int(held_out.sum())} of "
                         f"{real.num_rows} real rows; held-out metrics need at least 2 (or set it to 0)")
    fitted = (real_groups >= 0) & ~held_out
    if a.weighting in ("mmd", "both") and fitted.sum() < 2:
        raise InputError("the real set needs at least 2 rows to fit alignment weights (after the held-out split)")
    real_counts = np.bincount(real_groups[fitted], minlength=len(group_names))
    shares = real_counts / real_counts.sum()
    size = a.size if a.size is not None else synthetic.num_rows
    counts = allot(size, shares)
    if a.weighting in ("mmd", "both") and a.entropy == "auto":
        syn_sizes = np.bincount(syn_groups, minlength=len(group_names))
        # Uniform weights draw the most distinct rows in expectation (the expectation is concave and symmetric).
        most = sum(expected_distinct(np.full(n, 1.0 / n), c) for n, c in zip(syn_sizes, counts) if n) / size
        if a.min_distinct is not None and a.min_distinct > most:
            raise InputError(f"alignment.min_distinct={a.min_distinct} cannot be met: even uniform weights draw "
                             f"{most:.1%} distinct rows when {size} rows are drawn from {synthetic.num_rows}; "
                             "lower it, lower alignment.size, or set alignment.entropy")
        if a.min_ess is not None and a.min_ess > synthetic.num_rows:
            raise InputError(f"alignment.min_ess={a.min_ess} cannot be met: the effective sample size is at most "
                             f"the {synthetic.num_rows} synthetic rows")
    return FitPlan(group_names, missing, real_labels, syn_labels, real_groups, syn_groups, held_out, size, shares,
                   counts)


def _groups(cfg: SynAlignConfig, real_labels: np.ndarray | None, syn_labels: np.ndarray | None):
    """Label -> group code when fitting by label (None: one group), the group names, and real labels that no
    synthetic row carries (dropped, so their share goes to the other labels)."""
    if not (cfg.alignment.by_label and real_labels is not None and syn_labels is not None):
        return None, ["all"], []
    names = sorted(set(real_labels.tolist()))
    unknown = sorted(set(syn_labels.tolist()) - set(names))
    if unknown:
        raise InputError(f"synthetic labels {unknown[:5]} do not occur in the real set; fit with "
                         "alignment.by_label=false or fix the labels")
    missing = sorted(set(names) - set(syn_labels.tolist()))
    names = [n for n in names if n not in missing]
    code = {n: i for i, n in enumerate(names)}
    return code, names, missing
