"""Silver: typed and cleaned tables, every cleaning rule counted, rejected rows quarantined.

A silver transform returns, beside the clean columns, one struct per cleaned source column
(`num__`, `int__`, `cat__`, `parsed__` + the source column name) whose boolean fields say
which rule changed the value, `_reject_reason` (NULL for a kept row) and the raw lineage
columns. Columns whose names start with `_` or contain `__` never reach the silver table.
"""


import re
from collections import defaultdict
from datetime import date

import dagster as dg
import duckdb

from ml_assets.assets.lake import MONTHLY, RESULT, Upstream, compute, describe_table, publish
from ml_assets.metadata import markdown_table
from ml_assets.partitions import run_months
from ml_assets.tables import (
    RAW_ATTRIBUTES,
    RAW_CLICKSTREAM,
    RAW_FINANCIALS,
    RAW_LMS,
    SILVER_ATTRIBUTES,
    SILVER_CLICKSTREAM,
    SILVER_FINANCIALS,
    SILVER_LOAN_DAILY,
    quarantine_of,
)
from resources.warehouse import Table, Warehouse

_CLEANING_STRUCT = re.compile(r"^(num|int|cat|parsed)__([A-Za-z0-9_]+)$")
_FIELD = re.compile(r"^[a-z_]+$")
KEPT_COLUMNS = "COLUMNS(lambda c: NOT (c LIKE '\\_%' ESCAPE '\\' OR c LIKE '%\\_\\_%' ESCAPE '\\'))"
KEPT_ROWS = f"SELECT {KEPT_COLUMNS} FROM {RESULT} WHERE _reject_reason IS NULL"
REJECTED_ROWS = (
    f"SELECT _snapshot_month, _source_file, _row_number, _reject_reason AS reason "
    f"FROM {RESULT} WHERE _reject_reason IS NOT NULL"
)


def rule_counts(con: duckdb.DuckDBPyConnection) -> dict[date, dict[str, int]]:
    """Per month, how many kept values each cleaning rule changed (`rule.column` -> count)."""
    relation = con.table(RESULT)
    counters = []
    for name, kind in zip(relation.columns, relation.types, strict=True):
        match = _CLEANING_STRUCT.match(name)
        if not match or kind.id != "struct":
            continue
        for field, field_type in kind.children:
            if str(field_type) == "BOOLEAN" and _FIELD.match(field):
                counters.append((f"{field}.{match.group(2)}", f'count_if("{name}"."{field}")'))
    if not counters:
        return {}
    rows = con.execute(
        f"SELECT _snapshot_month, {', '.join(sql for _, sql in counters)} FROM {RESULT} "
        "WHERE _reject_reason IS NULL GROUP BY _snapshot_month"
    ).fetchall()
    return {row[0]: {rule: int(n) for (rule, _), n in zip(counters, row[1:], strict=True)}
            for row in rows}


def _rules_metadata(counts: dict[str, int]) -> dict:
    rows = sorted((rule.split(".", 1)[1], rule.split(".", 1)[0], n) for rule, n in counts.items())
    return {
        "values_changed_by_rules": sum(counts.values()),
        "cleaning_rules": dg.MetadataValue.md(markdown_table(["column", "rule", "values"], rows)),
        "cleaning_rule_counts": dg.MetadataValue.json(counts),
    }


def build_silver_asset(table: Table, raw_table: Table) -> dg.AssetsDefinition:
    upstream = Upstream(f"raw_{raw_table.name}", raw_table)
    quarantine = quarantine_of(table)

    @dg.asset(**describe_table(table), deps=[upstream.dep()], **MONTHLY)
    def silver_asset(context: dg.AssetExecutionContext, warehouse: Warehouse) -> None:
        months = run_months(context)
        with warehouse.connect() as con:
            warehouse.register_input(con, upstream.view, raw_table, months)
            compute(con, f"silver/{table.name}")
            rules = rule_counts(con)
            rows_in = dict(con.execute(
                f"SELECT _snapshot_month, count(*) FROM {RESULT} GROUP BY ALL").fetchall())
            rejected = warehouse.publish(con, quarantine, REJECTED_ROWS, months)
            per_month = defaultdict(dict)
            for month in months:
                per_month[month] = {
                    "rows_in": int(rows_in.get(month, 0)),
                    "rows_quarantined": rejected[month],
                    "quarantine_table": quarantine.qualified_name,
                    **_rules_metadata(rules.get(month, {})),
                }
            publish(context, warehouse, con, table, KEPT_ROWS, months, per_month)

    return silver_asset


silver_assets = [
    build_silver_asset(SILVER_LOAN_DAILY, RAW_LMS),
    build_silver_asset(SILVER_CLICKSTREAM, RAW_CLICKSTREAM),
    build_silver_asset(SILVER_ATTRIBUTES, RAW_ATTRIBUTES),
    build_silver_asset(SILVER_FINANCIALS, RAW_FINANCIALS),
]
