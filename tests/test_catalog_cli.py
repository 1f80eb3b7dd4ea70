"""The catalog opened by the DuckDB command-line client users have (duckdb-cli 1.5.6, a dev
dependency, so `.venv/bin/duckdb`), by the Python duckdb 2.0 read-only, during and after real
runs; and an old catalog, written in DuckDB 2.0's own storage format, migrated in place."""

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
from resources.warehouse import (
    CATALOG_STORAGE_NUMBER,
    Table,
    Warehouse,
    catalog_storage_number,
)
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


def publish(warehouse: Warehouse, table: Table, rows: list[tuple], months: list[date]) -> None:
    with warehouse.connect() as con:
        con.execute("CREATE TEMP TABLE input (id INTEGER, month DATE, value VARCHAR)")
        if rows:
            con.executemany("INSERT INTO input VALUES (?, ?, ?)", rows)
        warehouse.publish(con, table, "SELECT * FROM input", months)


def write_catalog_in_duckdb_2_format(warehouse: Warehouse, views: dict[str, str]) -> None:
    """A catalog as the platform wrote it before: DuckDB 2.0's default storage format."""
    warehouse.catalog_path.unlink(missing_ok=True)
    with duckdb.connect(str(warehouse.catalog_path)) as con:
        for schema in ("raw", "silver", "gold", "ml", "monitoring"):
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for statement in views.values():
            con.execute(statement)
    assert catalog_storage_number(warehouse.catalog_path) != CATALOG_STORAGE_NUMBER


