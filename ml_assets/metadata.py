"""Materialisation metadata: row counts, the column schema, a preview, shown in the Dagster UI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import duckdb

PREVIEW_ROWS = 5


def column_schema(con: duckdb.DuckDBPyConnection, query: str) -> dg.TableSchema:
    relation = con.sql(f"SELECT * FROM ({query}) LIMIT 0")
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(kind)) for name, kind in zip(relation.columns,
                                                                       relation.types, strict=True)]
    )


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        text = "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def preview(con: duckdb.DuckDBPyConnection, query: str, params: Mapping | None = None) -> str:
    result = con.execute(f"SELECT * FROM ({query}) LIMIT {PREVIEW_ROWS}", params or {})
    columns = [d[0] for d in result.description]
    return markdown_table(columns, result.fetchall())
