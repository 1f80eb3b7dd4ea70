"""The checks every silver, gold and analytics table has: keys unique within a month, and no
personal data. Evaluated per month, also inside a run that covers a range of months: Dagster
attaches an `AssetCheckResult` to the run's single partition, which a single-run backfill does
not have, so every check result is an `AssetCheckEvaluation` of its month (Dagster records each
against its month and still stops downstream steps when a blocking one fails with ERROR)."""

import re
from datetime import date

import dagster as dg
import duckdb
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

from ml_assets.months import partition_key
from resources.lake import Table

PERSONAL_COLUMN = re.compile(r"(^|_)(name|ssn)($|_)")
NOT_PERSONAL = {"ssn_valid"}  # a flag saying whether the SSN was well formed, not the SSN
SSN_SHAPE = r"\s*[0-9]{3}-[0-9]{2}-[0-9]{4}\s*"
TABLE_CHECKS = {
    "keys_unique": "{key} unique within each month",
    "no_personal_data": "No column named like a name or an SSN, and no SSN-shaped value",
}


def table_check_specs(table: Table, partitions: dg.PartitionsDefinition
                      ) -> list[dg.AssetCheckSpec]:
    """The table checks of a silver, gold or analytics table (none for the others)."""
    if table.schema not in ("silver", "gold", "analytics"):
        return []
    key = dg.AssetKey([table.schema, table.name])
    return [dg.AssetCheckSpec(name, asset=key, partitions_def=partitions,
                              description=text.format(key=", ".join(table.key)))
            for name, text in TABLE_CHECKS.items()]


def evaluate_table_checks(con: duckdb.DuckDBPyConnection, table: Table, query: str,
                          months: list[date]) -> list[AssetCheckEvaluation]:
    """The table checks of each month of `query`'s rows (before they are published)."""
    if table.schema not in ("silver", "gold", "analytics"):
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
        f"SELECT {table.month_expression}, count(*), count(DISTINCT ({keys})), {ssn_counts} "
        f"FROM ({query}) GROUP BY ALL", {"ssn": SSN_SHAPE} if texts else {}).fetchall()
    by_month = {row[0]: row[1:] for row in rows}
    asset = dg.AssetKey([table.schema, table.name])

    def evaluation(name: str, month: date, passed: bool, metadata: dict):
        return AssetCheckEvaluation(
            asset_key=asset, check_name=name, passed=bool(passed), metadata=metadata,
            severity=dg.AssetCheckSeverity.ERROR, description=None, blocking=False,
            partition=partition_key(month), target_materialization_data=None)

    evaluations = []
    for month in months:
        count, distinct, *ssn_values = by_month.get(month, (0, 0))
        evaluations.append(evaluation("keys_unique", month, count == distinct,
                                      {"rows": count, "distinct_keys": distinct}))
        ssn_total = int(sum(ssn_values))
        evaluations.append(evaluation(
            "no_personal_data", month, not personal and ssn_total == 0,
            {"personal_columns": ", ".join(personal) or "none", "ssn_shaped_values": ssn_total}))
    return evaluations
