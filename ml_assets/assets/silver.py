"""Silver: typed and cleaned tables, every cleaning rule counted, rejected rows quarantined.

A silver transform returns, beside the clean columns, one struct per cleaned source column
(`num__`, `int__`, `cat__`, `parsed__` + the source column name) whose boolean fields say
which rule changed the value, `_reject_reason` (NULL for a kept row) and the raw lineage
columns. Columns whose names start with `_` or contain `__` never reach the silver table.
Exact duplicate rows are dropped and counted first; two rows with the same key and different
values stop the run, naming the file, month and key.
"""

import re
from collections.abc import Sequence
from datetime import date

import dagster as dg
import duckdb

from ml_assets.metadata import markdown_table
from ml_assets.months import folder_label
from ml_assets.spec import RESULT, Build, Check, Input, Step, StepFailed, TableSpec
from ml_assets.tables import RAW_TABLES, SILVER_TABLES, quarantine_of
from resources.lake import Table, sql_text

_CLEANING_STRUCT = re.compile(r"^(num|int|cat|parsed)__([A-Za-z0-9_]+)$")
_FIELD = re.compile(r"^[a-z_]+$")
KEPT_COLUMNS = "COLUMNS(lambda c: NOT (c LIKE '\\_%' ESCAPE '\\' OR c LIKE '%\\_\\_%' ESCAPE '\\'))"


def kept_rows(result: str = RESULT) -> str:
    """The query of the silver rows of a cleaned `result` (a silver transform's output): the
    kept rows, without the rule structs, reject reason and lineage columns."""
    return f"SELECT {KEPT_COLUMNS} FROM {result} WHERE _reject_reason IS NULL"


KEPT_ROWS = kept_rows()
REJECTED_ROWS = (
    f"SELECT _snapshot_month, _source_file, _row_number, _reject_reason AS reason "
    f"FROM {RESULT} WHERE _reject_reason IS NOT NULL"
)
# each silver table and the raw table it cleans
RAW_OF = {"loan_daily": "lms_loan_daily", "clickstream": "feature_clickstream",
          "attributes": "features_attributes", "financials": "features_financials"}


def cleaning_rules(con: duckdb.DuckDBPyConnection, result: str = RESULT
                   ) -> list[tuple[str, str]]:
    """Every cleaning rule of the `result` of a silver transform: (`rule.column`, the SQL of
    the boolean field saying the rule changed the column's value)."""
    relation = con.table(result)
    rules = []
    for name, kind in zip(relation.columns, relation.types, strict=True):
        match = _CLEANING_STRUCT.match(name)
        if not match or kind.id != "struct":
            continue
        for field, field_type in kind.children:
            if str(field_type) == "BOOLEAN" and _FIELD.match(field):
                rules.append((f"{field}.{match.group(2)}", f'"{name}"."{field}"'))
    return rules


def rule_counts(con: duckdb.DuckDBPyConnection) -> dict[date, dict[str, int]]:
    """Per month, how many kept values each cleaning rule changed (`rule.column` -> count)."""
    counters = cleaning_rules(con)
    if not counters:
        return {}
    rows = con.execute(
        f"SELECT _snapshot_month, {', '.join(f'count_if({sql})' for _, sql in counters)} "
        f"FROM {RESULT} WHERE _reject_reason IS NULL GROUP BY _snapshot_month"
    ).fetchall()
    return {row[0]: {rule: int(n) for (rule, _), n in zip(counters, row[1:], strict=True)}
            for row in rows}


def rule_hits_expression(con: duckdb.DuckDBPyConnection, rules: Sequence[str],
                         result: str = RESULT) -> str:
    """The SQL expression, over a row of `result`, of the list of each `rule.column` whose
    cleaning rule is among `rules` (rule names, e.g. out_of_range) and changed the row's value
    (VARCHAR[], empty when none did)."""
    hits = ", ".join(f"CASE WHEN {sql} THEN '{rule}' END"
                     for rule, sql in cleaning_rules(con, result) if rule.split(".")[0] in rules)
    return f"list_filter([{hits}]::VARCHAR[], lambda r: r IS NOT NULL)"


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


