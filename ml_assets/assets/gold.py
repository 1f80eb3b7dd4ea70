"""Gold: the label store (by observation month), the point-in-time feature store and the
coverage of its sources (by application month)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import dagster as dg
import duckdb
import pyarrow as pa

from ml_assets.metadata import markdown_table
from ml_assets.months import folder_label
from ml_assets.partitions import TimeRules, upstream_months, window_pairs
from ml_assets.plots import line_chart
from ml_assets.settings import COVERED_SOURCES, Settings
from ml_assets.spec import RESULT, WARN, Build, Check, Input, Step, StepFailed, TableSpec
from ml_assets.tables import (
    FEATURE_STORE,
    LABEL_STORE,
    SILVER_ATTRIBUTES,
    SILVER_CLICKSTREAM,
    SILVER_FINANCIALS,
    SILVER_LOAN_DAILY,
    SOURCE_COVERAGE,
)
from resources.lake import Table, sql_text

STATUS_SEVERITY = {"warn": WARN, "error": dg.AssetCheckSeverity.ERROR}


# -- label store ------------------------------------------------------------------------------


def label_definitions(config: Settings) -> pa.Table:
    """The label definitions of the settings (the target, then the early read) as the table
    sql/gold/label_store.sql joins: label_def, dpd, mob."""
    definitions = config.label_definitions
    return pa.table({"label_def": [d.name for d in definitions],
                     "dpd": pa.array([d.dpd for d in definitions], pa.int32()),
                     "mob": pa.array([d.mob for d in definitions], pa.int32())})


def label_store_compute(step: Step) -> dict[Table, str]:
    """gold.label_store: per label definition (the target label, then label.early_read),
    default = dpd >= its dpd at mob = its mob, by observation month. The label rate of each
    definition of each month is checked against checks.label_rate_min/max."""
    config, bounds = step.config, step.config.checks
    step.con.register("label_definitions", label_definitions(config))
    query = step.sql("gold/label_store")
    rates = {(row[0], row[1]): row[2:] for row in step.con.execute(
        f"SELECT date_trunc('month', snapshot_date)::DATE, label_def, avg(label), count(*) "
        f"FROM {RESULT} GROUP BY ALL").fetchall()}
    for month in step.months:
        figures = {d.name: rates.get((month, d.name), (None, 0))
                   for d in config.label_definitions}
        target_rate = figures[config.label.name][0]
        step.metadata(month, {
            "label_def": config.label.name,
            "label_rate": float(target_rate) if target_rate is not None else None,
            "label_rates": {name: float(rate) if rate is not None else None
                            for name, (rate, _) in figures.items()}})
        step.check("label_rate_within_bounds", month,
                   all(rate is None or bounds.label_rate_min <= rate <= bounds.label_rate_max
                       for rate, _ in figures.values()),
                   {**{f"label_rate_{name}": rate for name, (rate, _) in figures.items()},
                    **{f"loans_{name}": loans for name, (_, loans) in figures.items()},
                    "min": bounds.label_rate_min, "max": bounds.label_rate_max})
    return {LABEL_STORE: query}


# -- feature store ----------------------------------------------------------------------------


def application_features(con: duckdb.DuckDBPyConnection, rules: TimeRules,
                         months: Sequence[date], partitions: dg.PartitionsDefinition) -> str:
    """Run sql/gold/feature_store.sql for the application `months` into the temporary table
    RESULT, over the silver views registered in `con` (silver_loan_daily, silver_attributes,
    silver_financials, silver_clickstream), with each month's clickstream lookback window from
    the time rules; returns a query of RESULT. The feature store asset builds features this way;
    the scoring service (ml_assets.serving) prepares the same SQL over the same inputs."""
    con.register("clickstream_window", window_pairs(rules.clickstream, months, partitions))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {RESULT} AS {sql_text('gold/feature_store')}")
    return f"SELECT * FROM {RESULT}"


def feature_store_compute(step: Step) -> dict[Table, str]:
    """gold.feature_store: one row per loan of the application month with what was known then
    (sql/gold/feature_store.sql). A feature dated after its application month stops the step
    (blocking check): a point-in-time violation is never published."""
    bounds = step.config.checks
    query = application_features(step.con, step.rules, step.months, step.partitions)
    figures = {row[0]: row[1:] for row in step.con.execute(
        f"SELECT application_month, count(*), count(*) FILTER (WHERE clickstream_months > 0), "
        f"count(*) FILTER (WHERE date_trunc('month', features_as_of) > application_month), "
        f"count(*) FILTER (WHERE NOT (has_attributes AND has_financials)) FROM {RESULT} "
        "GROUP BY ALL").fetchall()}
    leaking = []
    for month in step.months:
        loans, with_clickstream, late, incomplete = figures.get(month, (0, 0, 0, 0))
        step.check("no_feature_after_application", month, late == 0,
                   {"loans": loans, "features_after_application": late})
        share = incomplete / loans if loans else 0.0
        step.check("application_data_found", month,
                   share <= bounds.max_loans_without_application_data,
                   {"loans": loans, "without_attributes_or_financials": incomplete,
                    "share": share})
        step.metadata(month, {"loans_with_clickstream": int(with_clickstream),
                              "clickstream_lookback_months":
                                  step.config.clickstream_lookback_months})
        if late:
            leaking.append(folder_label(month))
    if leaking:
        raise StepFailed(f"gold.feature_store: features dated after the application month in "
                         f"{', '.join(leaking)}; nothing published")
    return {FEATURE_STORE: query}


# -- source coverage --------------------------------------------------------------------------


def source_windows(config: Settings) -> pa.Table:
    """How far back each source's window starts, in months from the application month."""
    offsets = {"features_attributes": 0, "features_financials": 0,
               "feature_clickstream": -(config.clickstream_lookback_months - 1)}
    return pa.table({"source": list(offsets), "window_first_offset": list(offsets.values())})


