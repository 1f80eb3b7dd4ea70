"""Gold: the label store (by observation month), the point-in-time feature store and the
coverage of its sources (by application month)."""

import dagster as dg
import pyarrow as pa

from ml_assets.assets.lake import (
    RESULT,
    Upstream,
    compute,
    describe_table,
    month_batches,
    monthly_asset,
    publish,
    read_upstreams,
)
from ml_assets.checks import evaluation, materialized, spec
from ml_assets.metadata import markdown_table
from ml_assets.months import folder_label
from ml_assets.partitions import (
    clickstream_window,
    coverage_history,
    coverage_trailing,
    run_months,
    upstream_months,
    window_pairs,
)
from ml_assets.plots import line_chart
from ml_assets.settings import COVERED_SOURCES, settings
from ml_assets.tables import (
    FEATURE_STORE,
    LABEL_STORE,
    SILVER_ATTRIBUTES,
    SILVER_CLICKSTREAM,
    SILVER_FINANCIALS,
    SILVER_LOAN_DAILY,
    SOURCE_COVERAGE,
    asset_key,
)
from resources.warehouse import Warehouse

BOUNDS = settings().checks
LABEL_INPUTS = [Upstream("silver_loan_daily", SILVER_LOAN_DAILY)]
FEATURE_INPUTS = [
    Upstream("silver_loan_daily", SILVER_LOAN_DAILY),
    Upstream("silver_attributes", SILVER_ATTRIBUTES),
    Upstream("silver_financials", SILVER_FINANCIALS),
    Upstream("silver_clickstream", SILVER_CLICKSTREAM, clickstream_window),
]
LABEL_RATE = spec(asset_key(LABEL_STORE), "label_rate_within_bounds",
                  f"The month's label rate within [{BOUNDS.label_rate_min}, "
                  f"{BOUNDS.label_rate_max}] (checks.label_rate_min/max)")
NO_FUTURE_FEATURES = spec(asset_key(FEATURE_STORE), "no_feature_after_application",
                          "features_as_of never after the application month", blocking=True)
APPLICATION_DATA = spec(asset_key(FEATURE_STORE), "application_data_found",
                        f"At most {BOUNDS.max_loans_without_application_data:.1%} of the month's "
                        "loans without attributes or financials at application")


@monthly_asset(**describe_table(LABEL_STORE, checks=[LABEL_RATE]),
          deps=[u.dep() for u in LABEL_INPUTS])
def label_store(context: dg.AssetExecutionContext, warehouse: Warehouse):
    label = settings().label
    months = run_months(context)
    evaluations, rates = [], {}
    with warehouse.publication(LABEL_STORE) as publication:
        for batch in month_batches(warehouse, LABEL_INPUTS, months):
            with warehouse.connect() as con:
                read_upstreams(con, warehouse, LABEL_INPUTS, batch)
                compute(con, "gold/label_store",
                        {"label_dpd": label.dpd, "label_mob": label.mob,
                         "label_def": label.name})
                rates.update({row[0]: row[1:] for row in con.execute(
                    f"SELECT date_trunc('month', snapshot_date)::DATE, avg(label), count(*) "
                    f"FROM {RESULT} GROUP BY ALL").fetchall()})
                per_month = {m: {"label_def": label.name,
                                 "label_rate": float(rates[m][0]) if m in rates else None}
                             for m in batch}
                evaluations += publish(context, warehouse, con, LABEL_STORE,
                                       f"SELECT * FROM {RESULT}", batch, per_month, publication)
    for month in months:
        rate, loans = rates.get(month, (None, 0))
        evaluations.append(evaluation(
            LABEL_RATE, month,
            rate is None or BOUNDS.label_rate_min <= rate <= BOUNDS.label_rate_max,
            {"label_rate": rate, "loans": loans, "min": BOUNDS.label_rate_min,
             "max": BOUNDS.label_rate_max}))
    yield from materialized(context, evaluations)


@monthly_asset(**describe_table(FEATURE_STORE, checks=[NO_FUTURE_FEATURES, APPLICATION_DATA]),
          deps=[u.dep() for u in FEATURE_INPUTS])
def feature_store(context: dg.AssetExecutionContext, warehouse: Warehouse):
    evaluations = []
    with warehouse.publication(FEATURE_STORE) as publication:
        for batch in month_batches(warehouse, FEATURE_INPUTS, run_months(context)):
            batch_evaluations, leaking = feature_months(context, warehouse, batch, publication)
            evaluations += batch_evaluations
            if leaking:  # a point-in-time violation is never published
                yield from evaluations
                raise RuntimeError(f"gold.feature_store: features dated after the application "
                                   f"month in {', '.join(map(str, leaking))}; nothing published")
    yield from materialized(context, evaluations)


def feature_months(context: dg.AssetExecutionContext, warehouse: Warehouse, months: list,
                   publication) -> tuple[list, list]:
    """Compute and stage one group of the run's months: the check evaluations, and the months
    with features dated after their application month (then nothing is staged)."""
    with warehouse.connect() as con:
        read_upstreams(con, warehouse, FEATURE_INPUTS, months)
        con.register("clickstream_window", window_pairs(clickstream_window, months))
        compute(con, "gold/feature_store")
        figures = {row[0]: row[1:] for row in con.execute(
            f"SELECT application_month, count(*), count_if(clickstream_months > 0), "
            f"count(*) FILTER (WHERE date_trunc('month', features_as_of) > application_month), "
            f"count_if(NOT (has_attributes AND has_financials)) FROM {RESULT} GROUP BY ALL"
        ).fetchall()}
        evaluations = []
        for month in months:
            loans, _, late, incomplete = figures.get(month, (0, 0, 0, 0))
            evaluations.append(evaluation(NO_FUTURE_FEATURES, month, late == 0,
                                          {"loans": loans, "features_after_application": late}))
            share = incomplete / loans if loans else 0.0
            evaluations.append(evaluation(
                APPLICATION_DATA, month, share <= BOUNDS.max_loans_without_application_data,
                {"loans": loans, "without_attributes_or_financials": incomplete, "share": share}))
        leaking = [m for m in months if figures.get(m, (0, 0, 0, 0))[2]]
        if leaking:
            return evaluations, leaking
        per_month = {m: {"loans_with_clickstream": int(figures.get(m, (0, 0))[1]),
                         "clickstream_lookback_months": settings().clickstream_lookback_months}
                     for m in months}
        evaluations += publish(context, warehouse, con, FEATURE_STORE, f"SELECT * FROM {RESULT}",
                               months, per_month, publication)
    return evaluations, []


