"""The label and feature store logic on hand-made loans."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import date

import pyarrow as pa
import pytest

from ml_assets.assets.gold import label_definitions
from ml_assets.settings import LabelDefinition, load_settings

# the configured definitions: the target 30dpd_6mob and the early read 30dpd_3mob
DEFINITIONS = label_definitions(load_settings(environ={}))


def loan_month(loan: str, start: date, snapshot: date, mob: int, dpd: int) -> dict:
    return {"loan_id": loan, "customer_id": loan.split("_")[0], "loan_start_date": start,
            "snapshot_date": snapshot, "mob": mob, "dpd": dpd}


def test_label_is_dpd_at_mob(transform):
    start = date(2023, 1, 1)
    rows = pa.Table.from_pylist([
        loan_month("A_1", start, date(2023, 7, 1), 6, 30),   # exactly 30 days: default
        loan_month("B_1", start, date(2023, 7, 1), 6, 29),   # 29: not
        loan_month("C_1", start, date(2023, 7, 1), 6, 0),
        loan_month("D_1", start, date(2023, 6, 1), 5, 90),   # not at mob 6: no label row
        loan_month("E_1", start, date(2023, 8, 1), 7, 90),
    ])
    labels = {r["loan_id"]: r for r in transform(
        "gold/label_store", {"silver_loan_daily": rows, "label_definitions": DEFINITIONS})}
    assert set(labels) == {"A_1", "B_1", "C_1"}
    assert [labels[k]["label"] for k in ("A_1", "B_1", "C_1")] == [1, 0, 0]
    assert labels["A_1"]["label_def"] == "30dpd_6mob"
    assert labels["A_1"]["snapshot_date"] == date(2023, 7, 1)
    assert labels["A_1"]["application_month"] == date(2023, 1, 1)


def test_label_definition_is_configuration(transform):
    rows = pa.Table.from_pylist([loan_month("A_1", date(2023, 1, 1), date(2023, 4, 1), 3, 61)])
    config = dataclasses.replace(load_settings(environ={}), label=LabelDefinition(60, 4),
                                 early_read=LabelDefinition(60, 3))
    [row] = transform("gold/label_store", {"silver_loan_daily": rows,
                                           "label_definitions": label_definitions(config)})
    assert (row["label"], row["label_def"]) == (1, "60dpd_3mob")


def test_each_definition_labels_the_loan_at_its_own_mob(transform):
    start = date(2023, 1, 1)
    rows = pa.Table.from_pylist([
        loan_month("A_1", start, date(2023, 4, 1), 3, 31),  # delinquent early, cured by mob 6
        loan_month("A_1", start, date(2023, 7, 1), 6, 0),
        loan_month("B_1", start, date(2023, 4, 1), 3, 0),   # clean early, defaulted at mob 6
        loan_month("B_1", start, date(2023, 7, 1), 6, 45),
        loan_month("C_1", start, date(2023, 5, 1), 4, 90),  # no definition at mob 4
    ])
    labels = {(r["loan_id"], r["label_def"]): (r["label"], r["snapshot_date"])
              for r in transform("gold/label_store", {"silver_loan_daily": rows,
                                                      "label_definitions": DEFINITIONS})}
    assert labels == {("A_1", "30dpd_3mob"): (1, date(2023, 4, 1)),
                      ("A_1", "30dpd_6mob"): (0, date(2023, 7, 1)),
                      ("B_1", "30dpd_3mob"): (0, date(2023, 4, 1)),
                      ("B_1", "30dpd_6mob"): (1, date(2023, 7, 1))}


APRIL = date(2024, 4, 1)


def feature_inputs(clickstream: list[dict], attributes=None, financials=None):
    loans = pa.Table.from_pylist([
        loan_month("C1_2024_04_01", APRIL, APRIL, 0, 0),
        loan_month("C1_2024_04_01", APRIL, date(2024, 5, 1), 1, 0),  # later month of same loan
        loan_month("C2_2024_04_01", APRIL, APRIL, 0, 0),
        loan_month("C3_2024_03_01", date(2024, 3, 1), APRIL, 1, 0),  # started earlier
    ])
    attributes = attributes or [
        {"customer_id": "C1", "snapshot_date": APRIL, "age": 30, "occupation": "Lawyer",
         "ssn_valid": True},
        {"customer_id": "C2", "snapshot_date": APRIL, "age": 40, "occupation": None,
         "ssn_valid": False},
    ]
    financials = financials or [
        {"customer_id": "C1", "snapshot_date": APRIL, "annual_income": 50000.0,
         "credit_mix": "Good"},
        {"customer_id": "C2", "snapshot_date": APRIL, "annual_income": 20000.0,
         "credit_mix": None},
    ]
    return {
        "silver_loan_daily": loans,
        "silver_attributes": pa.Table.from_pylist(attributes),
        "silver_financials": pa.Table.from_pylist(financials),
        "silver_clickstream": pa.Table.from_pylist(clickstream),
    }


def click(customer: str, month: date, fe_1: int, fe_2: int) -> dict:
    return {"customer_id": customer, "snapshot_date": month, "fe_1": fe_1, "fe_2": fe_2}


def lookback_window(months: int) -> pa.Table:
    """What the partition mapping gives April: April and the months - 1 before it."""
    return pa.Table.from_pylist([{"month": APRIL, "upstream_month": date(2024, 4 - back, 1)}
                                 for back in range(months)])


def features(transform, clickstream, lookback=3, **inputs):
    views = {**feature_inputs(clickstream, **inputs),
             "clickstream_window": lookback_window(lookback)}
    return {r["loan_id"]: r for r in transform("gold/feature_store", views)}


def test_one_row_per_loan_started_in_the_month(transform):
    rows = features(transform, [click("C1", APRIL, 1, 2)])
    assert sorted(rows) == ["C1_2024_04_01", "C2_2024_04_01"]
    assert rows["C1_2024_04_01"]["application_month"] == APRIL
    assert rows["C1_2024_04_01"]["age"] == 30
    assert rows["C1_2024_04_01"]["annual_income"] == 50000.0
    assert "ssn_valid" not in rows["C1_2024_04_01"]


def test_clickstream_after_the_application_month_is_never_used(transform):
    rows = features(transform, [
        click("C1", date(2024, 2, 1), 10, -20),
        click("C1", date(2024, 3, 1), 20, -40),
        click("C1", APRIL, 30, -60),
        click("C1", date(2024, 5, 1), 1000, 1000),   # after application: must not count
        click("C1", date(2024, 12, 1), 5000, 5000),
    ])
    loan = rows["C1_2024_04_01"]
    assert loan["fe_1_latest"] == 30 and loan["fe_2_latest"] == -60
    assert loan["fe_1_mean"] == pytest.approx(20.0) and loan["fe_2_mean"] == pytest.approx(-40.0)
    assert loan["clickstream_months"] == 3
    assert loan["features_as_of"] == APRIL


def test_clickstream_lookback_window(transform):
    history = [click("C1", date(2024, m, 1), m, m) for m in (1, 2, 3, 4)]
    loan = features(transform, history, lookback=2)["C1_2024_04_01"]
    assert loan["clickstream_months"] == 2 and loan["fe_1_mean"] == pytest.approx(3.5)
    loan = features(transform, history, lookback=4)["C1_2024_04_01"]
    assert loan["clickstream_months"] == 4 and loan["fe_1_mean"] == pytest.approx(2.5)


def test_latest_is_the_latest_snapshot_before_application(transform):
    loan = features(transform, [click("C1", date(2024, 2, 1), 7, 7)])["C1_2024_04_01"]
    assert loan["fe_1_latest"] == 7 and loan["features_as_of"] == APRIL


def test_loan_without_clickstream_keeps_its_row(transform):
    loan = features(transform, [click("C1", APRIL, 1, 1)])["C2_2024_04_01"]
    assert loan["clickstream_months"] == 0 and loan["fe_1_latest"] is None


def test_attributes_dated_after_the_loan_start_are_not_used(transform):
    late = [{"customer_id": "C1", "snapshot_date": date(2024, 4, 20), "age": 99,
             "occupation": "Writer", "ssn_valid": True}]
    loan = features(transform, [click("C1", APRIL, 1, 1)], attributes=late)["C1_2024_04_01"]
    assert loan["age"] is None and loan["features_as_of"] == APRIL


def test_the_clickstream_mean_does_not_depend_on_the_order_rows_arrive_in(transform):
    """A floating-point mean depends on the order it adds in ((0.3 + 0.4) + 0.5 is not
    0.3 + (0.4 + 0.5)), and a scan's order on the threads: the mean adds in date order."""
    history = {date(2024, 2, 1): 0.3, date(2024, 3, 1): 0.4, APRIL: 0.5}
    means = {features(transform, [click("C1", m, history[m], 0) for m in order]
                      )["C1_2024_04_01"]["fe_1_mean"]
             for order in itertools.permutations(history)}
    assert means == {((0.3 + 0.4) + 0.5) / 3}
