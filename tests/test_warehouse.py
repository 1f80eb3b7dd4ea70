"""Publishing a month: whole or not at all, replaced exactly, readable through the catalog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import date

import duckdb
import pytest

from resources.warehouse import Table, Warehouse, WarehouseError

TABLE = Table("gold", "example", "month", ("id",))
JAN, FEB, MAR = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)


def rows_query(con, rows):
    con.execute("CREATE OR REPLACE TEMP TABLE input (id INTEGER, month DATE, value VARCHAR)")
    if rows:
        con.executemany("INSERT INTO input VALUES (?, ?, ?)", rows)
    return "SELECT * FROM input"


@pytest.fixture
def warehouse(tmp_path):
    return Warehouse(path=str(tmp_path / "wh"))


def catalog_rows(warehouse, sql="SELECT id, month, value FROM gold.example ORDER BY ALL"):
    with duckdb.connect(str(warehouse.catalog_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_publish_months_and_read_them_from_the_catalog(warehouse, tmp_path):
    con = warehouse.connect()
    counts = warehouse.publish(con, TABLE, rows_query(con, [(1, JAN, "a"), (2, FEB, "b")]),
                               [JAN, FEB, MAR])
    assert counts == {JAN: 1, FEB: 1, MAR: 0}
    assert warehouse.published_months(TABLE) == [JAN, FEB, MAR]
    assert catalog_rows(warehouse) == [(1, JAN, "a"), (2, FEB, "b")]
    os.chdir(tmp_path.parent)  # the views hold absolute paths: any working directory works
    assert len(catalog_rows(warehouse)) == 2


def test_republishing_a_month_replaces_it_exactly(warehouse):
    con = warehouse.connect()
    warehouse.publish(con, TABLE, rows_query(con, [(1, JAN, "a"), (2, FEB, "b")]), [JAN, FEB])
    warehouse.publish(con, TABLE, rows_query(con, [(3, JAN, "c"), (4, JAN, "d")]), [JAN])
    assert catalog_rows(warehouse) == [(2, FEB, "b"), (3, JAN, "c"), (4, JAN, "d")]
    warehouse.publish(con, TABLE, rows_query(con, [(3, JAN, "c"), (4, JAN, "d")]), [JAN])
    assert catalog_rows(warehouse) == [(2, FEB, "b"), (3, JAN, "c"), (4, JAN, "d")]


def test_a_publication_in_groups_publishes_all_months_at_the_end_or_none(warehouse):
    con = warehouse.connect()
    warehouse.publish(con, TABLE, rows_query(con, [(1, JAN, "old")]), [JAN])
    with warehouse.publication(TABLE) as publication:
        assert publication.stage(con, rows_query(con, [(1, JAN, "a")]), [JAN]) == {JAN: 1}
        assert catalog_rows(warehouse) == [(1, JAN, "old")]  # staged, not yet published
        publication.stage(con, rows_query(con, [(2, FEB, "b"), (3, FEB, "c")]), [FEB])
        with pytest.raises(WarehouseError, match="staged twice"):
            publication.stage(con, rows_query(con, [(4, FEB, "d")]), [FEB])
    assert publication.counts == {JAN: 1, FEB: 2}
    assert catalog_rows(warehouse) == [(1, JAN, "a"), (2, FEB, "b"), (3, FEB, "c")]

    with (pytest.raises(RuntimeError, match="second group failed"),
          warehouse.publication(TABLE) as publication):
        publication.stage(con, rows_query(con, [(9, JAN, "new")]), [JAN])
        raise RuntimeError("second group failed")
    assert catalog_rows(warehouse) == [(1, JAN, "a"), (2, FEB, "b"), (3, FEB, "c")]
    assert not any((warehouse.table_dir(TABLE) / ".staging").iterdir())


def test_rows_outside_the_months_publish_nothing(warehouse):
    con = warehouse.connect()
    warehouse.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    before = warehouse.month_file(TABLE, JAN).read_bytes()
    with pytest.raises(WarehouseError, match="rows dated 2024-02"):
        warehouse.publish(con, TABLE, rows_query(con, [(9, JAN, "x"), (2, FEB, "b")]), [JAN])
    assert warehouse.month_file(TABLE, JAN).read_bytes() == before
    assert not list((warehouse.table_dir(TABLE) / ".staging").iterdir())


def test_a_failing_query_leaves_published_months_untouched(warehouse):
    con = warehouse.connect()
    warehouse.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    before = warehouse.month_file(TABLE, JAN).read_bytes()
    with pytest.raises(duckdb.Error):
        warehouse.publish(con, TABLE, "SELECT 1/0 AS id, error('boom') AS month", [JAN])
    assert warehouse.month_file(TABLE, JAN).read_bytes() == before


def test_a_user_holding_the_catalog_blocks_no_publish(warehouse):
    con = warehouse.connect()
    warehouse.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    holder = duckdb.connect(str(warehouse.catalog_path))  # read-write, as a user's shell
    try:
        started = time.monotonic()
        warehouse.publish(con, TABLE, rows_query(con, [(2, FEB, "b")]), [FEB])
        assert time.monotonic() - started < 10
        # new months appear in the existing view without rewriting the catalog
        assert holder.execute("SELECT count(*) FROM gold.example").fetchone() == (2,)
    finally:
        holder.close()


def test_reading_an_unpublished_month_is_an_error(warehouse):
    con = warehouse.connect()
    warehouse.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    with pytest.raises(WarehouseError, match="gold.example has no published month 2024-02"):
        warehouse.register_input(con, "example", TABLE, [JAN, FEB])


KILLED_WRITER = textwrap.dedent("""
    import sys
    from datetime import date
    from resources.warehouse import Table, Warehouse
    warehouse = Warehouse(path=sys.argv[1])
    con = warehouse.connect()
    table = Table("gold", "example", "month", ("id",))
    print("writing", flush=True)
    warehouse.publish(con, table, "SELECT i AS id, DATE '2024-01-01' AS month, "
                      "(i * 7919 % 1000003)::VARCHAR AS value FROM range(40000000) t(i)",
                      [date(2024, 1, 1)])
""")


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_the_month_whole(warehouse):
    con = warehouse.connect()
    warehouse.publish(con, TABLE, rows_query(con, [(1, JAN, "a")]), [JAN])
    before = warehouse.month_file(TABLE, JAN).read_bytes()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, warehouse.path],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    staging = warehouse.table_dir(TABLE) / ".staging"
    deadline = time.monotonic() + 60
    while not any(staging.rglob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the Parquet file is being written now (about 3 s of work)
    assert writer.poll() is None, "the writer finished before it could be killed"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert warehouse.month_file(TABLE, JAN).read_bytes() == before
    assert catalog_rows(warehouse) == [(1, JAN, "a")]
    # the next publish cleans the dead writer's staging folder and succeeds
    warehouse.publish(con, TABLE, rows_query(con, [(5, JAN, "e")]), [JAN])
    assert catalog_rows(warehouse) == [(5, JAN, "e")]
    assert [p.name for p in staging.iterdir()] == []