# -- source coverage -------------------------------------------------------------------------

COVERAGE = settings().coverage
COVERAGE_INPUTS = [
    Upstream("gold_feature_store", FEATURE_STORE, coverage_history),
    Upstream("silver_attributes", SILVER_ATTRIBUTES),
    Upstream("silver_financials", SILVER_FINANCIALS),
    Upstream("silver_clickstream", SILVER_CLICKSTREAM),
]
COVERAGE_CHECKS = {
    source: spec(asset_key(SOURCE_COVERAGE), f"{source}_coverage",
                 f"{source}: ERROR when the share of the month's applications it covers is below "
                 f"its floor ({COVERAGE.floors[source]:.0%}, coverage.floors); WARN when it, or "
                 f"the share with a snapshot in the application month itself, is more than "
                 f"{COVERAGE.max_relative_drop:.0%} below its level over the "
                 f"{COVERAGE.trailing_months} months before")
    for source in COVERED_SOURCES
}
STATUS_SEVERITY = {"warn": dg.AssetCheckSeverity.WARN, "error": dg.AssetCheckSeverity.ERROR}


def source_windows() -> pa.Table:
    """How far back each source's window starts, in months from the application month."""
    lookback = settings().clickstream_lookback_months
    offsets = {"features_attributes": 0, "features_financials": 0,
               "feature_clickstream": -(lookback - 1)}
    return pa.table({"source": list(offsets), "window_first_offset": list(offsets.values())})


@monthly_asset(**describe_table(SOURCE_COVERAGE, checks=COVERAGE_CHECKS.values()),
               deps=[u.dep() for u in COVERAGE_INPUTS])
def source_coverage(context: dg.AssetExecutionContext, warehouse: Warehouse):
    """Per application month and feature source: applications covered, how current, and the
    verdict against the source's floor and trailing level (sql/gold/source_coverage.sql)."""
    months = run_months(context)
    with warehouse.connect() as con:
        read_upstreams(con, warehouse, COVERAGE_INPUTS, months)
        con.register("coverage_trailing", window_pairs(coverage_trailing, months))
        con.register("source_windows", source_windows())
        con.register("source_floors", pa.table({
            "source": list(COVERAGE.floors), "floor": list(COVERAGE.floors.values())}))
        compute(con, "gold/source_coverage",
                {"months": months, "max_relative_drop": COVERAGE.max_relative_drop,
                 "trailing_months": COVERAGE.trailing_months})
        rows = con.execute(f"SELECT application_month, source, loans, loans_covered, coverage, "
                           f"current_coverage, source_as_of, status, message FROM {RESULT}"
                           ).fetchall()
        evaluations, per_month = [], {}
        for month in months:
            month_rows = [r for r in rows if r[0] == month]
            for _, source, loans, covered, share, current, as_of, status, message in month_rows:
                evaluations.append(evaluation(
                    COVERAGE_CHECKS[source], month, status == "ok",
                    {"loans": loans, "loans_covered": covered, "coverage": share,
                     "current_coverage": current, "source_as_of": str(as_of)},
                    severity=STATUS_SEVERITY.get(status, dg.AssetCheckSeverity.WARN),
                    description=message if status != "ok" else None))
            per_month[month] = {
                "coverage": dg.MetadataValue.md(markdown_table(
                    ["source", "loans", "covered", "coverage", "current", "as of", "status"],
                    [[r[1], r[2], r[3], r[4], r[5], r[6], r[7]] for r in month_rows])),
                "issues": "; ".join(r[8] for r in month_rows if r[7] != "ok") or "none",
            }
        per_month[months[-1]]["coverage_chart"] = dg.MetadataValue.md(coverage_chart(
            con, upstream_months(coverage_history, months)[0], months[-1]))
        evaluations += publish(context, warehouse, con, SOURCE_COVERAGE, f"SELECT * FROM {RESULT}",
                               months, per_month)
    yield from materialized(context, evaluations)


def coverage_chart(con, first, last) -> str:
    """Coverage of each source over the months first..last (the gold_feature_store read)."""
    history = con.execute(
        "SELECT application_month, avg(has_attributes::INTEGER), avg(has_financials::INTEGER), "
        "avg((clickstream_months > 0)::INTEGER) FROM gold_feature_store "
        "WHERE application_month BETWEEN $first AND $last GROUP BY ALL ORDER BY 1",
        {"first": first, "last": last}).fetchall()
    months = [folder_label(r[0]) for r in history]
    series = {source: [r[i + 1] for r in history] for i, source in enumerate(COVERED_SOURCES)}
    return line_chart(months, series, "Share of applications each source covers", "coverage",
                      {f"{source} floor": COVERAGE.floors[source] for source in COVERED_SOURCES
                       if COVERAGE.floors[source] > 0})
