"""The monthly partitions, defined once, and the partition mappings that carry the time rules."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import dagster as dg

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
    first, last = source_month_range(config)
    return dg.MonthlyPartitionsDefinition(
        start_date=first.isoformat(), end_date=add_months(last, 1).isoformat()
    )


monthly_partitions = monthly_partitions_def(settings())

# Point in time: a feature of application month S reads clickstream of S and the months before it.
clickstream_window = dg.TimeWindowPartitionMapping(
    start_offset=-(settings().clickstream_lookback_months - 1),
    end_offset=0,
    allow_nonexistent_upstream_partitions=True,
)


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
