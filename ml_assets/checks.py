"""Asset checks evaluated per month, also inside a run that covers a range of months.

Dagster attaches an `AssetCheckResult` to the run's single partition, which a single-run
backfill does not have. So assets yield one `AssetCheckEvaluation` per month (Dagster records
each against its month and still stops downstream steps when a blocking one fails with ERROR),
then the empty outputs their declared check specs require.
"""

from collections.abc import Iterator, Mapping
from datetime import date

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

from ml_assets.months import partition_key
from ml_assets.partitions import monthly_partitions


def spec(asset_key: dg.AssetKey, name: str, description: str,
         blocking: bool = False) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset_key, description=description, blocking=blocking,
                             partitions_def=monthly_partitions)


def evaluation(
    check: dg.AssetCheckSpec,
    month: date,
    passed: bool,
    metadata: Mapping[str, object] | None = None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    description: str | None = None,
) -> AssetCheckEvaluation:
    return AssetCheckEvaluation(
        asset_key=check.asset_key,
        check_name=check.name,
        passed=bool(passed),
        metadata=dict(metadata or {}),
        severity=severity,
        description=description,
        blocking=check.blocking,
        partition=partition_key(month),
        target_materialization_data=None,
    )


def check_outputs(context: dg.AssetExecutionContext) -> Iterator[dg.Output]:
    """The outputs the asset's check specs require (their results were yielded per month)."""
    for output_name in context.assets_def.check_specs_by_output_name:
        yield dg.Output(None, output_name=output_name)
