"""Running a transform of sql/ on in-memory tables: an in-memory DuckDB connection with the
shared macros (sql/macros.sql), the inputs registered as views. The unit tests run each SQL
file this way on hand-made frames; the scoring service (ml_assets.serving) prepares the silver
and feature-store SQL once on such a connection and runs it for every application."""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import pyarrow as pa

from resources.lake import sql_text


def transform_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the macros every transform uses."""
    con = duckdb.connect()
    con.execute(sql_text("macros"))
    return con


def run_transform(con: duckdb.DuckDBPyConnection, sql_name: str, inputs: Mapping[str, pa.Table],
                  params: Mapping | None = None) -> duckdb.DuckDBPyConnection:
    """`sql/<sql_name>.sql` run in `con` over `inputs` (view name -> table); the result to
    fetch from."""
    for view, table in inputs.items():
        con.register(view, table)
    return con.execute(sql_text(sql_name), dict(params or {}))
