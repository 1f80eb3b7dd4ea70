"""The catalog opened by the DuckDB command-line client users have (duckdb-cli 1.5.6, a dev
dependency, so `.venv/bin/duckdb`), by the Python duckdb 2.0 read-only, during and after real
runs; and an old catalog, written in DuckDB 2.0's own storage format, migrated in place. The
catalog holds a view per Delta table over its current files, rebuilt (a copy with the changed
views replaced) and renamed into place at the end of every step."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

from ml_assets.demo.generator import generate
from ml_assets.tables import all_tables
from resources.lake import CATALOG_STORAGE_NUMBER, Lake, Table, catalog_storage_number
from tests.conftest import VINTAGE, run_vintage

DUCKDB_CLI = str(Path(sys.executable).parent / "duckdb")
TABLE = Table("gold", "example", "month", ("id",))
JAN, FEB = date(2024, 1, 1), date(2024, 2, 1)


def cli(catalog: Path, sql: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`duckdb -readonly -json <catalog> -c <sql>`, as a user types it."""
    return subprocess.run([DUCKDB_CLI, "-readonly", "-json", str(catalog), "-c", sql],
                          capture_output=True, text=True, timeout=timeout)


def cli_rows(catalog: Path, sql: str) -> list[dict]:
    done = cli(catalog, sql)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else []


def python_rows(catalog: Path, sql: str) -> list[dict]:
    """The same query through the Python duckdb 2.0, read-only, as JSON-shaped dicts."""
    with duckdb.connect(str(catalog), read_only=True) as con:
        result = con.execute(sql)
        columns = [d[0] for d in result.description]
        return [{c: v.isoformat() if isinstance(v, date) else v
                 for c, v in zip(columns, row, strict=True)} for row in result.fetchall()]


def publish(lake: Lake, table: Table, rows: list[tuple], months: list[date],
            tables: list[Table] | None = None) -> None:
    """Publish the rows, then rebuild the catalog as a step does at its end."""
    with duckdb.connect() as con:
        con.execute("CREATE TEMP TABLE input (id INTEGER, month DATE, value VARCHAR)")
        if rows:
            con.executemany("INSERT INTO input VALUES (?, ?, ?)", rows)
        lake.publish(con, table, "SELECT * FROM input", months)
    lake.refresh_catalog(tables or [table], changed=[table])


def write_catalog_in_duckdb_2_format(lake: Lake, views: list[str]) -> None:
    """A catalog as the platform wrote it before: DuckDB 2.0's default storage format."""
    lake.catalog.unlink(missing_ok=True)
    with duckdb.connect(str(lake.catalog)) as con:
        for schema in ("raw", "silver", "gold", "ml", "monitoring"):
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for statement in views:
            con.execute(statement)
    assert catalog_storage_number(lake.catalog) != CATALOG_STORAGE_NUMBER


