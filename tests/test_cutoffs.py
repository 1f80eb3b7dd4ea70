"""The cut-off strategy on hand-made reference scores, against a brute-force search over every
cut-off (pandas) and DuckDB's ntile for the score bands; reason codes from contributions."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from ml_assets.cutoffs import Reference
from ml_assets.model_config import load_model_config
from ml_assets.reasons import reason_codes


def reference_loans(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = np.round(rng.beta(2, 5, n), 2)  # rounded: many ties
    label = (rng.random(n) < score).astype(int)
    return pd.DataFrame({"loan_id": [f"L{i:04d}" for i in range(n)], "score": score,
                         "label": label})


def brute_force(loans: pd.DataFrame) -> pd.DataFrame:
    """Every cut-off that approves a different set (each distinct score, and 1.0): its approval
    rate and the default rate of the approved."""
    rows = []
    for cutoff in [*sorted(loans["score"].unique()), 1.0]:
        approved = loans[loans["score"] < cutoff]
        rows.append({"cutoff": cutoff, "approval": len(approved) / len(loans),
                     "bad": approved["label"].mean() if len(approved) else None})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("target", [0.0, 0.05, 0.5, 0.731, 1.0])
def test_approval_rate_mode_approves_at_most_the_target(target):
    loans = reference_loans(400, 1)
    chosen = Reference(loans["score"], loans["label"]).choose("approval_rate", target)
    options = brute_force(loans)
    expected = options[options["approval"] <= target + 1e-12]["cutoff"].max()
    assert chosen.cutoff == pytest.approx(expected)
    assert chosen.approval_rate == pytest.approx((loans["score"] < expected).mean())


@pytest.mark.parametrize("target", [0.0, 0.1, 0.2, 0.5])
def test_bad_rate_mode_is_the_highest_cutoff_within_the_target(target):
    loans = reference_loans(400, 2)
    chosen = Reference(loans["score"], loans["label"]).choose("bad_rate", target)
    options = brute_force(loans)
    within = options[options["bad"].isna() | (options["bad"] <= target + 1e-12)]
    assert chosen.cutoff == pytest.approx(within["cutoff"].max())
    if chosen.expected_bad_rate is not None:
        assert chosen.expected_bad_rate <= target + 1e-12


def test_pd_mode_is_the_configured_pd():
    loans = reference_loans(100, 3)
    chosen = Reference(loans["score"], loans["label"]).choose("pd", 0.3)
    approved = loans[loans["score"] < 0.3]
    assert chosen.cutoff == 0.3
    assert chosen.approval_rate == pytest.approx(len(approved) / 100)
    assert chosen.expected_bad_rate == pytest.approx(approved["label"].mean())
    assert chosen.mean_pd == pytest.approx(approved["score"].mean())


def test_bands_equal_ntile_in_sql():
    loans = reference_loans(203, 4)
    bands = Reference(loans["score"], loans["label"]).bands(20)
    with duckdb.connect() as con:
        con.register("loans", loans)
        expected = con.execute("""
            WITH banded AS (SELECT *, ntile(20) OVER (ORDER BY score, loan_id) AS band
                            FROM loans),
            per_band AS (SELECT band, count(*) AS loans, min(score) AS min_score,
                                max(score) AS max_score, avg(label) AS band_default_rate
                         FROM banded GROUP BY band),
            cut AS (SELECT *, coalesce(lead(min_score) OVER (ORDER BY band), 1.0) AS cutoff_pd
                    FROM per_band)
            SELECT cut.*,
                   (SELECT count(*) FILTER (WHERE score < cut.cutoff_pd) / count(*)
                    FROM loans) AS approval_rate,
                   (SELECT avg(label) FILTER (WHERE score < cut.cutoff_pd)
                    FROM loans) AS expected_bad_rate
            FROM cut ORDER BY band""").df()
    got = pd.DataFrame(bands)
    for column in expected.columns:
        assert np.allclose(got[column].astype(float), expected[column].astype(float),
                           equal_nan=True), column
    assert got["approval_rate"].is_monotonic_increasing
    assert got["approval_rate"].iloc[-1] == 1.0


def test_fewer_loans_than_bands_gives_a_band_per_loan():
    bands = Reference([0.2, 0.1, 0.3], [0, 0, 1]).bands(20)
    assert [b["loans"] for b in bands] == [1, 1, 1]
    assert [b["cutoff_pd"] for b in bands] == [0.2, 0.3, 1.0]
    assert bands[1]["approval_rate"] == pytest.approx(2 / 3)


def test_reasons_are_the_features_raising_the_pd_most():
    names = ["age", "income", "debt", "mix"]
    contributions = np.array([
        [0.1, -0.5, 0.9, 0.3],     # three raise the PD: debt, mix, age
        [-0.1, -0.5, 0.2, -0.3],   # one raises it
        [-0.1, -0.5, -0.2, -0.3],  # none raises it, approved: no reason
        [-0.1, -0.5, -0.2, -0.3],  # none raises it, declined: the least lowering one
        [0.2, 0.2, 0.0, 0.0],      # a tie keeps the feature order; zero is no reason
    ])
    declined = np.array([True, False, False, True, False])
    first, second, third = reason_codes(contributions, names, declined)
    assert first.tolist() == ["debt", "debt", None, "age", "age"]
    assert second.tolist() == ["mix", None, None, None, "income"]
    assert third.tolist() == ["age", None, None, None, None]


def test_every_configured_feature_has_a_description():
    config = load_model_config()
    for pattern in config.models[0].features.names:
        name = pattern.replace("*", "1")
        assert config.describe(name) != name, name
    assert config.describe("fe_3_mean") == "Online behaviour signal fe_3_mean (recent average)"
    assert config.describe("unknown_feature") == "unknown_feature"
