"""The vintage curve and roll-rate transforms on hand-made loan-months: cured, worsening, closed
and one-row loans, a cohort older than the window, a loan missing a month, dpd after the month."""

from __future__ import annotations

from datetime import date

import duckdb
import pyarrow as pa
import pytest

from resources.lake import sql_text

DEC, JAN, FEB, MAR, APR = (date(2022, 12, 1), date(2023, 1, 1), date(2023, 2, 1),
                           date(2023, 3, 1), date(2023, 4, 1))


def loan_month(loan: str, start: date, snapshot: date, mob: int, dpd: int,
               balance: float = 5000.0) -> dict:
    return {"loan_id": loan, "loan_start_date": start, "snapshot_date": snapshot, "mob": mob,
            "dpd": dpd, "balance": balance}


LOAN_MONTHS = pa.Table.from_pylist([
    # A: 31 dpd at mob 1, cured after
    loan_month("A", JAN, JAN, 0, 0), loan_month("A", JAN, FEB, 1, 31),
    loan_month("A", JAN, MAR, 2, 0), loan_month("A", JAN, APR, 3, 0),
    # B: worsens to 90 dpd in April
    loan_month("B", JAN, JAN, 0, 0), loan_month("B", JAN, FEB, 1, 0),
    loan_month("B", JAN, MAR, 2, 59), loan_month("B", JAN, APR, 3, 90),
    # C: 65 dpd at mob 1, then paid off: closed in April
    loan_month("C", JAN, JAN, 0, 0), loan_month("C", JAN, FEB, 1, 65),
    loan_month("C", JAN, MAR, 2, 0, 1000.0), loan_month("C", JAN, APR, 3, 0, 0.0),
    # D: a December cohort, months missing, 95 then 125 dpd
    loan_month("D", DEC, DEC, 0, 0), loan_month("D", DEC, MAR, 3, 95),
    loan_month("D", DEC, APR, 4, 125),
    # E: a one-loan cohort, observed once
    loan_month("E", APR, APR, 0, 0),
    # F: 28 dpd in March, missing in April
    loan_month("F", FEB, MAR, 1, 28),
    # G: a January loan first seen in April
    loan_month("G", JAN, APR, 3, 0),
])


def pairs(window: dict[date, list[date]]) -> pa.Table:
    rows = [(month, upstream) for month, months in window.items() for upstream in months]
    return pa.table({"month": pa.array([r[0] for r in rows], pa.date32()),
                     "upstream_month": pa.array([r[1] for r in rows], pa.date32())})


@pytest.fixture
def curve(transform):
    # analytics.vintage_max_mob = 3: March reads December to March, April January to April
    rows = transform("analytics/vintage_curve", {
        "silver_loan_daily": LOAN_MONTHS,
        "vintage_window": pairs({MAR: [DEC, JAN, FEB, MAR], APR: [JAN, FEB, MAR, APR]})})
    return {(r["month"], r["cohort_month"], r["mob"]): r for r in rows}


def rates(row: dict) -> tuple:
    return (row["loans"], row["ever_30dpd_rate"], row["ever_60dpd_rate"],
            row["ever_90dpd_rate"], row["current_delinquent_rate"], row["closed_rate"])


def test_vintage_curve_rows_are_cohorts_at_their_mob(curve):
    assert set(curve) == {(MAR, DEC, 3), (MAR, JAN, 2), (MAR, FEB, 1),
                          (APR, JAN, 3), (APR, APR, 0)}  # D's cohort is too old for April


def test_ever_rates_count_each_loans_worst_dpd_up_to_the_month(curve):
    # April, January cohort: A (31, cured), B (90 now), C (65, closed), G (0)
    assert rates(curve[APR, JAN, 3]) == (4, 0.75, 0.5, 0.25, 0.25, 0.25)
    # March: B's 90 dpd of April is not yet seen; G has no March row
    assert rates(curve[MAR, JAN, 2]) == pytest.approx((3, 1.0, 1 / 3, 0.0, 1 / 3, 0.0))
    assert rates(curve[MAR, DEC, 3]) == (1, 1.0, 1.0, 1.0, 1.0, 0.0)
    assert rates(curve[MAR, FEB, 1]) == (1, 0.0, 0.0, 0.0, 1.0, 0.0)  # 28 dpd: delinquent
    assert rates(curve[APR, APR, 0]) == (1, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_roll_rates_follow_loans_seen_in_both_months(transform):
    rows = transform("analytics/roll_rate", {"silver_loan_daily": LOAN_MONTHS,
                                             "previous_month": pairs({APR: [MAR]})})
    moves = {(r["from_bucket"], r["to_bucket"]): (r["loans"], r["rate"]) for r in rows}
    # E is new in April, F missing from it, G missing from March: none moved
    assert moves == {("current", "current"): (1, 0.5), ("current", "closed"): (1, 0.5),
                     ("30-59", "90+"): (1, 1.0), ("90+", "90+"): (1, 1.0)}
    assert {r["month"] for r in rows} == {APR}


def test_a_month_without_the_month_before_has_no_roll_rates(transform):
    only_april = LOAN_MONTHS.filter(pa.compute.equal(LOAN_MONTHS["snapshot_date"],
                                                     pa.scalar(APR, pa.date32())))
    assert transform("analytics/roll_rate", {"silver_loan_daily": only_april,
                                             "previous_month": pairs({APR: [MAR]})}) == []


@pytest.mark.parametrize(("dpd", "balance", "bucket"), [
    (0, 100.0, "current"), (1, 100.0, "1-29"), (29, 100.0, "1-29"), (30, 100.0, "30-59"),
    (59, 100.0, "30-59"), (60, 100.0, "60-89"), (89, 100.0, "60-89"), (90, 100.0, "90+"),
    (400, 100.0, "90+"), (0, 0.0, "closed"), (31, 0.0, "closed"), (0, -5.0, "closed"),
])
def test_delinquency_buckets(dpd, balance, bucket):
    with duckdb.connect() as con:
        con.execute(sql_text("macros"))
        assert con.execute("SELECT delinquency_bucket($dpd, $balance)",
                           {"dpd": dpd, "balance": balance}).fetchone()[0] == bucket