def cleaning_query(table: Table, raw_rows: str = "raw_rows") -> str:
    """The query cleaning the raw rows of `raw_rows` (a raw table's columns and
    `_snapshot_month`) into silver `table`'s rows with their rule structs, `_reject_reason` and
    lineage columns: exact duplicates dropped (sql/silver/distinct_rows.sql), then
    sql/silver/<table>.sql. The silver assets (`clean`) and the scoring service
    (ml_assets.serving, prepared once) clean a source with it."""
    rows = "" if raw_rows == "raw_rows" else f"raw_rows AS (SELECT * FROM {raw_rows}), "
    return (f"WITH {rows}raw_{RAW_OF[table.name]} AS ({sql_text('silver/distinct_rows')}) "
            f"SELECT * FROM ({sql_text(f'silver/{table.name}')})")


def clean(con: duckdb.DuckDBPyConnection, table: Table) -> str:
    """Clean the raw rows registered in `con` as `raw_rows` into the temporary table RESULT
    (`cleaning_query`). Returns the view of the distinct raw rows (for counts)."""
    view = f"raw_{RAW_OF[table.name]}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {sql_text('silver/distinct_rows')}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {RESULT} AS {cleaning_query(table)}")
    return view


def silver_compute(table: Table, max_quarantine_share: float):
    def compute(step: Step) -> dict[Table, str]:
        con, months = step.con, step.months
        rows_in = dict(con.execute("SELECT _snapshot_month, count(*) FROM raw_rows "
                                   "GROUP BY ALL").fetchall())
        view = clean(con, table)
        duplicated = duplicate_keys(con, table)
        if duplicated:
            raise StepFailed("\n".join(
                f"{file}: {folder_label(month)}: {', '.join(table.key)} {tuple(key)} "
                f"appears {n} times with different values (data rows {rows[0]} and "
                f"{rows[1]}); nothing published"
                for month, *key, n, rows, file in duplicated))
        rules = rule_counts(con)
        distinct = dict(con.execute(f"SELECT _snapshot_month, count(*) FROM {view} "
                                    "GROUP BY ALL").fetchall())
        kept = dict(con.execute(f"SELECT _snapshot_month, count(*) FROM {RESULT} WHERE "
                                "_reject_reason IS NULL GROUP BY ALL").fetchall())
        rejected = dict(con.execute(f"SELECT _snapshot_month, count(*) FROM {RESULT} WHERE "
                                    "_reject_reason IS NOT NULL GROUP BY ALL").fetchall())
        for month in months:
            raw_rows, quarantined = int(rows_in.get(month, 0)), int(rejected.get(month, 0))
            duplicates, published = raw_rows - int(distinct.get(month, 0)), kept.get(month, 0)
            share = quarantined / raw_rows if raw_rows else 0.0
            step.metadata(month, {
                "rows_in": raw_rows, "duplicate_rows_dropped": duplicates,
                "rows_quarantined": quarantined,
                "quarantine_table": quarantine_of(table).qualified_name,
                **_rules_metadata(rules.get(month, {}))})
            step.check("rows_reconciled", month,
                       raw_rows == published + quarantined + duplicates,
                       {"rows_in": raw_rows, "rows_out": published, "quarantined": quarantined,
                        "duplicates_dropped": duplicates})
            step.check("quarantine_share", month, share <= max_quarantine_share,
                       {"quarantined": quarantined, "share": share,
                        "max_share": max_quarantine_share})
        return {table: KEPT_ROWS, quarantine_of(table): REJECTED_ROWS}
    return compute


def silver_specs(build: Build) -> list[TableSpec]:
    """A silver table per source, with its quarantine, computed in groups of months."""
    share = build.config.checks.max_quarantine_share
    return [TableSpec(
        table=table, compute=silver_compute(table, share), batched=True,
        inputs=(Input(RAW_TABLES[RAW_OF[table.name]], "raw_rows"),),
        also_writes=(quarantine_of(table),),
        checks=(Check("rows_reconciled",
                      "Raw rows in = rows out + rows quarantined + exact duplicates dropped"),
                Check("quarantine_share",
                      f"At most {share:.1%} of the month's rows quarantined "
                      "(checks.max_quarantine_share)")))
        for table in SILVER_TABLES]
