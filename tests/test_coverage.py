"""Source coverage (sql/gold/source_coverage.sql) on hand-made application months, and what the
predictions do with a month whose coverage fails (flag and refer, or block)."""

from __future__ import annotations

import itertools
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml_assets.assets.gold import source_windows
from ml_assets.assets.models import coverage_verdict, decide_applications
from ml_assets.definitions import load_build
from ml_assets.months import add_months, month_range
from ml_assets.partitions import window_pairs
from ml_assets.settings import source_of_feature

BUILD = load_build()
TRAILING = BUILD.rules.coverage_trailing

FLOORS = {"features_attributes": 0.95, "features_financials": 0.95, "feature_clickstream": 0.3}
FIRST, LAST = date(2024, 1, 1), date(2024, 9, 1)
MONTHS = list(month_range(FIRST, LAST))
LOANS = 10


def application(month: date, number: int, attributes=True, financials=True,
                clickstream_months=3, clickstream_as_of: date | None = None) -> dict:
    start = month + timedelta(days=9)
    return {
        "loan_id": f"C{number}_{month:%Y_%m}", "application_month": month,
        "has_attributes": attributes, "has_financials": financials,
        "clickstream_months": clickstream_months,
        "attributes_as_of": month if attributes else None,
        "financials_as_of": month if financials else None,
        "clickstream_as_of": (clickstream_as_of or start) if clickstream_months else None,
    }


def month_of_applications(month: date, attributes=LOANS, financials=LOANS, clickstream=7,
                          clickstream_as_of: date | None = None) -> list[dict]:
    return [application(month, i, attributes=i < attributes, financials=i < financials,
                        clickstream_months=3 if i < clickstream else 0,
                        clickstream_as_of=clickstream_as_of) for i in range(LOANS)]


def source_rows(months: dict[date, int]) -> pa.Table:
    days = [month + timedelta(days=1) for month, rows in months.items() for _ in range(rows)]
    return pa.table({"snapshot_date": pa.array(days, pa.date32())})


@pytest.fixture
def coverage(transform):
    """The coverage rows of MONTHS: normal months, then an outage, a stale feed, a month with a
    source below its floor, a month without applications."""
    applications = []
    for month in MONTHS:
        if month == date(2024, 4, 1):  # clickstream well below its level, above its floor
            applications += month_of_applications(month, clickstream=4)
        elif month == date(2024, 6, 1):  # financials below their floor
            applications += month_of_applications(month, financials=9)
        elif month == date(2024, 7, 1):  # clickstream stopped covering new applicants
            applications += month_of_applications(month, clickstream=0)
        elif month == date(2024, 8, 1):  # stale clickstream (July's), attributes below floor
            applications += month_of_applications(month, attributes=8,
                                                  clickstream_as_of=date(2024, 7, 1))
        elif month == date(2024, 9, 1):
            continue  # no applications at all
        else:
            applications += month_of_applications(month)
    schema = pa.schema([("loan_id", pa.string()), ("application_month", pa.date32()),
                        ("has_attributes", pa.bool_()), ("has_financials", pa.bool_()),
                        ("clickstream_months", pa.int32()), ("attributes_as_of", pa.date32()),
                        ("financials_as_of", pa.date32()), ("clickstream_as_of", pa.date32())])
    every_month = dict.fromkeys(MONTHS, 20)
    rows = transform("gold/source_coverage", {
        "gold_feature_store": pa.Table.from_pylist(applications, schema=schema),
        "coverage_trailing": window_pairs(TRAILING, MONTHS, BUILD.partitions),
        "source_windows": source_windows(BUILD.config),
        "source_floors": pa.table({"source": list(FLOORS), "floor": list(FLOORS.values())}),
        "silver_attributes": source_rows(every_month),
        "silver_financials": source_rows(every_month),
        # the clickstream file has rows for older customers in July and none from August
        "silver_clickstream": source_rows({m: n for m, n in every_month.items()
                                           if m < date(2024, 8, 1)}),
    }, {"months": MONTHS, "max_relative_drop": 0.25, "trailing_months": 6})
    return {(row["application_month"], row["source"]): row for row in rows}


def test_one_row_per_month_and_source(coverage):
    assert len(coverage) == len(MONTHS) * 3
    assert {source for _, source in coverage} == set(FLOORS)


def test_normal_months_are_ok_with_their_figures(coverage):
    row = coverage[(date(2024, 3, 1), "feature_clickstream")]
    assert (row["loans"], row["loans_covered"], row["coverage"]) == (10, 7, 0.7)
    assert (row["loans_current"], row["snapshot_months"]) == (7, 3.0)
    assert (row["window_first"], row["window_last"]) == (date(2024, 1, 1), date(2024, 3, 1))
    assert row["trailing_coverage"] == pytest.approx(0.7)
    assert row["trailing_months"] == 2  # January and February: the months that exist before it
    assert row["status"] == "ok"
    first = coverage[(FIRST, "features_attributes")]
    assert first["trailing_coverage"] is None and first["status"] == "ok"
    assert "no earlier month to compare" in first["message"]


def test_a_source_below_its_floor_is_an_error_naming_the_source_and_months(coverage):
    row = coverage[(date(2024, 7, 1), "feature_clickstream")]
    assert (row["loans_covered"], row["coverage"], row["status"]) == (0, 0.0, "error")
    assert row["message"] == (
        "feature_clickstream: 0 of 10 applications in 2024-07 have a snapshot in "
        "2024-05..2024-07 (0.0%; 65.0% on average in 6 of the 6 months before, 70.0% in "
        "2024-06; floor 30%); the source has 20 rows dated 2024-07, none for these applicants")
    financials = coverage[(date(2024, 6, 1), "features_financials")]
    assert (financials["coverage"], financials["status"]) == (0.9, "error")
    attributes = coverage[(date(2024, 8, 1), "features_attributes")]
    assert (attributes["coverage"], attributes["status"]) == (0.8, "error")
    assert attributes["window_first"] == attributes["window_last"] == date(2024, 8, 1)