def source_coverage_compute(step: Step) -> dict[Table, str]:
    """gold.source_coverage: per application month and feature source, applications covered,
    how current, and the verdict against the source's floor and trailing level
    (sql/gold/source_coverage.sql); one check per source and month."""
    coverage, con = step.config.coverage, step.con
    con.register("coverage_trailing", window_pairs(step.rules.coverage_trailing, step.months,
                                                   step.partitions))
    con.register("source_windows", source_windows(step.config))
    con.register("source_floors", pa.table({"source": list(coverage.floors),
                                            "floor": list(coverage.floors.values())}))
    query = step.sql("gold/source_coverage", {
        "months": step.months, "max_relative_drop": coverage.max_relative_drop,
        "trailing_months": coverage.trailing_months})
    rows = con.execute(f"SELECT application_month, source, loans, loans_covered, coverage, "
                       f"current_coverage, source_as_of, status, message FROM {RESULT}"
                       ).fetchall()
    for month in step.months:
        month_rows = [r for r in rows if r[0] == month]
        for _, source, loans, covered, share, current, as_of, status, message in month_rows:
            step.check(f"{source}_coverage", month, status == "ok",
                       {"loans": loans, "loans_covered": covered, "coverage": share,
                        "current_coverage": current, "source_as_of": str(as_of)},
                       severity=STATUS_SEVERITY.get(status, WARN),
                       description=message if status != "ok" else None)
        step.metadata(month, {
            "coverage": dg.MetadataValue.md(markdown_table(
                ["source", "loans", "covered", "coverage", "current", "as of", "status"],
                [[r[1], r[2], r[3], r[4], r[5], r[6], r[7]] for r in month_rows])),
            "issues": "; ".join(r[8] for r in month_rows if r[7] != "ok") or "none",
        })
    history = upstream_months(step.rules.coverage_history, step.months, step.partitions)
    chart = coverage_chart(step, history[0], step.months[-1])
    if chart is not None:
        step.metadata(step.months[-1], {"coverage_chart": dg.MetadataValue.md(chart)})
    return {SOURCE_COVERAGE: query}


def coverage_chart(step: Step, first, last) -> str | None:
    """Coverage of each source over the months first..last (the gold_feature_store read); None
    when no month in that range has an application (e.g. a month after the last origination)."""
    history = step.con.execute(
        "SELECT application_month, avg(has_attributes::INTEGER), avg(has_financials::INTEGER), "
        "avg((clickstream_months > 0)::INTEGER) FROM gold_feature_store "
        "WHERE application_month BETWEEN $first AND $last GROUP BY ALL ORDER BY 1",
        {"first": first, "last": last}).fetchall()
    if not history:
        return None
    months = [folder_label(r[0]) for r in history]
    series = {source: [r[i + 1] for r in history] for i, source in enumerate(COVERED_SOURCES)}
    floors = step.config.coverage.floors
    return line_chart(months, series, "Share of applications each source covers", "coverage",
                      {f"{source} floor": floors[source] for source in COVERED_SOURCES
                       if floors[source] > 0})


def gold_specs(build: Build) -> list[TableSpec]:
    """The label store, the feature store and the coverage of its sources."""
    config, rules = build.config, build.rules
    bounds, coverage = config.checks, config.coverage
    return [
        TableSpec(
            table=LABEL_STORE, compute=label_store_compute, batched=True,
            inputs=(Input(SILVER_LOAN_DAILY, "silver_loan_daily"),),
            checks=(Check("label_rate_within_bounds",
                          f"The month's label rate of each label definition within "
                          f"[{bounds.label_rate_min}, {bounds.label_rate_max}] "
                          "(checks.label_rate_min/max)"),)),
        TableSpec(
            table=FEATURE_STORE, compute=feature_store_compute, batched=True,
            inputs=(Input(SILVER_LOAN_DAILY, "silver_loan_daily"),
                    Input(SILVER_ATTRIBUTES, "silver_attributes"),
                    Input(SILVER_FINANCIALS, "silver_financials"),
                    Input(SILVER_CLICKSTREAM, "silver_clickstream", rules.clickstream)),
            checks=(Check("no_feature_after_application",
                          "features_as_of never after the application month", blocking=True),
                    Check("application_data_found",
                          f"At most {bounds.max_loans_without_application_data:.1%} of the "
                          "month's loans without attributes or financials at application"))),
        TableSpec(
            table=SOURCE_COVERAGE, compute=source_coverage_compute,
            inputs=(Input(FEATURE_STORE, "gold_feature_store", rules.coverage_history),
                    Input(SILVER_ATTRIBUTES, "silver_attributes"),
                    Input(SILVER_FINANCIALS, "silver_financials"),
                    Input(SILVER_CLICKSTREAM, "silver_clickstream")),
            checks=tuple(Check(
                f"{source}_coverage",
                f"{source}: ERROR when the share of the month's applications it covers is "
                f"below its floor ({coverage.floors[source]:.0%}, coverage.floors); WARN when "
                f"it, or the share with a snapshot in the application month itself, is more "
                f"than {coverage.max_relative_drop:.0%} below its level over the "
                f"{coverage.trailing_months} months before") for source in COVERED_SOURCES)),
    ]
