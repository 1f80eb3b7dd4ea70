"""Analytics: the views of the loan book a credit-risk team reviews, from silver.loan_daily by
snapshot month: the vintage curve of each origination cohort and the roll rates between
delinquency buckets (the README, For risk teams, defines every column)."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pyarrow as pa

from ml_assets.metadata import markdown_table
from ml_assets.months import folder_label
from ml_assets.partitions import upstream_months, window_pairs
from ml_assets.plots import line_chart
from ml_assets.spec import RESULT, WARN, Build, Check, Input, Step, TableSpec
from ml_assets.tables import ROLL_RATE, SILVER_LOAN_DAILY, VINTAGE_CURVE
from resources.lake import Table, sql_text

# the order of sql/macros.sql delinquency_bucket, best to worst, closed first
BUCKETS = ("closed", "current", "1-29", "30-59", "60-89", "90+")

# -- vintage curve ----------------------------------------------------------------------------


def vintage_curve_compute(step: Step) -> dict[Table, str]:
    """analytics.vintage_curve (sql/analytics/vintage_curve.sql): per snapshot month, each
    cohort followed (started within analytics.vintage_max_mob months) at its mob. Checks per
    month: every loan-month of a followed cohort counted once, and the rates ordered
    (ever 30 >= ever 60 >= ever 90 dpd; delinquent + closed <= 1). The materialisation of the
    last month computed draws the curve of every cohort it follows, one line each."""
    con = step.con
    con.register("vintage_window", window_pairs(step.rules.vintage_history, step.months,
                                                step.partitions))
    query = step.sql("analytics/vintage_curve")
    counted = dict(con.execute(f"SELECT month, sum(loans) FROM {RESULT} GROUP BY ALL").fetchall())
    # the month's loan-months counted straight from silver: all, and those of followed cohorts
    in_silver = {row[0]: row[1:] for row in con.execute(
        "SELECT l.month, count(w.upstream_month), count(*) FROM (SELECT date_trunc('month', "
        "snapshot_date)::DATE AS month, date_trunc('month', loan_start_date)::DATE AS cohort "
        "FROM silver_loan_daily) AS l LEFT JOIN vintage_window AS w "
        "ON w.month = l.month AND w.upstream_month = l.cohort "
        "WHERE l.month IN (SELECT month FROM vintage_window) GROUP BY ALL").fetchall()}
    disordered = dict(con.execute(
        f"SELECT month, count(*) FILTER (WHERE NOT (ever_30dpd_rate >= ever_60dpd_rate "
        f"AND ever_60dpd_rate >= ever_90dpd_rate "
        f"AND current_delinquent_rate + closed_rate <= 1 + 1e-9)) FROM {RESULT} GROUP BY ALL"
    ).fetchall())
    for month in step.months:
        followed, observed = in_silver.get(month, (0, 0))
        loans = int(counted.get(month) or 0)
        step.check("loans_reconciled", month, loans == followed,
                   {"loans_in_curve": loans, "loan_months_in_silver": int(followed)})
        step.check("rates_ordered", month, disordered.get(month, 0) == 0,
                   {"rows_out_of_order": int(disordered.get(month, 0))})
        step.metadata(month, {"loans_in_curve": loans,
                              "loans_not_followed": int(observed - followed),
                              "vintage_max_mob": step.config.analytics.vintage_max_mob})
    chart = vintage_chart(step, step.months[-1])
    if chart is not None:
        step.metadata(step.months[-1], {"vintage_curve": dg.MetadataValue.md(chart)})
    return {VINTAGE_CURVE: query}


def vintage_chart(step: Step, month: date) -> str | None:
    """The ever-30-dpd curve of every cohort `month` follows, one line per cohort over mob: the
    same SQL over the pairs (m, u), u <= m, of the months of `month`'s window (which holds
    those cohorts' whole history). None when the window has no loans."""
    history = upstream_months(step.rules.vintage_history, [month], step.partitions)
    pairs = [(m, u) for m in history for u in history if u <= m]
    step.con.register("vintage_window", pa.table({
        "month": pa.array([p[0] for p in pairs], pa.date32()),
        "upstream_month": pa.array([p[1] for p in pairs], pa.date32())}))
    rows = step.con.execute(
        f"SELECT cohort_month, mob, ever_30dpd_rate FROM ({sql_text('analytics/vintage_curve')})"
        " ORDER BY ALL").fetchall()
    if not rows:
        return None
    mobs = list(range(max(r[1] for r in rows) + 1))
    series: dict[str, list[float | None]] = {}
    for cohort, mob, rate in rows:
        series.setdefault(folder_label(cohort), [None] * len(mobs))[mob] = rate
    return line_chart(mobs, series, f"Ever 30+ dpd rate by months on book, one line per cohort "
                      f"(as of {folder_label(month)})", "ever 30+ dpd rate")


