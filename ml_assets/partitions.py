"""The monthly partitions and the partition mappings that carry the time rules, built from the
settings (never at import): every window a transform uses comes from these."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import dagster as dg
import pyarrow as pa

from ml_assets.months import add_months, parse_month, partition_key
from ml_assets.settings import Settings


def source_month_range(config: Settings) -> tuple[date, date]:
    """The first and last month of the data: configured, else the lms file's snapshot months
    (the demo's are known; a user's lms file is staged once, then found by its signature)."""
    if config.first_month and config.last_month:
        return config.first_month, config.last_month
    if config.source is None:
        from ml_assets.demo.generator import demo_month_range

        first, last = demo_month_range()
    else:
        from resources.lake import sql_text
        from resources.sources import locate, month_range, stage

        lms = stage(locate(config.source, "lms_loan_daily"), "lms_loan_daily",
                    config.work / "sources")
        first, last = month_range(lms, sql_text("macros"))
    return config.first_month or first, config.last_month or last


def monthly_partitions(config: Settings) -> dg.MonthlyPartitionsDefinition:
    """From the first month of the data (or `months.first`) to the last complete month (or
    `months.last`): open-ended, so that next month's partition exists when its data arrives and
    the schedule and sensors can ask for it without reloading the code location."""
    first = config.first_month or source_month_range(config)[0]
    end = add_months(config.last_month, 1).isoformat() if config.last_month else None
    return dg.MonthlyPartitionsDefinition(start_date=first.isoformat(), end_date=end,
                                          end_offset=0)


def window(start_offset: int, end_offset: int) -> dg.TimeWindowPartitionMapping:
    """Months start_offset..end_offset relative to each month (a window wholly before the
    first month reads as no rows)."""
    return dg.TimeWindowPartitionMapping(
        start_offset=start_offset, end_offset=end_offset, allow_nonexistent_upstream_partitions=True
    )


@dataclass(frozen=True)
class TimeRules:
    """The time rules of DESIGN section 3 as partition mappings.

    - clickstream: a feature of application month S reads clickstream of S and the months
      before it (the lookback), never later;
    - coverage_trailing / coverage_history: source coverage of S is judged against the months
      before it (and the chart shows them with S);
    - training_labels / training_features: training month T learns from the label months
      T-window..T-1 (labels observed before T only) and their application months, `mob`
      months earlier, in the feature store;
    - matured: the performance of label month L is measured on the predictions of L - mob;
    - early_read_matured: and on the early read's, of L - label.early_read.mob;
    - previous: the month before (the champion gate goes month by month);
    - vintage_history: a vintage-curve month reads the loan months of the cohorts it follows,
      up to analytics.vintage_max_mob months before it, for each loan's worst dpd so far;
    - roll: a roll-rate month reads itself and the month before (each loan's previous bucket).
    """

    clickstream: dg.TimeWindowPartitionMapping
    coverage_trailing: dg.TimeWindowPartitionMapping
    coverage_history: dg.TimeWindowPartitionMapping
    training_labels: dg.TimeWindowPartitionMapping
    training_features: dg.TimeWindowPartitionMapping
    matured: dg.TimeWindowPartitionMapping
    early_read_matured: dg.TimeWindowPartitionMapping
    previous: dg.TimeWindowPartitionMapping
    vintage_history: dg.TimeWindowPartitionMapping
    roll: dg.TimeWindowPartitionMapping


def time_rules(config: Settings, window_months: int) -> TimeRules:
    mob, trailing = config.label.mob, config.coverage.trailing_months
    return TimeRules(
        clickstream=window(-(config.clickstream_lookback_months - 1), 0),
        coverage_trailing=window(-trailing, -1),
        coverage_history=window(-trailing, 0),
        training_labels=window(-window_months, -1),
        training_features=window(-window_months - mob, -1 - mob),
        matured=window(-mob, -mob),
        early_read_matured=window(-config.early_read.mob, -config.early_read.mob),
        previous=window(-1, -1),
        vintage_history=window(-config.analytics.vintage_max_mob, 0),
        roll=window(-1, 0),
    )


def upstream_months(mapping: dg.PartitionMapping | None, months: Iterable[date],
                    partitions: dg.PartitionsDefinition) -> list[date]:
    """The upstream months `months` read through `mapping` (None: the same months)."""
    months = sorted(set(months))
    if mapping is None:
        return months
    subset = partitions.empty_subset().with_partition_keys([partition_key(m) for m in months])
    result = mapping.get_upstream_mapped_partitions_result_for_partitions(
        subset, partitions, partitions)
    return sorted(parse_month(key) for key in result.partitions_subset.get_partition_keys())


def window_pairs(mapping: dg.PartitionMapping, months: Iterable[date],
                 partitions: dg.PartitionsDefinition) -> pa.Table:
    """(month, upstream_month) for every month and each upstream month `mapping` gives it: the
    window a transform joins on, so its SQL needs no month arithmetic of its own."""
    pairs = [(month, upstream) for month in sorted(set(months))
             for upstream in upstream_months(mapping, [month], partitions)]
    return pa.table({"month": pa.array([p[0] for p in pairs], pa.date32()),
                     "upstream_month": pa.array([p[1] for p in pairs], pa.date32())})