def test_the_cli_is_duckdb_1_5():
    done = subprocess.run([DUCKDB_CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("v1.5."), done.stdout


def test_the_cli_reads_the_catalog_as_python_does(tmp_path):
    lake = Lake(uri=str(tmp_path / "wh"))
    publish(lake, TABLE, [(1, JAN, "a"), (2, FEB, "it's")], [JAN, FEB])
    assert catalog_storage_number(lake.catalog) == CATALOG_STORAGE_NUMBER
    sql = "SELECT id, month, value FROM gold.example ORDER BY id"
    assert cli_rows(lake.catalog, sql) == python_rows(lake.catalog, sql) == [
        {"id": 1, "month": "2024-01-01", "value": "a"},
        {"id": 2, "month": "2024-02-01", "value": "it's"}]
    # a new month shows once the step that published it has rebuilt the catalog
    publish(lake, TABLE, [(3, date(2024, 3, 1), "c")], [date(2024, 3, 1)])
    assert cli_rows(lake.catalog, "SELECT count(*) AS n FROM gold.example") == [{"n": 3}]


def test_a_catalog_in_duckdb_2_format_is_rebuilt_at_the_next_step(tmp_path):
    lake = Lake(uri=str(tmp_path / "wh"))
    other = Table("silver", "other", "month", ("id",))
    publish(lake, TABLE, [(1, JAN, "a")], [JAN], [TABLE, other])
    publish(lake, other, [(7, JAN, "x")], [JAN], [TABLE, other])
    write_catalog_in_duckdb_2_format(lake, [lake.view_sql(TABLE)])
    refused = cli(lake.catalog, "SELECT 1")
    assert refused.returncode != 0
    assert "version number 69" in refused.stderr
    publish(lake, TABLE, [(2, FEB, "b")], [FEB], [TABLE, other])
    assert catalog_storage_number(lake.catalog) == CATALOG_STORAGE_NUMBER
    assert cli_rows(lake.catalog, "SELECT count(*) AS n FROM gold.example") == [{"n": 2}]
    # rebuilt with every table's view, including one the old catalog lacked
    assert cli_rows(lake.catalog, "SELECT id FROM silver.other") == [{"id": 7}]
    assert not list(lake.catalog.parent.glob(".catalog-draft-*"))


def test_a_missing_catalog_is_rebuilt_at_the_next_step(tmp_path):
    lake = Lake(uri=str(tmp_path / "wh"))
    publish(lake, TABLE, [(1, JAN, "a")], [JAN])
    lake.catalog.unlink()
    publish(lake, TABLE, [(2, FEB, "b")], [FEB])
    assert python_rows(lake.catalog, "SELECT count(*) AS n FROM gold.example") == [{"n": 2}]


def test_readers_never_see_a_half_written_catalog(tmp_path):
    """The CLI and Python open the catalog over and over while it is rebuilt over and over:
    every open succeeds and sees every view."""
    lake = Lake(uri=str(tmp_path / "wh"))
    tables = [TABLE, *(Table("silver", f"table_{index}", "month", ("id",))
                       for index in range(20))]  # a catalog of some size
    for index, table in enumerate(tables):
        publish(lake, table, [(index, JAN, "x")], [JAN], tables)
    stop, rebuilds, errors = threading.Event(), [], []

    def rebuild():
        while not stop.is_set():
            try:
                assert lake.refresh_catalog(tables)
                rebuilds.append(1)
            except Exception as error:  # noqa: BLE001 - reported by the assertion below
                errors.append(error)

    worker = threading.Thread(target=rebuild)
    worker.start()
    try:
        queries = 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline or queries < 20:
            assert cli_rows(lake.catalog,
                            "SELECT count(*) AS n FROM silver.table_19") == [{"n": 1}]
            assert python_rows(lake.catalog,
                               "SELECT count(*) AS n FROM gold.example") == [{"n": 1}]
            queries += 1
    finally:
        stop.set()
        worker.join()
    assert not errors, errors
    assert len(rebuilds) >= 10, f"only {len(rebuilds)} rebuilds during {queries} queries"
    assert not list(lake.catalog.parent.glob(".catalog-draft-*"))


def test_a_held_rebuild_lock_leaves_the_catalog_as_it_was(tmp_path):
    lake = Lake(uri=str(tmp_path / "wh"))
    publish(lake, TABLE, [(1, JAN, "a")], [JAN])
    before = lake.catalog.read_bytes()
    with open(lake.catalog.parent / ".catalog.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process rebuilding
        assert lake.refresh_catalog([TABLE], wait_seconds=0.3) is False
    assert lake.catalog.read_bytes() == before
    assert lake.refresh_catalog([TABLE], wait_seconds=0.3) is True


MONTHS_BEFORE = ["--from", "2023-01", "--to", "2023-03", "--select",
                 "group:raw or group:silver or key:gold/label_store or key:gold/feature_store"]


@pytest.mark.slow
def test_the_cli_queries_the_catalog_during_and_after_a_run(tmp_path):
    """A real `vintage run` over a warehouse whose catalog an older version wrote in DuckDB 2.0's
    format: the run migrates it and adds the views of its new tables, while the CLI and Python
    query it the whole time; every query succeeds, and afterwards both return the same rows."""
    generate(tmp_path / "src", scale=0.02, seed=8)
    env = {"DAGSTER_HOME": str(tmp_path / "home")}
    paths = ["--source", str(tmp_path / "src"), "--warehouse", str(tmp_path / "wh")]
    done = run_vintage("run", *paths, *MONTHS_BEFORE, env=env)
    assert done.returncode == 0, done.stderr
    lake = Lake(uri=str(tmp_path / "wh"))
    write_catalog_in_duckdb_2_format(lake, [v for v in map(lake.view_sql, all_tables()) if v])
    catalog = lake.catalog

    run = subprocess.Popen([VINTAGE, "run", *paths, "--from", "2023-01", "--to", "2024-03"],
                           env={**os.environ, **env}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    failures, counts, migrated_at = [], [], None
    try:
        while run.poll() is None:
            sql = "SELECT count(*) AS n FROM gold.feature_store"
            if catalog_storage_number(catalog) == CATALOG_STORAGE_NUMBER:
                migrated_at = migrated_at or len(counts)
                queried = cli(catalog, sql)
                if queried.returncode != 0:
                    failures.append(queried.stderr)
                else:
                    counts.append(json.loads(queried.stdout)[0]["n"])
            with duckdb.connect(str(catalog), read_only=True) as con:
                con.execute(sql).fetchall()
            time.sleep(0.2)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr
    assert not failures, failures[:3]
    assert len(counts) >= 10, f"only {len(counts)} CLI queries during the run"
    assert counts == sorted(counts)  # months only ever appear
    sql = ("SELECT loan_id, application_month, model_version, score, decision "
           "FROM gold.predictions ORDER BY loan_id")
    rows = cli_rows(catalog, sql)
    assert rows and rows == python_rows(catalog, sql)
    views = cli_rows(catalog, "SELECT schema_name || '.' || view_name AS name FROM "
                              "duckdb_views() WHERE NOT internal ORDER BY 1")
    assert [v["name"] for v in views] == sorted(
        t.qualified_name for t in all_tables() if lake.version(t) is not None)
    assert {"ml.model_registry", "monitoring.summary"} <= {v["name"] for v in views}


def test_vintage_catalog_refresh_migrates_an_old_catalog(tmp_path):
    lake = Lake(uri=str(tmp_path / "wh"))
    example = Table("gold", "feature_store", "application_month", ("loan_id",))
    with duckdb.connect() as con:
        lake.publish(con, example, "SELECT 'L1' AS loan_id, DATE '2024-01-01' AS "
                                   "application_month", [JAN])
    write_catalog_in_duckdb_2_format(lake, [])
    done = run_vintage("catalog", "refresh", "--warehouse", str(tmp_path / "wh"),
                       env={"DAGSTER_HOME": str(tmp_path / "home")}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"catalog refreshed: {lake.catalog}" in done.stdout
    assert catalog_storage_number(lake.catalog) == CATALOG_STORAGE_NUMBER
    assert cli_rows(lake.catalog, "SELECT loan_id FROM gold.feature_store") == [
        {"loan_id": "L1"}]


def test_a_step_replaces_only_the_views_that_changed_and_picks_up_any_left_behind(tmp_path):
    other = Table("gold", "other", "month", ("id",))
    lake = Lake(uri=str(tmp_path / "warehouse"))
    publish(lake, TABLE, [(1, JAN, "a")], [JAN], [TABLE, other])
    publish(lake, other, [(7, JAN, "x")], [JAN], [TABLE, other])
    assert catalog_storage_number(lake.catalog) == CATALOG_STORAGE_NUMBER
    # a writer that committed and recorded its view but never rebuilt (killed, or timed out
    # waiting for the lock): the next step's rebuild, of another table, brings its view in
    with duckdb.connect() as con:
        lake.publish(con, other, "SELECT 8 AS id, DATE '2024-02-01' AS month, 'y' AS value",
                     [FEB])
    lake._record_view(lake.catalog.parent / ".views", other)
    publish(lake, TABLE, [(2, FEB, "b")], [FEB], [TABLE, other])
    assert cli_rows(lake.catalog, "SELECT id FROM gold.other ORDER BY id") == [
        {"id": 7}, {"id": 8}]
    assert cli_rows(lake.catalog, "SELECT id FROM gold.example ORDER BY id") == [
        {"id": 1}, {"id": 2}]
    assert catalog_storage_number(lake.catalog) == CATALOG_STORAGE_NUMBER
    # a catalog in another format (or none) is written anew, every view in it
    write_catalog_in_duckdb_2_format(lake, [])
    publish(lake, TABLE, [(3, FEB, "c")], [FEB], [TABLE, other])
    assert catalog_storage_number(lake.catalog) == CATALOG_STORAGE_NUMBER
    assert python_rows(lake.catalog, "SELECT count(*) AS n FROM gold.other") == [{"n": 2}]