# -- roll rates -------------------------------------------------------------------------------


def roll_rate_compute(step: Step) -> dict[Table, str]:
    """analytics.roll_rate (sql/analytics/roll_rate.sql): per snapshot month, loans by their
    delinquency bucket the month before and now. Checks per month: each from-bucket's rates sum
    to 1; WARN when more than analytics.max_roll_from_current of the loans current the month
    before are delinquent now. The month's matrix of rates is its materialisation's metadata."""
    limit = step.config.analytics.max_roll_from_current
    step.con.register("previous_month", window_pairs(step.rules.previous, step.months,
                                                     step.partitions))
    query = step.sql("analytics/roll_rate")
    rows = step.con.execute(f"SELECT month, from_bucket, to_bucket, loans, rate FROM {RESULT}"
                            ).fetchall()
    for month in step.months:
        cells = {(r[1], r[2]): (r[3], r[4]) for r in rows if r[0] == month}
        totals = {b: sum(rate for (f, _), (_, rate) in cells.items() if f == b)
                  for b in {f for f, _ in cells}}
        step.check("rates_sum_to_one", month, all(abs(t - 1) < 1e-9 for t in totals.values()),
                   {"from_buckets": len(totals)})
        current = sum(loans for (f, _), (loans, _) in cells.items() if f == "current")
        rolled = sum(loans for (f, t), (loans, _) in cells.items()
                     if f == "current" and t not in ("current", "closed"))
        roll = rolled / current if current else None
        step.check("roll_from_current_within_bound", month, roll is None or roll <= limit,
                   {"roll_from_current": roll, "loans_current_before": current, "max": limit},
                   severity=WARN)
        step.metadata(month, {
            "loans_moved": sum(loans for loans, _ in cells.values()),
            "roll_from_current": roll,
            "roll_rate_matrix": dg.MetadataValue.md(roll_matrix(cells))})
    return {ROLL_RATE: query}


def roll_matrix(cells: dict[tuple[str, str], tuple[int, float]]) -> str:
    """A Markdown matrix: a row per bucket the month before, a column per bucket now, each cell
    the rate (and the loans)."""
    def cell(key):
        loans, rate = cells.get(key, (0, None))
        return f"{rate:.1%} ({loans})" if rate is not None else ""

    present = [b for b in BUCKETS if any(f == b for f, _ in cells)]
    return markdown_table(["from \\ to", *BUCKETS],
                          [[f, *(cell((f, t)) for t in BUCKETS)] for f in present])


def analytics_specs(build: Build) -> list[TableSpec]:
    """The vintage curve and the roll rates."""
    rules, analytics = build.rules, build.config.analytics
    return [
        TableSpec(
            table=VINTAGE_CURVE, compute=vintage_curve_compute, batched=True,
            inputs=(Input(SILVER_LOAN_DAILY, "silver_loan_daily", rules.vintage_history),),
            checks=(Check("loans_reconciled",
                          "Every loan-month of silver.loan_daily whose cohort started within "
                          f"{analytics.vintage_max_mob} months (analytics.vintage_max_mob) is "
                          "counted once"),
                    Check("rates_ordered",
                          "ever_30dpd_rate >= ever_60dpd_rate >= ever_90dpd_rate and "
                          "current_delinquent_rate + closed_rate <= 1"))),
        TableSpec(
            table=ROLL_RATE, compute=roll_rate_compute, batched=True,
            inputs=(Input(SILVER_LOAN_DAILY, "silver_loan_daily", rules.roll),),
            checks=(Check("rates_sum_to_one",
                          "The rates of each bucket the month before sum to 1"),
                    Check("roll_from_current_within_bound",
                          "WARN when more than "
                          f"{analytics.max_roll_from_current:.0%} (analytics."
                          "max_roll_from_current) of the loans current the month before are "
                          "delinquent now"))),
    ]
