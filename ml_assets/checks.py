"""Asset checks evaluated per month, also inside a run that covers a range of months.

Dagster attaches an `AssetCheckResult` to the run's single partition, which a single-run
backfill does not have. So assets yield one `AssetCheckEvaluation` per month (Dagster records
each against its month and still stops downstream steps when a blocking one fails with ERROR),
then the empty outputs their declared check specs require.
"""

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import date

import dagster as dg
import duckdb
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

from ml_assets.months import partition_key
from ml_assets.partitions import monthly_partitions
from resources.warehouse import Table


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


def materialized(context: dg.AssetExecutionContext, evaluations: Iterable[AssetCheckEvaluation],
                 metadata: Mapping[str, object] | None = None) -> Iterator:
    """The end of every checked asset: its checks month by month, then its materialisation."""
    yield from evaluations
    yield dg.MaterializeResult(metadata=dict(metadata or {}))
    yield from check_outputs(context)


# -- checks every silver and gold table has --------------------------------------------------

PERSONAL_COLUMN = re.compile(r"(^|_)(name|ssn)($|_)")
NOT_PERSONAL = {"ssn_valid"}  # a flag saying whether the SSN was well formed, not the SSN
SSN_SHAPE = r"\s*[0-9]{3}-[0-9]{2}-[0-9]{4}\s*"


def table_check_specs(table: Table) -> list[dg.AssetCheckSpec]:
    if table.schema not in ("silver", "gold"):
        return []
    key = dg.AssetKey([table.schema, table.name])
    return [
        spec(key, "keys_unique", f"{', '.join(table.key)} unique within each month"),
        spec(key, "no_personal_data",
             "No column named like a name or an SSN, and no SSN-shaped value"),
    ]


def evaluate_table_checks(con: duckdb.DuckDBPyConnection, table: Table, query: str,
                          months: list[date]) -> list[AssetCheckEvaluation]:
    """The table checks of each month of `query`'s rows (before they are published)."""
    specs = {s.name: s for s in table_check_specs(table)}
    if not specs:
        return []
    relation = con.sql(f"SELECT * FROM ({query}) LIMIT 0")
    personal = [c for c in relation.columns
                if PERSONAL_COLUMN.search(c.lower()) and c not in NOT_PERSONAL]
    texts = [c for c, t in zip(relation.columns, relation.types, strict=True)
             if str(t) == "VARCHAR"]
    # count(*) FILTER, not count_if: DuckDB 2.0's count_if is NULL over a column of NULLs
    ssn_counts = ", ".join(f'count(*) FILTER (WHERE regexp_full_match("{c}", $ssn))'
                           for c in texts) or "0"
    keys = ", ".join(f'"{c}"' for c in table.key)
    rows = con.execute(
        f"SELECT date_trunc('month', {table.month_column})::DATE, count(*), "
        f"count(DISTINCT ({keys})), {ssn_counts} FROM ({query}) GROUP BY ALL",
        {"ssn": SSN_SHAPE} if texts else {}).fetchall()
    by_month = {row[0]: row[1:] for row in rows}
    evaluations = []
    for month in months:
        count, distinct, *ssn_values = by_month.get(month, (0, 0))
        evaluations.append(evaluation(specs["keys_unique"], month, count == distinct,
                                      {"rows": count, "distinct_keys": distinct}))
        ssn_total = int(sum(ssn_values))
        evaluations.append(evaluation(
            specs["no_personal_data"], month, not personal and ssn_total == 0,
            {"personal_columns": ", ".join(personal) or "none", "ssn_shaped_values": ssn_total}))
    return evaluations
