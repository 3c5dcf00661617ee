"""The alignment plan before any work: the seeded, per-label held-out split, draw counts, and every bad target or
split as a clear ConfigError / InputError."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from synalign_ray.alignment.plan import plan_fit
from synalign_ray.alignment.resample import allot
from synalign_ray.config import build_config
from synalign_ray.errors import ConfigError, InputError
from tests.conftest import sample_rows


@pytest.fixture(scope="module")
def tables():
    return sample_rows("sst2_train.parquet", 500, 4), sample_rows("sst2_dev.parquet", 300, 4)


def _cfg(*overrides: str):
    return build_config({}, list(overrides))


def test_holdout_is_seeded_per_label_and_the_fit_never_gets_it(tables):
    real, synthetic = tables
    plan = plan_fit(_cfg("alignment.holdout_fraction=0.2", "alignment.size=300"), real, synthetic)
    labels = np.asarray(real.column("label").to_pylist())
    for name in ("negative", "positive"):
        n = int((labels == name).sum())
        assert plan.held_out[labels == name].sum() == int(np.floor(0.2 * n + 0.5))
    # Held-out rows carry no fit group, so no shard sums them; the draw follows the fitted rows' label shares.
    assert np.all(plan.fit_groups[plan.held_out] == -1)
    assert not np.any(plan.fitted & plan.held_out)
    fitted = np.bincount(plan.fit_groups[plan.fitted], minlength=2)
    np.testing.assert_array_equal(plan.counts, allot(300, fitted / fitted.sum()))
    again = plan_fit(_cfg("alignment.holdout_fraction=0.2"), real, synthetic)
    other = plan_fit(_cfg("alignment.holdout_fraction=0.2", "alignment.seed=1"), real, synthetic)
    np.testing.assert_array_equal(plan.held_out, again.held_out)
    assert not np.array_equal(plan.held_out, other.held_out)
    assert not plan_fit(_cfg("alignment.holdout_fraction=0"), real, synthetic).held_out.any()


@pytest.mark.parametrize("override, message", [
    ("alignment.min_distinct=0", "greater than 0"),
    ("alignment.min_distinct=1.2", "less than or equal to 1"),
    ("alignment.holdout_fraction=1", "less than 1"),
    ("alignment.holdout_fraction=-0.1", "greater than or equal to 0"),
    ("alignment.min_ess=0", "greater than 0"),
    ("alignment.entropy=auto_please", "alignment.entropy"),
])
def test_bad_targets_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(override)


def test_auto_entropy_needs_a_target():
    with pytest.raises(ConfigError, match="entropy=auto needs a target"):
        _cfg("alignment.min_distinct=null")
    assert _cfg("alignment.min_distinct=null", "alignment.entropy=0.01").alignment.entropy == 0.01
    assert _cfg("alignment.min_distinct=null", "alignment.min_ess=100").alignment.min_ess == 100


def test_holdout_that_empties_a_label_is_an_input_error(tables):
    real, synthetic = tables
    # Two negatives among the real rows: holding out 0.8 of them (round half up) leaves none for the fit.
    labels = np.asarray(real.column("label").to_pylist())
    keep = np.flatnonzero(labels == "positive").tolist() + np.flatnonzero(labels == "negative")[:2].tolist()
    small = real.take(pa.array(sorted(keep)))
    with pytest.raises(InputError, match="holds out all 2 real rows of label 'negative'"):
        plan_fit(_cfg("alignment.holdout_fraction=0.8", "alignment.size=100"), small, synthetic)
    assert plan_fit(_cfg("alignment.holdout_fraction=0.2", "alignment.size=100"), small, synthetic).fitted.sum() > 0


def test_too_few_held_out_rows_is_an_input_error(tables):
    real, synthetic = tables
    with pytest.raises(InputError, match="held-out metrics need at least 2"):
        plan_fit(_cfg("alignment.holdout_fraction=0.1", "data.label_column=null"), real.slice(0, 5), synthetic)


def test_unreachable_diversity_targets_are_input_errors(tables):
    real, synthetic = tables
    # 300 rows drawn 3,000 times: uniform weights give at most 300·(1 − (1 − 1/300)^3000)/3000 ≈ 10% distinct
    # (per label, with the counts allotted by the real shares).
    with pytest.raises(InputError, match="min_distinct=0.5 cannot be met: even uniform weights draw 10.0%"):
        plan_fit(_cfg("alignment.size=3000"), real, synthetic)
    with pytest.raises(InputError, match="min_ess=400.0 cannot be met"):
        plan_fit(_cfg("alignment.min_ess=400"), real, synthetic)
    # A fixed λ is the user's choice: the target is reported, not enforced.
    plan_fit(_cfg("alignment.size=3000", "alignment.entropy=0.001"), real, synthetic)
