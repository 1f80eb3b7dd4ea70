"""Silver: typed and cleaned tables, every cleaning rule counted, rejected rows quarantined.

A silver transform returns, beside the clean columns, one struct per cleaned source column
(`num__`, `int__`, `cat__`, `parsed__` + the source column name) whose boolean fields say
which rule changed the value, `_reject_reason` (NULL for a kept row) and the raw lineage
columns. Columns whose names start with `_` or contain `__` never reach the silver table.
Exact duplicate rows are dropped and counted first; two rows with the same key and different
values stop the run, naming the file, month and key.
"""

import re
from datetime import date

import dagster as dg
import duckdb

from ml_assets.assets.lake import (
    RESULT,
    Upstream,
    compute,
    describe_table,
    month_batches,
    monthly_asset,
    publish,
)
from ml_assets.checks import evaluation, materialized, spec
from ml_assets.contracts import ContractError
from ml_assets.metadata import markdown_table
from ml_assets.months import folder_label
from ml_assets.partitions import run_months
from ml_assets.settings import settings
from ml_assets.tables import (
    RAW_ATTRIBUTES,
    RAW_CLICKSTREAM,
    RAW_FINANCIALS,
    RAW_LMS,
    SILVER_ATTRIBUTES,
    SILVER_CLICKSTREAM,
    SILVER_FINANCIALS,
    SILVER_LOAN_DAILY,
    asset_key,
    quarantine_of,
)
from resources.warehouse import Publication, Table, Warehouse, sql_text

_CLEANING_STRUCT = re.compile(r"^(num|int|cat|parsed)__([A-Za-z0-9_]+)$")
_FIELD = re.compile(r"^[a-z_]+$")
KEPT_COLUMNS = "COLUMNS(lambda c: NOT (c LIKE '\\_%' ESCAPE '\\' OR c LIKE '%\\_\\_%' ESCAPE '\\'))"
KEPT_ROWS = f"SELECT {KEPT_COLUMNS} FROM {RESULT} WHERE _reject_reason IS NULL"
REJECTED_ROWS = (
    f"SELECT _snapshot_month, _source_file, _row_number, _reject_reason AS reason "
    f"FROM {RESULT} WHERE _reject_reason IS NOT NULL"
)
MAX_QUARANTINE_SHARE = settings().checks.max_quarantine_share


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


def duplicate_keys(con: duckdb.DuckDBPyConnection, table: Table) -> list[tuple]:
    """Keys (with month, first two data rows and the source file) held by more than one kept
    row: rows that are not exact duplicates, since those were dropped."""
    keys = ", ".join(f'"{c}"' for c in table.key)
    return con.execute(
        f"SELECT _snapshot_month, {keys}, count(*), list(_row_number ORDER BY _row_number)[:2], "
        f"any_value(_source_file) FROM {RESULT} WHERE _reject_reason IS NULL "
        f"GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL LIMIT 5").fetchall()


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
    key = asset_key(table)
    checks = {
        "rows_reconciled": spec(key, "rows_reconciled",
                                "Raw rows in = rows out + rows quarantined + exact duplicates "
                                "dropped"),
        "quarantine_share": spec(key, "quarantine_share",
                                 f"At most {MAX_QUARANTINE_SHARE:.1%} of the month's rows "
                                 "quarantined (checks.max_quarantine_share)"),
    }

    def clean_months(context: dg.AssetExecutionContext, warehouse: Warehouse, months: list[date],
                     kept: Publication, rejected: Publication) -> tuple[list, dict]:
        """Clean one group of the run's months and stage them: the table's check evaluations
        and, per month, the figures of its materialisation."""
        with warehouse.connect() as con:
            warehouse.register_input(con, "raw_rows", raw_table, months)
            rows_in = dict(con.execute("SELECT _snapshot_month, count(*) FROM raw_rows "
                                       "GROUP BY ALL").fetchall())
            con.execute(f"CREATE OR REPLACE TEMP VIEW {upstream.view} AS "
                        f"{sql_text('silver/distinct_rows')}")
            compute(con, f"silver/{table.name}")
            duplicated = duplicate_keys(con, table)
            if duplicated:
                raise ContractError("\n".join(
                    f"{file}: {folder_label(month)}: {', '.join(table.key)} {tuple(key)} "
                    f"appears {n} times with different values (data rows {rows[0]} and "
                    f"{rows[1]}); nothing published"
                    for month, *key, n, rows, file in duplicated))
            rules = rule_counts(con)
            distinct = dict(con.execute(f"SELECT _snapshot_month, count(*) FROM {upstream.view} "
                                        "GROUP BY ALL").fetchall())
            quarantined = rejected.stage(con, REJECTED_ROWS, months)
            per_month = {month: {
                "rows_in": int(rows_in.get(month, 0)),
                "duplicate_rows_dropped": int(rows_in.get(month, 0) - distinct.get(month, 0)),
                "rows_quarantined": quarantined[month],
                "quarantine_table": quarantine.qualified_name,
                **_rules_metadata(rules.get(month, {})),
            } for month in months}
            evaluations = publish(context, warehouse, con, table, KEPT_ROWS, months, per_month,
                                  kept)
        return evaluations, per_month

    @monthly_asset(**describe_table(table, checks=checks.values()), deps=[upstream.dep()])
    def silver_asset(context: dg.AssetExecutionContext, warehouse: Warehouse):
        months = run_months(context)
        evaluations, figures = [], {}
        with warehouse.publication(table) as kept, warehouse.publication(quarantine) as rejected:
            for batch in month_batches(warehouse, [upstream], months):
                batch_evaluations, batch_figures = clean_months(context, warehouse, batch, kept,
                                                                rejected)
                evaluations += batch_evaluations
                figures.update(batch_figures)
        for month in months:
            raw_rows, duplicates, quarantined, published = (
                figures[month]["rows_in"], figures[month]["duplicate_rows_dropped"],
                figures[month]["rows_quarantined"], kept.counts[month])
            share = quarantined / raw_rows if raw_rows else 0.0
            evaluations.append(evaluation(
                checks["rows_reconciled"], month,
                raw_rows == published + quarantined + duplicates,
                {"rows_in": raw_rows, "rows_out": published, "quarantined": quarantined,
                 "duplicates_dropped": duplicates}))
            evaluations.append(evaluation(
                checks["quarantine_share"], month, share <= MAX_QUARANTINE_SHARE,
                {"quarantined": quarantined, "share": share, "max_share": MAX_QUARANTINE_SHARE}))
        yield from materialized(context, evaluations)

    return silver_asset


silver_assets = [
    build_silver_asset(SILVER_LOAN_DAILY, RAW_LMS),
    build_silver_asset(SILVER_CLICKSTREAM, RAW_CLICKSTREAM),
    build_silver_asset(SILVER_ATTRIBUTES, RAW_ATTRIBUTES),
    build_silver_asset(SILVER_FINANCIALS, RAW_FINANCIALS),
]
