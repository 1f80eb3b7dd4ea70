"""The monthly partitions, defined once, and the partition mappings that carry the time rules."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import dagster as dg
import pyarrow as pa

from ml_assets.months import add_months, parse_month, partition_key
from ml_assets.settings import Settings, settings


def source_month_range(config: Settings) -> tuple[date, date]:
    """The first and last month of the data: configured, else the lms file's snapshot months."""
    if config.first_month and config.last_month:
        return config.first_month, config.last_month
    if config.source is None:
        from ml_assets.demo.generator import demo_month_range

        first, last = demo_month_range()
    else:
        from resources.sources import locate, month_range, stage
        from resources.warehouse import sql_text

        lms = stage(locate(config.source, "lms_loan_daily"), "lms_loan_daily",
                    config.warehouse / "_staging" / "sources")
        first, last = month_range(lms, sql_text("macros"))
    return config.first_month or first, config.last_month or last


def monthly_partitions_def(config: Settings) -> dg.MonthlyPartitionsDefinition:
    """From the first month of the data (or `months.first`) to the last complete month (or
    `months.last`): open-ended, so that next month's partition exists when its data arrives and
    the schedule and sensors can ask for it without reloading the code location."""
    first = config.first_month or source_month_range(config)[0]
    end = add_months(config.last_month, 1).isoformat() if config.last_month else None
    return dg.MonthlyPartitionsDefinition(start_date=first.isoformat(), end_date=end,
                                          end_offset=0)


monthly_partitions = monthly_partitions_def(settings())


def _window(start_offset: int, end_offset: int) -> dg.TimeWindowPartitionMapping:
    return dg.TimeWindowPartitionMapping(
        start_offset=start_offset, end_offset=end_offset, allow_nonexistent_upstream_partitions=True
    )


# The time rules, as partition mappings; every window the transforms use comes from these.
# Point in time: a feature of application month S reads clickstream of S and the months before it.
clickstream_window = _window(-(settings().clickstream_lookback_months - 1), 0)
# Source coverage of month M is judged against the months before it: its trailing level.
coverage_trailing = _window(-settings().coverage.trailing_months, -1)
coverage_history = _window(-settings().coverage.trailing_months, 0)


def training_windows(window_months: int, mob: int) -> tuple[dg.TimeWindowPartitionMapping, ...]:
    """For training month T: the label months T-window..T-1 (labels observed before T only),
    and their application months, `mob` months earlier, in the feature store."""
    labels = _window(-window_months, -1)
    features = _window(-window_months - mob, -1 - mob)
    return labels, features


def run_months(context: dg.AssetExecutionContext) -> list[date]:
    """The months this run materialises: one, or a range in a single-run backfill."""
    return [parse_month(key) for key in context.partition_keys]


def upstream_months(
    mapping: dg.PartitionMapping | None,
    months: Iterable[date],
    partitions_def: dg.PartitionsDefinition = monthly_partitions,
) -> list[date]:
    """The upstream months `months` read through `mapping` (None: the same months)."""
    months = sorted(set(months))
    if mapping is None:
        return months
    subset = partitions_def.empty_subset().with_partition_keys([partition_key(m) for m in months])
    result = mapping.get_upstream_mapped_partitions_result_for_partitions(
        subset, partitions_def, partitions_def
    )
    return sorted(parse_month(key) for key in result.partitions_subset.get_partition_keys())


def window_pairs(mapping: dg.PartitionMapping, months: Iterable[date]) -> pa.Table:
    """(month, upstream_month) for every month and each upstream month `mapping` gives it: the
    window a transform joins on, so its SQL needs no month arithmetic of its own."""
    pairs = [(month, upstream) for month in sorted(set(months))
             for upstream in upstream_months(mapping, [month])]
    return pa.table({"month": pa.array([p[0] for p in pairs], pa.date32()),
                     "upstream_month": pa.array([p[1] for p in pairs], pa.date32())})
