"""The Delta lake: a step's months published as one commit, whole or not at all, replaced
exactly, an added column noted and a changed type refused, old versions readable, the catalog
rebuilt over the current files; two writers on different months and a writer killed mid-commit
(local folder; tests/test_s3.py does the same on a real S3 server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import date

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable

from resources.lake import Lake, LakeError, Table

TABLE = Table("gold", "example", "month", ("id",))
DATED = Table("silver", "dated", "snapshot_date", ("id",))
JAN, FEB, MAR = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)


def rows_query(con, rows, extra: str = ""):
    con.execute(f"CREATE OR REPLACE TEMP TABLE input (id INTEGER, month DATE, value VARCHAR"
                f"{extra})")
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        con.executemany(f"INSERT INTO input VALUES ({marks})", rows)
    return "SELECT * FROM input"


@pytest.fixture
def lake(tmp_path):
    return Lake(uri=str(tmp_path / "wh"))


@pytest.fixture
def con():
    with duckdb.connect() as connection:
        yield connection


def catalog_rows(lake, sql="SELECT id, month, value FROM gold.example ORDER BY ALL"):
    lake.refresh_catalog([TABLE, DATED])
    with duckdb.connect(str(lake.catalog), read_only=True) as con:
        return con.execute(sql).fetchall()


def read_rows(lake, table=TABLE, months=None, version=None, columns="*"):
    with duckdb.connect() as con:
        lake.read(con, "t", table, months, version)
        return con.execute(f"SELECT {columns} FROM t ORDER BY ALL").fetchall()


def test_publish_months_as_one_commit_and_read_them(lake, con, tmp_path):
    counts = lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a"), (2, FEB, "b")]),
                          [JAN, FEB, MAR], run_id="run-1")
    assert counts == {JAN: 1, FEB: 1, MAR: 0}
    assert lake.version(TABLE) == 0
    assert lake.published_months(TABLE) == [JAN, FEB, MAR]  # March published empty
    assert lake.commit_metadata(TABLE, 0)["months"] == ["2024-01-01", "2024-02-01",
                                                        "2024-03-01"]
    assert lake.commit_metadata(TABLE, 0)["run_id"] == "run-1"
    assert read_rows(lake, months=[MAR]) == []
    assert catalog_rows(lake) == [(1, JAN, "a"), (2, FEB, "b")]
    os.chdir(tmp_path.parent)  # the views hold absolute paths: any working directory works
    assert len(catalog_rows(lake)) == 2
    # every engine reads the same table: delta-rs and polars
    assert DeltaTable(lake.table_uri(TABLE)).to_pyarrow_table().num_rows == 2
    assert pl.scan_delta(lake.table_uri(TABLE)).collect().height == 2


def test_republishing_a_month_replaces_exactly_that_month(lake, con):
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a"), (2, FEB, "b")]), [JAN, FEB])
    lake.publish(con, TABLE, rows_query(con, [(3, JAN, "c"), (4, JAN, "d")]), [JAN])
    assert read_rows(lake) == [(2, FEB, "b"), (3, JAN, "c"), (4, JAN, "d")]
    lake.publish(con, TABLE, rows_query(con, []), [FEB])  # February published empty
    assert read_rows(lake) == [(3, JAN, "c"), (4, JAN, "d")]
    assert lake.published_months(TABLE) == [JAN, FEB]
    assert lake.version(TABLE) == 2


def test_a_table_dated_within_its_month_is_partitioned_by_the_month(lake, con):
    con.execute("CREATE TABLE src AS SELECT 1 AS id, DATE '2024-01-15' AS snapshot_date "
                "UNION ALL SELECT 2, DATE '2024-02-01'")
    assert lake.publish(con, DATED, "SELECT * FROM src", [JAN, FEB]) == {JAN: 1, FEB: 1}
    with duckdb.connect() as reader:  # read as the table's own columns: no partition column
        lake.read(reader, "t", DATED, [JAN])
        assert reader.execute("SELECT * FROM t").fetchall() == [(1, date(2024, 1, 15))]
    assert catalog_rows(lake, "SELECT id, month FROM silver.dated ORDER BY id") == [
        (1, JAN), (2, FEB)]


def test_a_publication_in_groups_commits_every_month_at_the_end_or_none(lake, con):
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "old")]), [JAN])
    with lake.publication(TABLE) as publication:
        assert publication.stage(con, rows_query(con, [(1, JAN, "a")]), [JAN]) == {JAN: 1}
        assert read_rows(lake) == [(1, JAN, "old")]  # staged, not yet published
        publication.stage(con, rows_query(con, [(2, FEB, "b"), (3, FEB, "c")]), [FEB])
        with pytest.raises(LakeError, match="staged twice"):
            publication.stage(con, rows_query(con, [(4, FEB, "d")]), [FEB])
    assert publication.counts == {JAN: 1, FEB: 2}
    assert lake.version(TABLE) == 1  # one commit for both groups
    assert read_rows(lake) == [(1, JAN, "a"), (2, FEB, "b"), (3, FEB, "c")]

    with (pytest.raises(RuntimeError, match="second group failed"),
          lake.publication(TABLE) as publication):
        publication.stage(con, rows_query(con, [(9, JAN, "new")]), [JAN])
        raise RuntimeError("second group failed")
    assert lake.version(TABLE) == 1
    assert not list((lake.work / "staging").iterdir())


def test_rows_outside_the_months_publish_nothing(lake, con):
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    with pytest.raises(LakeError, match="rows dated 2024-02, outside the months"):
        lake.publish(con, TABLE, rows_query(con, [(9, JAN, "x"), (2, FEB, "b")]), [JAN])
    with pytest.raises(LakeError, match="1 rows with no month"):
        lake.publish(con, TABLE, rows_query(con, [(9, None, "x")]), [JAN])
    assert lake.version(TABLE) == 0 and read_rows(lake) == [(1, JAN, "a")]


def test_a_new_column_is_added_and_a_changed_type_refused(lake, con):
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    with lake.publication(TABLE) as publication:
        publication.stage(con, rows_query(con, [(2, FEB, "b", 0.5)], ", score DOUBLE"), [FEB])
    assert publication.added_columns == ["score"]
    assert read_rows(lake, columns="id, month, value, score") == [(1, JAN, "a", None),
                                                                  (2, FEB, "b", 0.5)]
    con.execute("CREATE OR REPLACE TEMP TABLE retyped AS "
                "SELECT 3 AS id, DATE '2024-03-01' AS month, 3 AS value")
    with pytest.raises(LakeError, match=r"gold.example: a column's type changed \(value was "
                                        r"string, now integer\): refused"):
        lake.publish(con, TABLE, "SELECT * FROM retyped", [MAR])
    assert lake.version(TABLE) == 1


def test_old_versions_read_as_they_were(lake, con):
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "b")]), [JAN])
    assert read_rows(lake, version=0) == [(1, JAN, "a")]
    assert read_rows(lake) == [(1, JAN, "b")]
    assert pl.scan_delta(lake.table_uri(TABLE), version=0).collect()["value"].to_list() == ["a"]
    with pytest.raises(LakeError, match="no version 7"):
        read_rows(lake, version=7)


def test_vacuum_keeps_every_version_within_the_retention(lake, con, tmp_path):
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "b")]), [JAN])
    assert lake.vacuum(TABLE) == []  # 30 days by default: version 0's file stays
    assert read_rows(lake, version=0) == [(1, JAN, "a")]
    impatient = Lake(uri=lake.uri, retention_days=0)
    removed = impatient.vacuum(TABLE)
    assert len(removed) == 1
    assert read_rows(lake) == [(1, JAN, "b")]


def test_reading_an_unpublished_month_is_an_error(lake, con):
    with pytest.raises(LakeError, match=r"gold.example has no published month 2024-01 \(no "
                                        r"month at all yet\)"):
        read_rows(lake, months=[JAN])
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    with pytest.raises(LakeError, match="gold.example has no published month 2024-02"):
        read_rows(lake, months=[JAN, FEB])


def test_a_user_holding_the_catalog_blocks_no_publish(lake, con):
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    lake.refresh_catalog([TABLE])
    holder = duckdb.connect(str(lake.catalog))  # read-write, as a user's shell
    try:
        started = time.monotonic()
        lake.publish(con, TABLE, rows_query(con, [(2, FEB, "b")]), [FEB])
        assert lake.refresh_catalog([TABLE], changed=[TABLE])
        assert time.monotonic() - started < 10
    finally:
        holder.close()
    assert len(catalog_rows(lake)) == 2


def test_a_catalog_written_before_a_schema_existed_gains_it(lake, con):
    curve = Table("analytics", "curve", "month", ("id",))
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    lake.refresh_catalog([TABLE, curve])
    with duckdb.connect(str(lake.catalog)) as old:  # as the catalog of an earlier version
        old.execute("DROP SCHEMA analytics")
    lake.publish(con, curve, rows_query(con, [(2, JAN, "b")]), [JAN])
    assert lake.refresh_catalog([TABLE, curve], changed=[curve])
    with duckdb.connect(str(lake.catalog), read_only=True) as reader:
        assert reader.execute("SELECT id FROM analytics.curve").fetchall() == [(2,)]
        assert reader.execute("SELECT id FROM gold.example").fetchall() == [(1,)]


def test_an_empty_table_has_a_typed_view(lake, con):
    lake.publish(con, TABLE, rows_query(con, []), [JAN])
    assert catalog_rows(lake) == []
    with duckdb.connect(str(lake.catalog), read_only=True) as reader:
        types = dict(reader.execute("SELECT column_name, data_type FROM information_schema."
                                    "columns WHERE table_name = 'example'").fetchall())
    assert types == {"id": "INTEGER", "month": "DATE", "value": "VARCHAR"}


WRITER = textwrap.dedent("""
    import sys
    from datetime import date
    import duckdb
    from resources.lake import Lake, Table
    lake = Lake(uri=sys.argv[1])
    table = Table("gold", "example", "month", ("id",))
    year, rows = int(sys.argv[2]), int(sys.argv[3])
    with duckdb.connect() as con:
        for month in range(1, 13):
            first = date(year, month, 1)
            lake.publish(con, table, f"SELECT i AS id, DATE '{first}' AS month, "
                         f"(i * 7919 % 1000003)::VARCHAR AS value FROM range({rows}) t(i)",
                         [first])
            print(first, flush=True)
