"""The lake and its catalog: the one place that publishes a month and refreshes the views.

Every table is a folder of monthly Parquet files, `<warehouse>/<schema>/<table>/month=YYYY-MM/
part-0.parquet`. A computation writes its months into a hidden staging folder beside them and
renames each finished file into place, so a reader sees a month whole, old or new, never half
written, and two processes can publish different months of a table at the same time.
`<warehouse>/catalog.duckdb` holds one view per table over its folder; new months show up in the
views without touching the catalog file, so a user holding it open blocks nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq

from ml_assets.months import folder_label, parse_month
from ml_assets.settings import SQL_DIR

log = logging.getLogger(__name__)

SCHEMAS = ("raw", "silver", "gold", "ml", "monitoring")
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
_MONTH_FOLDER = re.compile(r"^month=(\d{4}-\d{2})$")
DEFAULT_PART = "part-0"  # a month is one file, unless several writers share a table (see publish)
_PART = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
CATALOG_FILE = "catalog.duckdb"
# The catalog's storage format: DuckDB 2.0 writes its v2.0.0 format by default, which DuckDB 1.x
# refuses ("version number 69"); the v1.0.0 format (header number 64) opens in every DuckDB from
# 1.0 on.
CATALOG_STORAGE_VERSION, CATALOG_STORAGE_NUMBER = "v1.0.0", 64
_CATALOG_LOCK = ".catalog.lock"
_CATALOG_DRAFT = ".catalog-draft-"
_STAGING = ".staging"


@dataclass
class IOCounts:
    """Rows read from and written to the lake by the current step (see ml_assets/measure.py)."""

    rows_in: int = 0
    rows_out: int = 0

    def reset(self) -> None:
        self.rows_in = self.rows_out = 0


_io_counts = IOCounts()


def io_counts() -> IOCounts:
    return _io_counts


class WarehouseError(RuntimeError):
    """The lake cannot be read or written as asked."""


@dataclass(frozen=True)
class Table:
    """A table of the lake: a fixed schema and name, and the date column whose month
    partitions it."""

    schema: str
    name: str
    month_column: str
    key: tuple[str, ...]  # unique within a month; also the order rows are written in
    description: str = ""

    def __post_init__(self):
        if self.schema not in SCHEMAS or not _IDENTIFIER.match(self.name):
            raise WarehouseError(f"invalid table name {self.schema}.{self.name}")
        for column in (self.month_column, *self.key):
            if not _IDENTIFIER.match(column.lstrip("_")):
                raise WarehouseError(f"invalid column name {column!r} in {self.qualified_name}")

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"


def sql_text(name: str) -> str:
    """The text of a transform under `sql/`, e.g. `silver/loan_daily`."""
    return (SQL_DIR / f"{name}.sql").read_text()


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Publication:
    """Months of one table staged so far, published together by `Warehouse.publication`."""

    def __init__(self, warehouse: Warehouse, table: Table, part: str, staging: Path):
        self.warehouse, self.table, self.part, self.staging = warehouse, table, part, staging
        self.staged: dict[date, Path] = {}
        self.counts: dict[date, int] = {}

    def stage(self, con: duckdb.DuckDBPyConnection, relation_sql: str, months: Iterable[date]
              ) -> dict[date, int]:
        """Write `relation_sql`'s rows for `months` into staging (see `Warehouse.publish`);
        returns their row counts."""
        months = sorted(set(months))
        again = sorted(set(months) & set(self.staged))
        if again:
            raise WarehouseError(f"{self.table.qualified_name}: month "
                                 f"{folder_label(again[0])} staged twice")
        batch = self.warehouse._stage(con, self.table, relation_sql, months,
                                      self.staging / f"batch-{len(self.staged)}-{months[0]}")
        self.staged.update(batch)
        counts = {month: pq.read_metadata(batch[month]).num_rows for month in months}
        self.counts.update(counts)
        return counts

    def commit(self) -> None:
        if not self.staged:
            return
        for month, staged_file in sorted(self.staged.items()):
            target = self.warehouse.month_file(self.table, month, self.part)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged_file, target)
            _fsync(target.parent)
            _io_counts.rows_out += pq.read_metadata(target).num_rows
        self.warehouse._refresh_view_if_changed(
            self.table, self.warehouse.month_file(self.table, max(self.staged), self.part))


class Warehouse(dg.ConfigurableResource):
    """The Parquet lake with its DuckDB catalog at `path`."""

    path: str
    threads: int | None = None
    memory_limit: str | None = None

    @property
    def root(self) -> Path:
        return Path(self.path)

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_FILE

    def table_dir(self, table: Table) -> Path:
        return self.root / table.schema / table.name

    def month_dir(self, table: Table, month: date) -> Path:
        return self.table_dir(table) / f"month={folder_label(month)}"

    def month_file(self, table: Table, month: date, part: str = DEFAULT_PART) -> Path:
        if not _PART.match(part):
            raise WarehouseError(f"invalid part name {part!r}")
        return self.month_dir(table, month) / f"{part}.parquet"

    def month_files(self, table: Table, month: date) -> list[Path]:
        """Every part of a published month (one, unless several writers share the table)."""
        folder = self.month_dir(table, month)
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def month_rows(self, table: Table, month: date) -> int:
        """Rows of a published month, from the Parquet footers."""
        return sum(pq.read_metadata(path).num_rows for path in self.month_files(table, month))

    def published_months(self, table: Table) -> list[date]:
        folder = self.table_dir(table)
        if not folder.is_dir():
            return []
        months = []
        for child in folder.iterdir():
            match = _MONTH_FOLDER.match(child.name)
            if match and any(child.glob("*.parquet")):
                months.append(parse_month(match.group(1)))
        return sorted(months)

    # -- computing -------------------------------------------------------------------------

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the platform's macros, spilling under the lake."""
        spill_root = self.root / "_tmp"
        spill_root.mkdir(parents=True, exist_ok=True)
        for leftover in spill_root.iterdir():  # spill folders of processes that have ended
            if leftover.name.isdigit() and not _pid_alive(int(leftover.name)):
                shutil.rmtree(leftover, ignore_errors=True)
        spill = spill_root / str(os.getpid())
        spill.mkdir(exist_ok=True)
        config = {"temp_directory": str(spill)}
        if self.threads:
            config["threads"] = self.threads
        if self.memory_limit:
            config["memory_limit"] = self.memory_limit
        con = duckdb.connect(config=config)
        con.execute("SET enable_progress_bar = false")
        con.execute(sql_text("macros"))
        return con

    def register_input(
        self, con: duckdb.DuckDBPyConnection, view_name: str, table: Table, months: Iterable[date]
    ) -> None:
        """Make the published `months` of `table` readable in `con` as `view_name`.

        Every month asked for must be published: reading around a hole would silently give
        wrong answers, so it is an error naming the table and the months to materialise first.
        """
        months = sorted(set(months))
        missing = [m for m in months if not self.month_files(table, m)]
        if missing:
            listed = ", ".join(folder_label(m) for m in missing)
            raise WarehouseError(
                f"{table.qualified_name} has no published month {listed}; materialise it first"
            )
        if not _IDENTIFIER.match(view_name):
            raise WarehouseError(f"invalid view name {view_name!r}")
        files = [str(path) for m in months for path in self.month_files(table, m)]
        _io_counts.rows_in += sum(pq.read_metadata(path).num_rows for path in files)
        if files:
            relation = con.read_parquet(files, union_by_name=True, hive_partitioning=False)
        else:  # a window wholly before the first month: no rows, but the table's columns
            published = self.published_months(table)
            if not published:
                raise WarehouseError(f"{table.qualified_name} has no published month yet")
            sample = [str(self.month_files(table, published[0])[0])]
            relation = con.read_parquet(sample, hive_partitioning=False).limit(0)
        relation.create_view(view_name, replace=True)

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self,
        con: duckdb.DuckDBPyConnection,
        table: Table,
        relation_sql: str,
        months: Iterable[date],
        part: str = DEFAULT_PART,
    ) -> dict[date, int]:
        """Write the rows of `relation_sql` (a query over `con`) as `table`'s `months`, atomically.

        Each month is replaced whole; a month with no rows is published as an empty file with the
        table's columns. Rows dated outside `months` are an error (nothing is published).
        `part` names the month's file: writers that share a table (one model each in the
        registry) each replace only their own part. Returns the row count per month.
        """
        with self.publication(table, part) as publication:
            counts = publication.stage(con, relation_sql, months)
        return counts

    @contextmanager
    def publication(self, table: Table, part: str = DEFAULT_PART) -> Iterator[Publication]:
        """Stage `table`'s months batch by batch (`Publication.stage`, one DuckDB connection per
        batch if need be) and publish them all when the block ends without an error; on an
        error nothing is published and the staged files are removed."""
        if not _PART.match(part):
            raise WarehouseError(f"invalid part name {part!r}")
        staging = self._new_staging_dir(table)
        publication = Publication(self, table, part, staging)
        try:
            yield publication
            publication.commit()
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _new_staging_dir(self, table: Table) -> Path:
        base = self.table_dir(table) / _STAGING
        base.mkdir(parents=True, exist_ok=True)
        for leftover in base.iterdir():  # from a process that was killed mid-write
            pid = leftover.name.split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)
        staging = base / f"{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir()
        return staging

    def _stage(
        self, con, table: Table, relation_sql: str, months: list[date], staging: Path
    ) -> dict[date, Path]:
        staging.mkdir()
        written = staging / "written"
        order = ", ".join(table.key)
        con.execute(
            f"COPY (SELECT *, strftime({table.month_column}, '%Y-%m') AS __month "
            f"FROM ({relation_sql}) ORDER BY {order}) TO {_sql_literal(str(written))} "
            "(FORMAT parquet, PARTITION_BY (__month), COMPRESSION zstd)"
        )
        produced = {}
        if written.is_dir():
            for folder in written.iterdir():
                label = folder.name.removeprefix("__month=")
                files = sorted(folder.glob("*.parquet"))
                if label in ("NULL", "__HIVE_DEFAULT_PARTITION__"):
                    raise WarehouseError(
                        f"{table.qualified_name}: rows with no {table.month_column}; "
                        "nothing published"
                    )
                if len(files) != 1:
                    raise WarehouseError(f"{table.qualified_name} {label}: expected one file")
                produced[parse_month(label)] = files[0]
        unexpected = sorted(set(produced) - set(months))
        if unexpected:
            listed = ", ".join(folder_label(m) for m in unexpected)
            raise WarehouseError(
                f"{table.qualified_name}: rows dated {listed}, outside the months being "
                f"materialised; nothing published"
            )
        for month in months:
            if month not in produced:
                empty = staging / f"empty-{folder_label(month)}.parquet"
                con.execute(
                    f"COPY (SELECT * FROM ({relation_sql}) LIMIT 0) TO {_sql_literal(str(empty))} "
                    "(FORMAT parquet, COMPRESSION zstd)"
                )
                produced[month] = empty
        for staged_file in produced.values():
            _fsync(staged_file)
        return produced

    # -- catalog ---------------------------------------------------------------------------

    def view_sql(self, table: Table) -> str:
        return _view_sql(table.qualified_name, self.table_dir(table))

    def _view_marker(self, table: Table) -> Path:
        return self.table_dir(table) / ".view"

    def _view_signature(self, table: Table, published_file: Path) -> str:
        columns = [(field.name, str(field.type)) for field in pq.read_schema(published_file)]
        return json.dumps({"view": self.view_sql(table), "columns": columns})

    def _refresh_view_if_changed(self, table: Table, published_file: Path) -> None:
        """The catalog is rebuilt only when a table is new or its columns changed, or when the
        catalog is missing or in another storage version: new months of a known table appear in
        its view by themselves."""
        signature = self._view_signature(table, published_file)
        marker = self._view_marker(table)
        if (marker.is_file() and marker.read_text() == signature
                and catalog_storage_number(self.catalog_path) == CATALOG_STORAGE_NUMBER):
            return
        if self.refresh_catalog():
            partial = marker.with_name(f".view.{os.getpid()}.tmp")
            partial.write_text(signature)
            os.replace(partial, marker)

    def catalog_views(self) -> dict[str, str]:
        """`schema.table` -> CREATE VIEW statement, for every table folder of the lake with a
        published month (`<root>/<schema>/<table>/month=YYYY-MM/*.parquet`)."""
        views = {}
        for schema in SCHEMAS:
            folder = self.root / schema
            if not folder.is_dir():
                continue
            for table_dir in sorted(folder.iterdir()):
                if (_IDENTIFIER.match(table_dir.name) and table_dir.is_dir()
                        and next(table_dir.glob("month=*/*.parquet"), None)):
                    name = f"{schema}.{table_dir.name}"
                    views[name] = _view_sql(name, table_dir)
        return views

    def refresh_catalog(self, wait_seconds: float = 30.0) -> bool:
        """Rebuild `catalog.duckdb`: the five schemas and a view per table of the lake
        (`catalog_views`), in storage version CATALOG_STORAGE_VERSION so that every DuckDB from
        1.0 on opens it. The new catalog is written beside the old one and renamed over it, so
        a reader (a user's shell, read-only or not) sees the old catalog or the new one, never
        a half-written file, and never blocks the refresh. A catalog of another storage version
        (one DuckDB 2.0 wrote by default) is replaced the same way.

        Rebuilds are serialised across processes by a lock file; returns False, leaving the
        catalog as it was, if another process held the lock for `wait_seconds`. Raises
        WarehouseError if the catalog cannot be written."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / _CATALOG_LOCK, "a") as lock:
            deadline = time.monotonic() + wait_seconds
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        log.warning("catalog %s is being rebuilt by another process for more "
                                    "than %.0f s; not rebuilt now: it is at the next run or "
                                    "with `vintage catalog refresh`", self.catalog_path,
                                    wait_seconds)
                        return False
                    time.sleep(0.05)
            self._remove_dead_catalog_drafts()
            draft = self.root / f"{_CATALOG_DRAFT}{os.getpid()}-{uuid.uuid4().hex}.duckdb"
            try:
                self._write_catalog(draft, self.catalog_views())
                os.replace(draft, self.catalog_path)
                _fsync(self.root)
            except (OSError, duckdb.Error) as error:
                raise WarehouseError(f"catalog {self.catalog_path} not written: {error}") from None
            finally:
                for leftover in (draft, draft.with_name(draft.name + ".wal")):
                    leftover.unlink(missing_ok=True)
        return True

    @staticmethod
    def _write_catalog(path: Path, views: dict[str, str]) -> None:
        with duckdb.connect() as con:
            con.execute(f"ATTACH {_sql_literal(str(path))} AS draft "
                        f"(STORAGE_VERSION {_sql_literal(CATALOG_STORAGE_VERSION)})")
            con.execute("USE draft")
            for schema in SCHEMAS:
                con.execute(f"CREATE SCHEMA {schema}")
            for statement in views.values():
                con.execute(statement)
            con.execute("USE memory")
            con.execute("DETACH draft")  # checkpoints: the file is whole, with no WAL beside it
        _fsync(path)

    def _remove_dead_catalog_drafts(self) -> None:
        """Drafts of a process killed while it rebuilt the catalog."""
        for leftover in self.root.glob(f"{_CATALOG_DRAFT}*"):
            pid = leftover.name.removeprefix(_CATALOG_DRAFT).split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                leftover.unlink(missing_ok=True)


def _view_sql(qualified_name: str, table_dir: Path) -> str:
    """The view over a table folder's monthly files, by absolute path: the catalog works from any
    working directory. Plain `read_parquet` options that DuckDB 1.0 and later all parse."""
    glob = str(table_dir.resolve() / "month=*" / "*.parquet")
    return (
        f"CREATE OR REPLACE VIEW {qualified_name} AS SELECT * FROM read_parquet("
        f"{_sql_literal(glob)}, union_by_name = true, hive_partitioning = false)"
    )


def catalog_storage_number(path: Path) -> int | None:
    """The version number in a DuckDB database file's main header: 64 for the v1.0.0 storage
    format (CATALOG_STORAGE_NUMBER), a larger one for later formats (DuckDB 2.0 writes 999 there
    and keeps its format's number further on); None when `path` is missing or not a DuckDB file.
    The header is an 8-byte checksum, the bytes `DUCK`, then the number as a little-endian
    64-bit integer. Read without opening the database, so no lock is taken."""
    try:
        with open(path, "rb") as file:
            header = file.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[8:12] != b"DUCK":
        return None
    return int.from_bytes(header[12:20], "little")