def test_the_cli_is_duckdb_1_5():
    done = subprocess.run([DUCKDB_CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("v1.5."), done.stdout


def test_the_cli_reads_the_catalog_as_python_does(tmp_path):
    warehouse = Warehouse(path=str(tmp_path / "wh"))
    publish(warehouse, TABLE, [(1, JAN, "a"), (2, FEB, "it's")], [JAN, FEB])
    assert catalog_storage_number(warehouse.catalog_path) == CATALOG_STORAGE_NUMBER
    sql = "SELECT id, month, value FROM gold.example ORDER BY id"
    assert cli_rows(warehouse.catalog_path, sql) == python_rows(warehouse.catalog_path, sql) == [
        {"id": 1, "month": "2024-01-01", "value": "a"},
        {"id": 2, "month": "2024-02-01", "value": "it's"}]
    # a new month of a known table shows in the view without a rebuild
    before = warehouse.catalog_path.stat().st_mtime_ns
    publish(warehouse, TABLE, [(3, date(2024, 3, 1), "c")], [date(2024, 3, 1)])
    assert warehouse.catalog_path.stat().st_mtime_ns == before
    assert cli_rows(warehouse.catalog_path, "SELECT count(*) AS n FROM gold.example") == [
        {"n": 3}]


def test_a_catalog_in_duckdb_2_format_is_rebuilt_at_the_next_publish(tmp_path):
    warehouse = Warehouse(path=str(tmp_path / "wh"))
    publish(warehouse, TABLE, [(1, JAN, "a")], [JAN])
    other = Table("silver", "other", "month", ("id",))
    publish(warehouse, other, [(7, JAN, "x")], [JAN])
    write_catalog_in_duckdb_2_format(warehouse, {"gold.example": warehouse.view_sql(TABLE)})
    refused = cli(warehouse.catalog_path, "SELECT 1")
    assert refused.returncode != 0
    assert "version number 69" in refused.stderr
    # the next month of a known table, whose view is unchanged, still migrates the catalog
    publish(warehouse, TABLE, [(2, FEB, "b")], [FEB])
    assert catalog_storage_number(warehouse.catalog_path) == CATALOG_STORAGE_NUMBER
    assert cli_rows(warehouse.catalog_path, "SELECT count(*) AS n FROM gold.example") == [
        {"n": 2}]
    # rebuilt from the lake: every table's view, including one the old catalog lacked
    assert cli_rows(warehouse.catalog_path, "SELECT id FROM silver.other") == [{"id": 7}]
    assert not list(warehouse.root.glob(".catalog-draft-*"))


def test_a_missing_catalog_is_rebuilt_at_the_next_publish(tmp_path):
    warehouse = Warehouse(path=str(tmp_path / "wh"))
    publish(warehouse, TABLE, [(1, JAN, "a")], [JAN])
    warehouse.catalog_path.unlink()
    publish(warehouse, TABLE, [(2, FEB, "b")], [FEB])
    assert python_rows(warehouse.catalog_path, "SELECT count(*) AS n FROM gold.example") == [
        {"n": 2}]


def test_readers_never_see_a_half_written_catalog(tmp_path):
    """The CLI and Python open the catalog over and over while it is rebuilt over and over:
    every open succeeds and sees every view."""
    warehouse = Warehouse(path=str(tmp_path / "wh"))
    publish(warehouse, TABLE, [(1, JAN, "a")], [JAN])
    for index in range(20):  # a catalog of some size, so a rebuild takes a while
        publish(warehouse, Table("silver", f"table_{index}", "month", ("id",)),
                [(index, JAN, "x")], [JAN])
    stop, rebuilds, errors = threading.Event(), [], []

    def rebuild():
        while not stop.is_set():
            try:
                assert warehouse.refresh_catalog()
                rebuilds.append(1)
            except Exception as error:  # noqa: BLE001 - reported by the assertion below
                errors.append(error)

    worker = threading.Thread(target=rebuild)
    worker.start()
    try:
        queries = 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline or queries < 20:
            assert cli_rows(warehouse.catalog_path,
                            "SELECT count(*) AS n FROM silver.table_19") == [{"n": 1}]
            assert python_rows(warehouse.catalog_path,
                               "SELECT count(*) AS n FROM gold.example") == [{"n": 1}]
            queries += 1
    finally:
        stop.set()
        worker.join()
    assert not errors, errors
    assert len(rebuilds) >= 10, f"only {len(rebuilds)} rebuilds during {queries} queries"
    assert not list(warehouse.root.glob(".catalog-draft-*"))


def test_a_held_rebuild_lock_leaves_the_catalog_as_it_was(tmp_path):
    warehouse = Warehouse(path=str(tmp_path / "wh"))
    publish(warehouse, TABLE, [(1, JAN, "a")], [JAN])
    before = warehouse.catalog_path.read_bytes()
    with open(warehouse.root / ".catalog.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process rebuilding
        assert warehouse.refresh_catalog(wait_seconds=0.3) is False
    assert warehouse.catalog_path.read_bytes() == before
    assert warehouse.refresh_catalog(wait_seconds=0.3) is True


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
    warehouse = Warehouse(path=str(tmp_path / "wh"))
    write_catalog_in_duckdb_2_format(warehouse, warehouse.catalog_views())
    catalog = warehouse.catalog_path

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
    assert [v["name"] for v in views] == sorted(warehouse.catalog_views())
    assert {"ml.model_registry", "monitoring.summary"} <= {v["name"] for v in views}


def test_vintage_catalog_refresh_migrates_an_old_catalog(tmp_path):
    warehouse = Warehouse(path=str(tmp_path / "wh"))
    publish(warehouse, TABLE, [(1, JAN, "a")], [JAN])
    write_catalog_in_duckdb_2_format(warehouse, {})
    done = run_vintage("catalog", "refresh", "--warehouse", str(tmp_path / "wh"),
                       env={"DAGSTER_HOME": str(tmp_path / "home")}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"catalog refreshed: {warehouse.catalog_path}" in done.stdout
    assert catalog_storage_number(warehouse.catalog_path) == CATALOG_STORAGE_NUMBER
    assert cli_rows(warehouse.catalog_path, "SELECT id FROM gold.example") == [{"id": 1}]
