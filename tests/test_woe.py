"""Weight of evidence and information value on hand-made loans: optbinning's bins recounted in
SQL from their recorded limits, WoE and IV recomputed from those counts with numpy, and the
dirty cases (missing values, a constant feature, an all-missing one, booleans, categories)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from ml_assets.woe import iv_band, woe_bins

BOUNDS = (0.02, 0.1, 0.3, 0.5)


def loans(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.normal(50, 15, n)
    mix = rng.choice(["Good", "Standard", "Bad"], n, p=[0.4, 0.4, 0.2]).astype(object)
    risk = -0.06 * (income - 50) + np.where(mix == "Bad", 1.2, 0.0) - 1
    label = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(int)
    income[rng.random(n) < 0.08] = np.nan
    mix[rng.random(n) < 0.05] = None
    return pd.DataFrame({"loan_id": range(n), "income": income, "mix": mix, "label": label,
                         "flag": rng.random(n) < 0.3, "constant": 1.0, "empty": np.nan})


def independent_woe(counts: pd.DataFrame) -> tuple[np.ndarray, float]:
    """WoE = ln(share of non-defaults / share of defaults) per bin, 0 where either is 0;
    IV = sum of (share of non-defaults - share of defaults) x WoE."""
    bad = counts["defaults"].to_numpy(float)
    good = counts["loans"].to_numpy(float) - bad
    woe = np.array([np.log((g / good.sum()) / (b / bad.sum())) if g and b else 0.0
                    for g, b in zip(good, bad, strict=True)])
    return woe, float(((good / good.sum() - bad / bad.sum()) * woe).sum())


def test_numeric_bins_recount_in_sql_and_give_the_woe_and_iv():
    frame = loans(4000, 1)
    bins = woe_bins(frame["income"], frame["label"].to_numpy(), False, 10, 0.05)
    assert 2 <= len([b for b in bins if b["bin"] != "missing"]) <= 10
    assert bins[-1]["bin"] == "missing"
    with duckdb.connect() as con:
        con.register("loans", frame)
        con.register("bins", pd.DataFrame(bins)[["bin_index", "lower", "upper", "bin"]])
        counts = con.execute("""
            SELECT b.bin_index, count(l.loan_id) AS loans, coalesce(sum(l.label), 0) AS defaults
            FROM bins b LEFT JOIN loans l ON
                CASE WHEN b.bin = 'missing' THEN l.income IS NULL OR isnan(l.income)
                     ELSE (b.lower IS NULL OR l.income >= b.lower)
                          AND (b.upper IS NULL OR l.income < b.upper) END
            GROUP BY ALL ORDER BY b.bin_index""").df()
    assert counts["loans"].tolist() == [b["loans"] for b in bins]
    assert counts["defaults"].tolist() == [b["defaults"] for b in bins]
    assert sum(b["loans"] for b in bins) == len(frame)
    woe, iv = independent_woe(counts)
    assert np.allclose([b["woe"] for b in bins], woe, atol=1e-6)
    assert sum(b["iv_contribution"] for b in bins) == pytest.approx(iv, abs=1e-6)
    assert iv_band(iv, BOUNDS) in ("medium", "strong", "suspicious")  # income drives it
    # low income, more defaults than average: a negative WoE; high income a positive one
    assert bins[0]["woe"] < 0 < bins[-2]["woe"]


def test_categorical_bins_hold_every_level_once():
    frame = loans(4000, 2)
    bins = woe_bins(frame["mix"], frame["label"].to_numpy(), True, 10, 0.05)
    levels = [c for b in bins if b["categories"] for c in b["categories"]]
    assert sorted(levels) == ["Bad", "Good", "Standard"]
    for b in bins:
        chosen = (frame["mix"].isna() if b["bin"] == "missing"
                  else frame["mix"].isin(b["categories"]))
        assert (b["loans"], b["defaults"]) == (chosen.sum(), frame.loc[chosen, "label"].sum())
    woe, iv = independent_woe(pd.DataFrame(bins))
    assert np.allclose([b["woe"] for b in bins], woe, atol=1e-6)
    bad = next(b for b in bins if b["categories"] == ["Bad"])
    assert bad["woe"] < 0  # more defaults than average


@pytest.mark.parametrize("column", ["flag", "constant", "empty"])
def test_dirty_features_bin_without_error(column):
    frame = loans(1000, 3)
    bins = woe_bins(frame[column], frame["label"].to_numpy(), False, 10, 0.05)
    assert sum(b["loans"] for b in bins) == 1000
    iv = sum(b["iv_contribution"] for b in bins)
    if column != "flag":  # one bin: no information
        assert len(bins) == 1 and iv == pytest.approx(0, abs=1e-12)
    assert iv_band(iv, BOUNDS) == "unpredictive"


def test_iv_bands_follow_the_bounds():
    assert [iv_band(v, BOUNDS) for v in (0.0, 0.02, 0.099, 0.1, 0.3, 0.5, 2.0)] == [
        "unpredictive", "weak", "weak", "medium", "strong", "suspicious", "suspicious"]