def test_a_month_below_the_floor_is_not_part_of_the_trailing_level(coverage):
    after = coverage[(date(2024, 7, 1), "features_financials")]
    assert after["trailing_months"] == 5  # June's 90% was an outage, not the level
    assert after["trailing_coverage"] == pytest.approx(1.0)
    assert after["previous_coverage"] == pytest.approx(0.9)


def test_coverage_well_below_its_level_warns(coverage):
    row = coverage[(date(2024, 4, 1), "feature_clickstream")]
    assert (row["coverage"], row["status"]) == (0.4, "warn")  # above the floor, < 75% of 70%
    assert "well below its usual level" in row["message"]


def test_a_stale_feed_warns_with_its_own_as_of_date(coverage):
    row = coverage[(date(2024, 8, 1), "feature_clickstream")]
    assert (row["loans_covered"], row["loans_current"]) == (7, 0)
    assert row["source_as_of"] == date(2024, 7, 1)
    assert row["source_rows_in_month"] == 0
    assert row["status"] == "warn"
    assert row["message"].startswith(
        "feature_clickstream: 0 of 10 applications in 2024-08 have a snapshot in 2024-08 itself "
        "(stale: the latest used is 2024-07-01;")
    assert row["message"].endswith("; the source has no rows dated 2024-08")


def test_a_month_without_applications_is_ok(coverage):
    row = coverage[(date(2024, 9, 1), "features_attributes")]
    assert (row["loans"], row["coverage"], row["status"]) == (0, None, "ok")
    assert row["message"] == "features_attributes: no applications in 2024-09"


# -- what predictions do -----------------------------------------------------------------------

COVERAGE_ROWS = [("feature_clickstream", "error", "feature_clickstream: 0 of 10 ..."),
                 ("features_attributes", "ok", "..."),
                 ("features_financials", "warn", "features_financials: 7 of 10 ...")]


def test_features_come_from_their_source():
    assert source_of_feature("fe_3_latest") == "feature_clickstream"
    assert source_of_feature("clickstream_months") == "feature_clickstream"
    assert source_of_feature("age") == "features_attributes"
    assert source_of_feature("annual_income") == "features_financials"


def test_a_failing_source_fails_only_a_model_that_uses_it():
    status, failing, issue = coverage_verdict(COVERAGE_ROWS, ["fe_1_latest", "annual_income"])
    assert (status, failing) == ("error", ["feature_clickstream"])
    assert issue == "feature_clickstream: 0 of 10 ...; features_financials: 7 of 10 ..."
    status, failing, issue = coverage_verdict(COVERAGE_ROWS, ["annual_income", "age"])
    assert (status, failing, issue) == ("warn", [], "features_financials: 7 of 10 ...")
    assert coverage_verdict(COVERAGE_ROWS, ["age"]) == ("ok", [], "")


def test_applications_missing_a_failing_source_are_referred():
    scores = np.array([0.9, 0.1, 0.6, 0.2])
    missing = pd.Series(["feature_clickstream", None, "features_attributes,feature_clickstream",
                         "features_attributes"])
    assert list(decide_applications(scores, missing, [], 0.5)) == [
        "decline", "approve", "decline", "approve"]
    assert list(decide_applications(scores, missing, ["feature_clickstream"], 0.5)) == [
        "refer", "approve", "refer", "approve"]


def test_trailing_window_is_the_months_before():
    pairs = window_pairs(TRAILING, [date(2024, 7, 1)], BUILD.partitions).to_pylist()
    assert [p["upstream_month"] for p in pairs] == [add_months(date(2024, 7, 1), -k)
                                                    for k in range(6, 0, -1)]


def test_the_trailing_level_does_not_depend_on_the_order_rows_arrive_in(transform):
    """A floating-point mean depends on the order it adds in ((0.3 + 0.4) + 0.5 is not
    0.3 + (0.4 + 0.5)); the scan's order depends on the threads. The published level adds the
    months in month order, whatever order the feature store's rows come in."""
    months = list(month_range(date(2024, 1, 1), date(2024, 4, 1)))
    shares = dict(zip(months, (3, 4, 5, 7), strict=True))  # clickstream coverage in tenths
    by_month = {m: month_of_applications(m, clickstream=shares[m]) for m in months}
    levels = set()
    for order in itertools.permutations(months[:3]):
        rows = transform("gold/source_coverage", {
            "gold_feature_store": pa.Table.from_pylist(
                [row for m in (*order, months[3]) for row in by_month[m]]),
            "coverage_trailing": window_pairs(TRAILING, months, BUILD.partitions),
            "source_windows": source_windows(BUILD.config),
            "source_floors": pa.table({"source": list(FLOORS), "floor": list(FLOORS.values())}),
            "silver_attributes": source_rows(dict.fromkeys(months, 20)),
            "silver_financials": source_rows(dict.fromkeys(months, 20)),
            "silver_clickstream": source_rows(dict.fromkeys(months, 20)),
        }, {"months": months, "max_relative_drop": 0.25, "trailing_months": 6})
        [april] = [r for r in rows if r["application_month"] == months[3]
                   and r["source"] == "feature_clickstream"]
        levels.add(april["trailing_coverage"])
    assert levels == {((0.3 + 0.4) + 0.5) / 3}