""")


def writer(lake: Lake, year: int, rows: int = 10) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, lake.uri, str(year), str(rows)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


@pytest.mark.slow
def test_two_writers_on_different_months_both_land_every_commit(lake, con):
    lake.publish(con, TABLE, rows_query(con, []), [date(2022, 1, 1)])  # the table exists
    writers = [writer(lake, 2023), writer(lake, 2024)]
    for process in writers:
        assert process.wait(timeout=300) == 0
    months = lake.published_months(TABLE)
    assert len(months) == 25 and lake.version(TABLE) == 24
    counts = read_rows(lake, months=None)
    assert len(counts) == 24 * 10


@pytest.mark.slow
def test_a_writer_killed_mid_commit_leaves_the_table_unchanged(lake, con):
    lake.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER.replace("range(1, 13)", "[1]"), lake.uri, "2024",
         "30000000"], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    staging = lake.work / "staging"
    deadline = time.monotonic() + 120
    while not any(staging.rglob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # staged, and writing the Delta files of the commit now
    assert process.poll() is None, "the writer finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert lake.version(TABLE) == 0
    assert read_rows(lake) == [(1, JAN, "a")]
    # the next publish clears the dead writer's staging and succeeds
    lake.publish(con, TABLE, rows_query(con, [(5, JAN, "e")]), [JAN])
    assert read_rows(lake) == [(5, JAN, "e")]
    assert [p for p in staging.iterdir()] == []


def test_a_column_without_nulls_in_its_first_months_takes_nulls_later(lake, con):
    # DuckDB writes a column no row leaves empty as required; the table must not inherit that
    lake.publish(con, TABLE, "SELECT 1 AS id, DATE '2024-01-01' AS month, 'a' AS value", [JAN])
    lake.publish(con, TABLE, "SELECT 2 AS id, DATE '2024-02-01' AS month, NULL::VARCHAR AS value",
                 [FEB])
    with lake.publication(TABLE) as publication:  # and across the groups of one step
        publication.stage(con, "SELECT 3 AS id, DATE '2024-03-01' AS month, 'c' AS value", [MAR])
        publication.stage(con, "SELECT 4 AS id, DATE '2024-04-01' AS month, NULL AS value",
                          [date(2024, 4, 1)])
    assert read_rows(lake, columns="id, value") == [(1, "a"), (2, None), (3, "c"), (4, None)]
