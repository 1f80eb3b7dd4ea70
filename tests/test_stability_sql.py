"""PSI and CSI as sql/monitoring/stability.sql computes them, against hand computations and an
independent numpy implementation of the documented binning."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pytest

PARAMS = {"floor": 1e-4, "watch": 0.1, "act": 0.25, "outage": 0.3, "outage_variables": [],
          "month": "2024-07-01",
          "model_version": "m-2024-01"}


def stability(transform, reference: dict, actual: dict, numeric, categorical=()):
    rows = transform("monitoring/stability", {"reference_rows": pa.table(reference),
                                              "actual_rows": pa.table(actual)},
                     {**PARAMS, "numeric": list(numeric), "categorical": list(categorical)})
    return {row["variable"]: row for row in rows}


def independent_psi(reference, actual, floor=1e-4) -> float:
    """The documented method, written separately: deciles of the reference, right-closed bins,
    a NULL bin, floored proportions."""
    ref = np.asarray(reference, dtype=float)
    act = np.asarray(actual, dtype=float)
    present = ref[~np.isnan(ref)]
    edges = np.unique(np.quantile(present, np.arange(1, 10) / 10)) if len(present) else []

    def proportions(values):
        bins = np.where(np.isnan(values), -1, np.searchsorted(edges, values, side="left"))
        labels = sorted(set(np.unique(np.r_[bins_ref, bins_act])))
        return {b: max((bins == b).mean(), floor) for b in labels}

    bins_ref = np.where(np.isnan(ref), -1, np.searchsorted(edges, ref, side="left"))
    bins_act = np.where(np.isnan(act), -1, np.searchsorted(edges, act, side="left"))
    expected, observed = proportions(ref), proportions(act)
    return sum((observed[b] - expected[b]) * math.log(observed[b] / expected[b])
               for b in expected)


def test_identical_distributions_are_stable(transform):
    values = list(range(100))
    result = stability(transform, {"x": values}, {"x": values}, ["x"])["x"]
    assert result["psi"] == pytest.approx(0.0, abs=1e-12)
    assert result["band"] == "stable" and result["bins"] == 10



def test_categorical_psi_by_hand(transform):
    # expected: a 50%, b 50%; actual: a 80%, b 20%
    result = stability(transform, {"c": ["a"] * 5 + ["b"] * 5}, {"c": ["a"] * 8 + ["b"] * 2},
                       [], ["c"])["c"]
    by_hand = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert result["psi"] == pytest.approx(by_hand, abs=1e-12)
    assert result["band"] == "act" and result["kind"] == "categorical"


def test_an_empty_bin_is_floored_not_infinite(transform):
    # a category the reference never had: expected share 0, floored at 1e-4
    result = stability(transform, {"c": ["a"] * 10}, {"c": ["a"] * 9 + ["new"]}, [], ["c"])["c"]
    by_hand = (0.9 - 1.0) * math.log(0.9 / 1.0) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert result["psi"] == pytest.approx(by_hand, abs=1e-12)
    assert result["bins"] == 2


def test_nulls_are_their_own_bin(transform):
    reference = {"c": ["a"] * 8 + [None] * 2, "x": [1.0] * 8 + [None] * 2}
    actual = {"c": ["a"] * 5 + [None] * 5, "x": [1.0] * 5 + [None] * 5}
    rows = stability(transform, reference, actual, ["x"], ["c"])
    by_hand = (0.5 - 0.8) * math.log(0.5 / 0.8) + (0.5 - 0.2) * math.log(0.5 / 0.2)
    assert rows["c"]["psi"] == pytest.approx(by_hand, abs=1e-12)
    assert rows["x"]["psi"] == pytest.approx(by_hand, abs=1e-12)


def test_numeric_edges_are_reference_deciles_with_duplicates_dropped(transform):
    reference = {"x": [0.0] * 50 + list(range(1, 51))}
    rows = stability(transform, reference, {"x": [0.0] * 10}, ["x"])
    edges = rows["x"]["bin_edges"]
    assert edges == sorted(set(edges)) and edges[0] == 0.0
    assert len(edges) < 9  # the deciles 0.1 .. 0.4 are all 0: one edge


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numeric_psi_equals_an_independent_computation(transform, seed):
    rng = np.random.default_rng(seed)
    reference = np.round(rng.normal(100, 20, 2000), 1)
    actual = np.round(rng.normal(110, 25, 700), 1)
    reference[rng.random(2000) < 0.05] = np.nan
    actual[rng.random(700) < 0.1] = np.nan
    as_nulls = {"x": pa.array(reference, from_pandas=True)}  # NaN -> NULL, as in the lake
    rows = stability(transform, as_nulls, {"x": pa.array(actual, from_pandas=True)}, ["x"])
    assert rows["x"]["psi"] == pytest.approx(independent_psi(reference, actual), abs=1e-9)


@pytest.mark.parametrize("shift,band", [(0.0, "stable"), (0.35, "watch"), (1.0, "act")])
def test_bands(transform, shift, band):
    rng = np.random.default_rng(5)
    reference = rng.normal(0, 1, 20000)
    actual = rng.normal(shift, 1, 20000)
    rows = stability(transform, {"x": reference}, {"x": actual}, ["x"])
    assert rows["x"]["band"] == band


def test_missing_shares_are_reported_on_their_own(transform):
    reference = {"x": [1.0] * 8 + [None] * 2, "c": ["a"] * 10}
    actual = {"x": [2.0] * 6 + [None] * 4, "c": ["a"] * 9 + [None]}
    rows = stability(transform, reference, actual, ["x"], ["c"])
    assert (rows["x"]["reference_missing_share"], rows["x"]["actual_missing_share"]) == (0.2, 0.4)
    assert (rows["c"]["reference_missing_share"], rows["c"]["actual_missing_share"]) == (0.0, 0.1)
    assert rows["x"]["band"] == "act"  # 20 points more missing: below the 30-point outage rule


@pytest.mark.parametrize("actual_missing,band", [(0.57, "act"), (0.59, "outage"), (1.0, "outage")])
def test_a_feature_missing_far_more_often_than_in_the_reference_is_an_outage(
        transform, actual_missing, band):
    present = round(100 * (1 - actual_missing))
    reference = {"x": [float(v) for v in range(72)] + [None] * 28}
    actual = {"x": [float(v) for v in range(present)] + [None] * (100 - present)}
    rows = stability(transform, reference, actual, ["x"])
    assert rows["x"]["actual_missing_share"] == pytest.approx(actual_missing)
    assert rows["x"]["band"] == band


def test_the_features_of_a_failing_source_are_an_outage_even_without_nulls(transform):
    # a count feature of a stopped feed is 0, not NULL
    rows = transform("monitoring/stability", {
        "reference_rows": pa.table({"clickstream_months": [3] * 7 + [0] * 3, "age": [30] * 10}),
        "actual_rows": pa.table({"clickstream_months": [0] * 10, "age": [30] * 10})},
        {**PARAMS, "numeric": ["clickstream_months", "age"], "categorical": [],
         "outage_variables": ["clickstream_months"]})
    bands = {row["variable"]: row["band"] for row in rows}
    assert bands == {"clickstream_months": "outage", "age": "stable"}


@pytest.mark.parametrize("reference,actual", [
    ([None] * 10, [1.0] * 10),            # no value in the reference
    ([1.0] * 10, [None] * 10),            # no value in the month
    ([5.0] * 10, [5.0] * 10),             # constant on both sides
    ([5.0] * 10, [7.0] * 3),              # single-valued, a handful of loans
    ([1.0, 2.0, 3.0], [2.0]),             # one loan
])
def test_degenerate_columns_give_a_finite_psi(transform, reference, actual):
    rows = stability(transform, {"x": pa.array(reference, pa.float64())},
                     {"x": pa.array(actual, pa.float64())}, ["x"])
    assert math.isfinite(rows["x"]["psi"])
    assert rows["x"]["band"] in ("stable", "watch", "act", "outage")


def test_psi_does_not_depend_on_the_order_rows_arrive_in(transform):
    """PSI is a floating-point sum over bins, and such a sum depends on the order it adds in
    (the scan's order on the threads): it adds the bins in bin order."""
    reference = {"a": 30, "b": 25, "c": 20, "d": 15, "e": 10}
    actual = {"a": 10, "b": 35, "c": 5, "d": 30, "e": 20}
    values = set()
    for order in itertools.permutations(reference):
        rows = stability(transform, {"c": [c for c in order for _ in range(reference[c])]},
                         {"c": [c for c in order for _ in range(actual[c])]}, [], ["c"])
        values.add(rows["c"]["psi"])
    assert len(values) == 1
