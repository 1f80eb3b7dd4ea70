"""The warehouse: one Delta Lake table per table of the platform, and the DuckDB catalog.

Every table is a Delta table (delta-rs) at `<warehouse>/<schema>/<table>`, partitioned by
`month` (the first day of the month its rows belong to). A step publishes its months as one
commit: a predicate overwrite of exactly those months (`month IN (...)`), which Delta refuses
to apply to rows of any other month, so a reader sees a month whole, old or new, and two
processes can publish different months of a table at the same time (locally and on S3). The
commit carries the months it published (`vintage.months`), which is how a month published
empty is told from one never published. Old versions stay readable (time travel) until the
maintenance job vacuums files older than `retention_days`.

`catalog.duckdb` holds one view per table over the table's current files, rebuilt at the end
of each step and renamed into place, in a storage version every DuckDB from 1.0 on opens.

In a bucket (`s3://bucket/prefix`) the same holds: delta-rs commits with S3 conditional puts
(`If-None-Match`; AWS_CONDITIONAL_PUT=etag unless configured otherwise), so concurrent commits
are safe with no lock service and no AWS_S3_ALLOW_UNSAFE_RENAME. A step reads a bucket table
through delta-rs (an Arrow dataset DuckDB scans, pruned to the months asked for), so DuckDB
needs no httpfs extension. The catalog file stays local; its views name the `s3://` files:
a DuckDB with httpfs and an S3 secret reads them, and so does `Lake.catalog_connection()`
from Python (pyarrow's S3 client registered as DuckDB's `s3://` filesystem).
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import DeltaError, TableNotFoundError

from ml_assets.months import folder_label, month_start
from ml_assets.settings import SQL_DIR
from resources.storage import (
    FileStore,
    bucket_filesystem,
    is_bucket,
    schema_from_token,
    schema_token,
    stand_in_filesystem,
)

log = logging.getLogger(__name__)

SCHEMAS = ("raw", "silver", "gold", "ml", "monitoring", "analytics")
PARTITION = "month"  # every table's partition column: the first day of its rows' month
MONTHS_KEY = "vintage.months"  # the commit metadata naming the months a commit published
INPUTS_KEY = "vintage.input_versions"  # ... and the version of every table its step read
COMMIT_KEY = "vintage.commit"  # a token naming the commit, to find its version afterwards
# How delta-rs makes a commit safe on S3: a conditional PUT of the commit file (If-None-Match),
# refused with 412 when another writer took that version first. object_store's default today;
# set explicitly so that a changed default cannot turn concurrent commits into lost ones.
CONDITIONAL_PUT = {"AWS_CONDITIONAL_PUT": "etag"}
_CONDITIONAL_PUT_KEYS = ("aws_conditional_put", "conditional_put")
STAND_IN = "-- stand-in files: "  # first line of a bucket table's recorded view (see view_sql)
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
CATALOG_FILE = "catalog.duckdb"
# The catalog's storage format: DuckDB 2.0 writes version 69 by default, which DuckDB 1.x
# clients refuse; v1.0.0 (number 64) opens in every DuckDB from 1.0 on.
CATALOG_STORAGE_VERSION, CATALOG_STORAGE_NUMBER = "v1.0.0", 64
_CATALOG_LOCK = ".catalog.lock"
_CATALOG_DRAFT = ".catalog-draft-"
_APPLIED_VIEWS = "applied.json"  # in .views/: the views the current catalog holds, by table


class LakeError(RuntimeError):
    """A table cannot be read or written as asked."""


@dataclass(frozen=True)
class Table:
    """A table of the lake: its schema and name, the grain of its rows, the date column that
    places a row in its month, and the key that is unique within a month (also the order rows
    are written in)."""

    schema: str
    name: str
    month_column: str
    key: tuple[str, ...]
    description: str = ""
    grain: str = ""

    def __post_init__(self):
        if self.schema not in SCHEMAS or not _IDENTIFIER.match(self.name):
            raise LakeError(f"invalid table name {self.schema}.{self.name}")
        for column in (self.month_column, *self.key):
            if not _IDENTIFIER.match(column.lstrip("_")):
                raise LakeError(f"invalid column name {column!r} in {self.qualified_name}")

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def month_expression(self) -> str:
        """SQL giving a row's partition month from its month column."""
        return (PARTITION if self.month_column == PARTITION
                else f"date_trunc('month', {self.month_column})::DATE")


def sql_text(name: str) -> str:
    """The text of a transform under `sql/`, e.g. `silver/loan_daily`."""
    return (SQL_DIR / f"{name}.sql").read_text()


def sql_literal(text: str) -> str:
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


def _months_predicate(months: Iterable[date]) -> str:
    listed = ", ".join(f"'{month_start(m).isoformat()}'" for m in sorted(set(months)))
    return f"{PARTITION} IN ({listed})"


def _staged_schema(files: list[Path]) -> pa.Schema:
    """One schema for a step's staged files: the groups' schemas unified (a column all NULL in
    one group and typed in another takes the type), every column nullable (DuckDB writes a
    column no row of a group leaves empty as required, which Delta would then enforce)."""
    unified = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    return pa.schema([field.with_nullable(True) for field in unified])


def _type_name(kind) -> str:
    """A Delta type as its name: `long`, `string`, `decimal(21,1)`, `struct<...>`."""
    text = str(kind)
    match = re.fullmatch(r'PrimitiveType\("(.*)"\)', text)
    return match.group(1) if match else text


def _delta_types(schema: pa.Schema) -> dict[str, str]:
    """Column -> its Delta type name (string, long, date, timestamp_ntz, ...), as Delta would
    store an Arrow schema: the types a changed column is judged by."""
    return {field.name: _type_name(field.type) for field in DeltaSchema.from_arrow(schema).fields}


# Types of one family replace each other without a change of meaning: Delta casts a month's
# values to the table's type (and refuses one that does not fit).
_FAMILIES = {"byte": "integer", "short": "integer", "integer": "integer", "long": "integer",
             "float": "floating", "double": "floating"}


def _same_meaning(before: str, after: str) -> bool:
    return before == after or _FAMILIES.get(before, before) == _FAMILIES.get(after, after)


class Publication:
    """A table's months staged so far in a step, group of months by group, committed together
    by `Lake.publication` as one Delta commit."""

    def __init__(self, lake: Lake, table: Table, staging: Path):
        self.lake, self.table, self.staging = lake, table, staging
        self.files: list[Path] = []
        self.counts: dict[date, int] = {}
        self.version: int | None = None
        self.added_columns: list[str] = []

    def stage(self, con: duckdb.DuckDBPyConnection, query: str, months: Iterable[date]
              ) -> dict[date, int]:
        """Write the rows of `query` (over `con`) for `months` into the step's staging; returns
        the row count of each month (0 for a month without rows: it is published empty).
        Rows with no month, or dated outside `months`, are a LakeError: nothing is published."""
        months = sorted(set(months))
        again = sorted(set(months) & set(self.counts))
        if again:
            raise LakeError(f"{self.table.qualified_name}: month {folder_label(again[0])} "
                            "staged twice")
        month = self.table.month_expression
        partitioned = (f"SELECT * FROM ({query})" if self.table.month_column == PARTITION
                       else f"SELECT *, {month} AS {PARTITION} FROM ({query})")
        counts = dict(con.execute(f"SELECT {PARTITION}, count(*) FROM ({partitioned}) "
                                  "GROUP BY ALL").fetchall())
        if None in counts:
            raise LakeError(f"{self.table.qualified_name}: {counts[None]} rows with no "
                            f"{self.table.month_column}; nothing published")
        outside = sorted(set(counts) - set(months))
        if outside:
            listed = ", ".join(folder_label(m) for m in outside)
            raise LakeError(f"{self.table.qualified_name}: rows dated {listed}, outside the "
                            "months being materialised; nothing published")
        target = self.staging / f"part-{len(self.files)}.parquet"
        order = ", ".join([PARTITION, *self.table.key])
        con.execute(f"COPY ({partitioned} ORDER BY {order}) TO {sql_literal(str(target))} "
                    "(FORMAT parquet, COMPRESSION zstd)")
        self.files.append(target)
        staged = {m: int(counts.get(m, 0)) for m in months}
        self.counts.update(staged)
        return staged

    def commit(self, run_id: str | None = None,
               input_versions: dict[str, int] | None = None) -> int | None:
        """Publish every staged month as one Delta commit; returns the table's new version
        (None when nothing was staged). `input_versions` (table -> the Delta version read) go
        into the commit's metadata: the lineage a model or a month is reproduced from."""
        if not self.counts:
            return None
        dataset = ds.dataset([str(f) for f in self.files], format="parquet",
                             schema=_staged_schema(self.files))
        self.version, self.added_columns = self.lake._commit(
            self.table, dataset, sorted(self.counts), run_id, input_versions or {})
        return self.version


class Lake(dg.ConfigurableResource):
    """The warehouse at `uri`: a folder, or `s3://bucket/prefix` (`storage_options` are
    delta-rs object-store options, e.g. AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP; each one not given is read from the AWS_*
    environment variable of the same name, by delta-rs and by the file store alike).

    `catalog_path` is the DuckDB catalog file (default `<uri>/catalog.duckdb` for a folder; it
    must be a local path for a bucket); `work_dir` the local scratch folder for staging and
    DuckDB's spill (default `<uri>/_work` for a folder, `.vintage-work` for a bucket).
    """

    uri: str
    catalog_path: str | None = None
    work_dir: str | None = None
    storage_options: dict[str, str] = {}
    retention_days: int = 30

    @property
    def local(self) -> bool:
        return "://" not in self.uri or self.uri.startswith("file://")

    @property
    def bucket(self) -> bool:
        return is_bucket(self.uri)

    @property
    def root(self) -> Path:
        """The warehouse folder (a local lake only)."""
        if not self.local:
            raise LakeError(f"{self.uri} is not a local folder")
        return Path(self.uri.removeprefix("file://"))

    @property
    def catalog(self) -> Path:
        if self.catalog_path:
            return Path(self.catalog_path)
        if not self.local:
            raise LakeError(f"a warehouse in a bucket ({self.uri}) needs a local catalog path "
                            "(paths.catalog in config/vintage.yaml)")
        return self.root / CATALOG_FILE

    @property
    def work(self) -> Path:
        folder = Path(self.work_dir) if self.work_dir else (
            self.root / "_work" if self.local else Path(".vintage-work"))
        folder.mkdir(parents=True, exist_ok=True)
        return folder.resolve()

    def table_uri(self, table: Table) -> str:
        base = str(self.root.resolve()) if self.local else self.uri.rstrip("/")
        return f"{base}/{table.schema}/{table.name}"

    @property
    def _options(self) -> dict[str, str] | None:
        """The delta-rs storage options: the configured ones, and in a bucket conditional
        puts (CONDITIONAL_PUT) unless the options or the environment choose otherwise."""
        options = dict(self.storage_options)
        chosen = {k.lower() for k in options} | {k.lower() for k in os.environ}
        if self.bucket and not chosen & set(_CONDITIONAL_PUT_KEYS):
            options.update(CONDITIONAL_PUT)
        return options or None

    def file_store(self, folder: str) -> FileStore:
        """The files kept under `folder` of the warehouse (`reports`): a local folder, or the
        same prefix in the warehouse's bucket with the lake's storage options."""
        if self.local:
            return FileStore(str(self.root.resolve() / folder))
        return FileStore(f"{self.uri.rstrip('/')}/{folder.strip('/')}", self.storage_options)

    # -- reading ---------------------------------------------------------------------------

    def delta(self, table: Table, version: int | None = None) -> DeltaTable | None:
        """The Delta table (at `version`, else its current one); None when it has no commit."""
        try:
            return DeltaTable(self.table_uri(table), version=version,
                              storage_options=self._options)
        except TableNotFoundError:
            if version is not None:
                raise LakeError(f"{table.qualified_name} has no version {version}") from None
            return None
        except DeltaError as error:
            if version is not None and "version" in str(error).lower():
                raise LakeError(f"{table.qualified_name} has no version {version} (vacuumed, "
                                f"or never written): {error}") from None
            raise

    def version(self, table: Table) -> int | None:
        delta = self.delta(table)
        return None if delta is None else delta.version()

    def published_months(self, table: Table, version: int | None = None) -> list[date]:
        """Every month ever published into the table up to `version` (empty ones included)."""
        delta = self.delta(table, version)
        return [] if delta is None else sorted(self._published(delta))

    def commit_metadata(self, table: Table, version: int) -> dict:
        """What the commit of `version` recorded: its months (`vintage.months`), the version of
        every table its step read (`vintage.input_versions`), its run (`vintage.run_id`), its
        time (`timestamp`, milliseconds since 1970). Raises LakeError when the table has no
        such version.

        Read from the version's own log file: `DeltaTable.history()` numbers its entries by
        counting back from a latest version read separately, so a commit landing meanwhile
        (another process publishing other months) shifts every number (delta-rs 1.6.6)."""
        commit = self._commit_info(table, version)
        if commit is None:
            if self.delta(table) is None:
                raise LakeError(f"{table.qualified_name} has no commit")
            raise LakeError(f"{table.qualified_name} has no version {version} in its log")
        return {"months": json.loads(commit.get(MONTHS_KEY) or "[]"),
                "input_versions": json.loads(commit.get(INPUTS_KEY) or "{}"),
                "run_id": commit.get("vintage.run_id"),
                "timestamp": commit.get("timestamp")}

    def _published(self, delta: DeltaTable) -> set[date]:
        """The months published up to this version of the table: every commit's
        `vintage.months`, read from the commits' own log files (history() lists commits
        newer than a time-travelled or outdated DeltaTable too, delta-rs 1.6.6), each commit
        once per process, several at a time."""
        uri, version = delta.table_uri, delta.version()
        unread = [v for v in range(version + 1) if (uri, v) not in _commit_months]
        if unread:
            with ThreadPoolExecutor(max_workers=min(16, len(unread))) as pool:
                infos = list(pool.map(lambda v: self._commit_info(uri, v), unread))
            for v, info in zip(unread, infos, strict=True):
                if info is None:
                    log.warning("%s: the log file of version %d is missing; its months are "
                                "not counted as published", uri, v)
                _commit_months[(uri, v)] = tuple(
                    date.fromisoformat(m) for m in json.loads((info or {}).get(MONTHS_KEY)
                                                               or "[]"))
        return {m for v in range(version + 1) for m in _commit_months[(uri, v)]}

    def _commit_info(self, table: Table | str, version: int) -> dict | None:
        """The commitInfo action of the log file of `version` of `table` (or of the table at
        that URI); None when there is no such file (never written, or no such table)."""
        if version < 0:
            return None
        uri = self.table_uri(table) if isinstance(table, Table) else table
        files = FileStore(uri, self.storage_options) if self.bucket else FileStore(uri)
        try:
            text = files.read_bytes(f"_delta_log/{version:020d}.json").decode()
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            action = json.loads(line) if line.strip() else {}
            if "commitInfo" in action:
                return action["commitInfo"]
        return {}

    def month_rows(self, table: Table, month: date, version: int | None = None) -> int:
        """Rows of a published month at `version` (default: the current one), from the Delta
        log's file statistics."""
        delta = self.delta(table, version)
        return 0 if delta is None else _rows_by_month(delta).get(month, 0)

    def read(self, con: duckdb.DuckDBPyConnection, view: str, table: Table,
             months: Iterable[date] | None, version: int | None = None) -> int:
        """Make `table`'s rows of `months` (None: every month) readable in `con` as the view
        `view`, at `version` (default: current), with the table's own columns (the partition
        column `month` only where it is the table's month column). Returns the rows it holds.

        Every month asked for must have been published: reading around a hole would silently
        give wrong answers, so it is a LakeError naming the table and the months to materialise
        first. A window wholly before the table's first month reads as no rows."""
        if not _IDENTIFIER.match(view):
            raise LakeError(f"invalid view name {view!r}")
        delta = self.delta(table, version)
        if delta is None:
            asked = "" if not months else " " + ", ".join(folder_label(m) for m in sorted(
                set(months)))
            raise LakeError(f"{table.qualified_name} has no published month{asked} (no month "
                            "at all yet); materialise it first")
        published = self._published(delta)
        wanted = sorted(published) if months is None else sorted(set(months))
        missing = [m for m in wanted if m not in published]
        if missing:
            listed = ", ".join(folder_label(m) for m in missing)
            raise LakeError(f"{table.qualified_name} has no published month {listed}; "
                            "materialise it first")
        rows = _rows_by_month(delta)
        if self.local:
            files = _files_of(delta, wanted)
            relation = (con.read_parquet(files, hive_partitioning=True, union_by_name=True)
                        if files else con.from_arrow(_empty(delta)))
        else:  # no httpfs offline: delta-rs reads the bucket, DuckDB scans the Arrow dataset
            dataset = delta.to_pyarrow_dataset()
            relation = con.from_arrow(dataset.filter(
                ds.field(PARTITION).isin(pa.array(wanted, pa.date32()))))
        columns = [name for name in _column_names(delta)
                   # the partition repeats the table's month column, unless it is that column
                   if name != PARTITION or table.month_column == PARTITION]
        relation.project(", ".join(_quoted(c) for c in columns)).create_view(view, replace=True)
        return sum(rows.get(m, 0) for m in wanted)

    # -- publishing ------------------------------------------------------------------------

    @contextmanager
    def publication(self, table: Table, run_id: str | None = None,
                    input_versions: dict[str, int] | None = None) -> Iterator[Publication]:
        """Stage `table`'s months group by group (`Publication.stage`) and publish them all, as
        one Delta commit, when the block ends without an error; on an error nothing is
        published and the staged files are removed. `input_versions` is a mapping the caller
        may still fill while staging (table -> version read), recorded in the commit."""
        staging = self._new_staging_dir(table)
        publication = Publication(self, table, staging)
        try:
            yield publication
            publication.commit(run_id, input_versions)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def publish(self, con: duckdb.DuckDBPyConnection, table: Table, query: str,
                months: Iterable[date], run_id: str | None = None) -> dict[date, int]:
        """Publish the rows of `query` as `table`'s `months` in one commit (see Publication);
        returns the row count per month."""
        with self.publication(table, run_id) as publication:
            counts = publication.stage(con, query, months)
        return counts

    def _new_staging_dir(self, table: Table) -> Path:
        base = self.work / "staging"
        base.mkdir(parents=True, exist_ok=True)
        for leftover in base.iterdir():  # from a process that was killed mid-write
            pid = leftover.name.split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)
        staging = base / f"{os.getpid()}-{table.schema}.{table.name}-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        return staging

    def _commit(self, table: Table, dataset: ds.Dataset, months: list[date],
                run_id: str | None, input_versions: dict[str, int]) -> tuple[int, list[str]]:
        """One Delta commit replacing exactly `months` with the rows of `dataset`. A new column
        is added to the table (and returned); a column whose type changed is refused."""
        uri = self.table_uri(table)
        current = self.delta(table)
        added = self._check_schema(table, current, dataset.schema)
        token = uuid.uuid4().hex
        metadata = {MONTHS_KEY: json.dumps([m.isoformat() for m in months]),
                    INPUTS_KEY: json.dumps(input_versions, sort_keys=True), COMMIT_KEY: token}
        if run_id:
            metadata["vintage.run_id"] = run_id
        arguments = dict(partition_by=[PARTITION], storage_options=self._options,
                         commit_properties=CommitProperties(custom_metadata=metadata))
        reader = dataset.scanner(batch_size=256_000).to_reader()
        try:
            if current is None:
                write_deltalake(uri, reader, mode="append", configuration={
                    # the log is the record of which months were published: keep it
                    "delta.logRetentionDuration": "interval 36500 days",
                    "delta.deletedFileRetentionDuration":
                        f"interval {self.retention_days} days"}, **arguments)
            else:
                write_deltalake(uri, reader, mode="overwrite", schema_mode="merge",
                                predicate=_months_predicate(months), **arguments)
        except DeltaError as error:
            if current is None and "already exists" in str(error).lower():
                # another process created the table first: replace our months in it
                return self._commit(table, dataset, months, run_id, input_versions)
            raise LakeError(f"{table.qualified_name}: months {folder_label(months[0])}.."
                            f"{folder_label(months[-1])} not published: {error}") from None
        return self._version_of_commit(table, token), added

    def _version_of_commit(self, table: Table, token: str) -> int:
        """The version our commit (`token`) became: other processes may have committed to
        the same table since, so the table's latest version need not be ours; found by
        reading log files back from the latest."""
        latest = DeltaTable(self.table_uri(table), storage_options=self._options).version()
        for version in range(latest, -1, -1):
            if (self._commit_info(table, version) or {}).get(COMMIT_KEY) == token:
                return version
        raise LakeError(f"{table.qualified_name}: the commit {token} is not in the log")

    @staticmethod
    def _check_schema(table: Table, current: DeltaTable | None, schema: pa.Schema
                      ) -> list[str]:
        """The columns `schema` adds to the table; a LakeError for a column whose type changed
        its meaning (a number to text, a date to a timestamp; integer widths and float widths
        are one type each)."""
        if current is None:
            return []
        before = {field.name: _type_name(field.type) for field in current.schema().fields}
        after = _delta_types(schema)
        changed = [f"{name} was {before[name]}, now {kind}" for name, kind in after.items()
                   if name in before and not _same_meaning(before[name], kind)]
        if changed:
            raise LakeError(f"{table.qualified_name}: a column's type changed ("
                            + "; ".join(changed) + "): refused, the table keeps its types; "
                            "give the new meaning a new column name")
        return [name for name in after if name not in before]

    # -- maintenance -----------------------------------------------------------------------

    def vacuum(self, table: Table, dry_run: bool = False) -> list[str]:
        """Remove the files no version newer than `retention_days` needs, and the files older
        than that which no commit names (left by a writer killed mid-commit); returns them
        (paths relative to the table). A full vacuum: it lists the table's folder or prefix;
        a file being written now is younger than any retention of a day or more."""
        delta = self.delta(table)
        if delta is None:
            return []
        return delta.vacuum(retention_hours=self.retention_days * 24, dry_run=dry_run,
                            enforce_retention_duration=False, full=True)

    def migrate_parquet_lake(self, table: Table, keep: bool = False) -> tuple[int, int] | None:
        """Convert `table` from the Parquet lake of earlier versions
        (`<warehouse>/<schema>/<table>/month=YYYY-MM/*.parquet`) into a Delta table: every
        month, empty ones included, published in one commit. The old folder is moved aside
        first and removed when the table is written (`keep`: left as `<table>.parquet-lake`);
        on an error it is moved back. Returns (months, rows), or None when there is nothing to
        convert (no old folder, or a Delta table already)."""
        folder = self.root / table.schema / table.name
        month_dirs = sorted(d for d in folder.glob("month=????-??") if d.is_dir())
        if not month_dirs or (folder / "_delta_log").exists():
            return None
        old = folder.with_name(f"{table.name}.parquet-lake")
        if old.exists():
            raise LakeError(f"{old} is in the way: a failed migration? move it, then retry")
        os.rename(folder, old)
        try:
            files = sorted(str(p) for p in old.glob("month=*/*.parquet"))
            months = [date.fromisoformat(f"{d.name.removeprefix('month=')}-01")
                      for d in month_dirs]
            with duckdb.connect() as con:
                con.read_parquet(files, union_by_name=True, hive_partitioning=False
                                 ).create_view("parquet_lake")
                counts = self.publish(con, table, "SELECT * FROM parquet_lake", months)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            os.rename(old, folder)
            raise
        if not keep:
            shutil.rmtree(old)
        return len(months), sum(counts.values())

    # -- catalog ---------------------------------------------------------------------------

    def view_sql(self, table: Table) -> str | None:
        """The catalog's view of `table` over its current files (absolute paths or bucket
        URIs), in SQL every DuckDB from 1.0 on parses; None for a table without a commit.

        DuckDB reads a view's files when it creates the view (for its columns), which over
        `s3://` would take httpfs and a request per file at every rebuild of the catalog. So
        a bucket table's view starts with a comment line (STAND_IN) holding the table's URI
        and the schema of its data files: the catalog is written with an empty stand-in file
        of that schema in place of each file (see `_write_catalog`), and the stored view
        reads the real files when queried."""
        delta = self.delta(table)
        if delta is None:
            return None
        files = delta.file_uris()
        if files:
            listed = ", ".join(sql_literal(f) for f in sorted(files))
            source = (f"read_parquet([{listed}], hive_partitioning = true, "
                      "union_by_name = true)")
            columns = ", ".join(_quoted(c) for c in _column_names(delta))
            sql = (f"CREATE OR REPLACE VIEW {table.qualified_name} AS SELECT {columns} "
                   f"FROM {source}")
            if self.local:
                return sql
            data_files = pa.schema([f for f in _empty(delta).schema if f.name != PARTITION])
            return f"{STAND_IN}{self.table_uri(table)} {schema_token(data_files)}\n{sql}"
        with duckdb.connect() as con:  # no rows: the columns, typed as DuckDB reads them
            empty = _empty(delta)
            kinds = con.from_arrow(empty).types
        columns = ", ".join(f'CAST(NULL AS {kind}) AS "{name}"'
                            for name, kind in zip(empty.column_names, kinds, strict=True))
        return f"CREATE OR REPLACE VIEW {table.qualified_name} AS SELECT {columns} LIMIT 0"

    def refresh_catalog(self, tables: Iterable[Table], changed: Iterable[Table] | None = None,
                        wait_seconds: float = 30.0) -> bool:
        """Rebuild `catalog.duckdb`: the schemas (SCHEMAS) and a view per table of `tables` that has
        a commit, in storage version CATALOG_STORAGE_VERSION so that every DuckDB from 1.0 on
        opens it. The new catalog is written beside the old one and renamed over it, so a
        reader (a user's shell, read-only or not) sees the old catalog or the new one, never a
        half-written file, and never blocks the refresh.

        Each table's view is kept in `.views/` beside the catalog; `changed` are the tables
        whose view is recomputed from their Delta log now (default: all), the others' views
        come from there. A writer records its tables' views before it takes the lock, and every
        rebuild reads them all under the lock, so the last rebuild has every latest view. With
        `changed` given, the new catalog is a copy of the current one in which only the views
        that differ from those it was written with (`.views/applied.json`) are replaced: DuckDB
        reads a view's file footers when it creates it (25 views cost about 0.1 s a step, the
        two of a step 0.025 s). Without `changed`, or with no such record, every view is
        written anew.
        Rebuilds are serialised across processes by a lock file; returns False, leaving the
        catalog as it was, if another process held the lock for `wait_seconds`. Raises
        LakeError if the catalog cannot be written."""
        tables = list(tables)
        catalog = self.catalog
        views_dir = catalog.parent / ".views"
        views_dir.mkdir(parents=True, exist_ok=True)
        for table in tables if changed is None else changed:
            self._record_view(views_dir, table)
        with open(catalog.parent / _CATALOG_LOCK, "a") as lock:
            deadline = time.monotonic() + wait_seconds
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        log.warning("catalog %s is being rebuilt by another process for more "
                                    "than %.0f s; not rebuilt now: it is at the next step or "
                                    "with `vintage catalog refresh`", catalog, wait_seconds)
                        return False
                    time.sleep(0.05)
            # the views the current catalog was written with (None: write every view anew)
            applied_file = views_dir / _APPLIED_VIEWS
            applied = None
            if (changed is not None and applied_file.is_file()
                    and catalog_storage_number(catalog) == CATALOG_STORAGE_NUMBER):
                applied = json.loads(applied_file.read_text())
            wanted = {}
            for table in tables:
                recorded = views_dir / f"{table.qualified_name}.sql"
                if not recorded.is_file() and applied is None:
                    self._record_view(views_dir, table)
                wanted[table.qualified_name] = (recorded.read_text() if recorded.is_file()
                                                else None)
            base = applied or {}
            views = [sql for name, sql in wanted.items() if sql and sql != base.get(name)]
            dropped = [name for name in base if wanted.get(name) is None]
            self._remove_dead_catalog_drafts(catalog.parent)
            draft = catalog.parent / f"{_CATALOG_DRAFT}{os.getpid()}-{uuid.uuid4().hex}.duckdb"
            try:
                if applied is not None:
                    shutil.copyfile(catalog, draft)
                _write_catalog(draft, views, dropped, new=applied is None)
                os.replace(draft, catalog)
                _fsync(catalog.parent)
                _write_atomically(applied_file, json.dumps(
                    {name: sql for name, sql in wanted.items() if sql}))
            except (OSError, duckdb.Error) as error:
                raise LakeError(f"catalog {catalog} not written: {error}") from None
            finally:
                for leftover in (draft, draft.with_name(draft.name + ".wal")):
                    leftover.unlink(missing_ok=True)
        return True

    def _record_view(self, views_dir: Path, table: Table) -> None:
        recorded = views_dir / f"{table.qualified_name}.sql"
        sql = self.view_sql(table)
        if sql is None:
            recorded.unlink(missing_ok=True)
            return
        _write_atomically(recorded, sql)

    @staticmethod
    def _remove_dead_catalog_drafts(folder: Path) -> None:
        """Drafts of a process killed while it rebuilt the catalog."""
        for leftover in folder.glob(f"{_CATALOG_DRAFT}*"):
            pid = leftover.name.removeprefix(_CATALOG_DRAFT).split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                leftover.unlink(missing_ok=True)

    def catalog_connection(self) -> duckdb.DuckDBPyConnection:
        """The catalog opened read-only, ready to query from Python; for a bucket warehouse
        with pyarrow's S3 client (the lake's storage options) as DuckDB's `s3://` filesystem,
        so its views read the bucket without the httpfs extension. Raises LakeError when
        there is no catalog yet."""
        if not self.catalog.is_file():
            raise LakeError(f"no catalog at {self.catalog}; materialise a table first, or run "
                            "`vintage catalog refresh`")
        con = duckdb.connect(str(self.catalog), read_only=True)
        if self.bucket:
            con.register_filesystem(bucket_filesystem(self.storage_options))
        return con

    # -- computing -------------------------------------------------------------------------

    @cached_property
    def spill_dir(self) -> Path:
        """DuckDB's spill folder of this process, under the work folder (those of ended
        processes are removed)."""
        root = self.work / "spill"
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.iterdir():
            if leftover.name.isdigit() and not _pid_alive(int(leftover.name)):
                shutil.rmtree(leftover, ignore_errors=True)
        spill = root / str(os.getpid())
        spill.mkdir(exist_ok=True)
        return spill


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def _write_catalog(path: Path, views: list[str], dropped: Iterable[str] = (),
                   new: bool = True) -> None:
    """Write `views` (CREATE OR REPLACE VIEW statements, each maybe after a STAND_IN line: its
    files' names and types are then read from empty stand-ins) into the catalog at `path` and
    drop the views named in `dropped`, in one transaction: a new file in CATALOG_STORAGE_VERSION
    when `new`, else the existing file (keeping its storage version); every schema of SCHEMAS."""
    stand_ins = {}
    for statement in views:
        first, _, rest = statement.partition("\n")
        if first.startswith(STAND_IN) and rest:
            uri, token = first.removeprefix(STAND_IN).rsplit(" ", 1)
            stand_ins[uri] = schema_from_token(token)
    with duckdb.connect() as con:
        if stand_ins:
            con.register_filesystem(stand_in_filesystem(stand_ins))
        version = f" (STORAGE_VERSION {sql_literal(CATALOG_STORAGE_VERSION)})" if new else ""
        con.execute(f"ATTACH {sql_literal(str(path))} AS draft{version}")
        con.execute("USE draft")
        con.execute("BEGIN")
        for schema in SCHEMAS:  # a catalog written before a schema was added gains it
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for statement in views:
            con.execute(statement)
        for name in dropped:
            con.execute(f"DROP VIEW IF EXISTS {name}")
        con.execute("COMMIT")
        con.execute("USE memory")
        con.execute("DETACH draft")  # checkpoints: the file is whole, with no WAL beside it
    _fsync(path)


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


# -- what the Delta log says, cached per table version -----------------------------------------

_rows_cache: dict[tuple[str, int], dict[date, int]] = {}
# the months each commit published, by (table URI, version): a commit never changes
_commit_months: dict[tuple[str, int], tuple[date, ...]] = {}


def _rows_by_month(delta: DeltaTable) -> dict[date, int]:
    """The rows of each month with files at this version (add actions' record counts)."""
    key = (delta.table_uri, delta.version())
    if key not in _rows_cache:
        actions = pa.table(delta.get_add_actions(flatten=True)).to_pydict()
        rows: dict[date, int] = {}
        for month, count in zip(actions.get(f"partition.{PARTITION}", []),
                                actions.get("num_records", []), strict=True):
            month = month if isinstance(month, date) else date.fromisoformat(str(month))
            rows[month] = rows.get(month, 0) + int(count or 0)
        _rows_cache[key] = rows
    return _rows_cache[key]


def _files_of(delta: DeltaTable, months: list[date]) -> list[str]:
    """The current files of `months` (absolute paths or bucket URIs)."""
    folders = {f"/{PARTITION}={m.isoformat()}/" for m in months}
    return sorted(uri for uri in delta.file_uris() if any(f in uri for f in folders))


def _column_names(delta: DeltaTable) -> list[str]:
    """The table's columns in its schema's order (the partition column where it was written)."""
    return [field.name for field in delta.schema().fields]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _empty(delta: DeltaTable) -> pa.Table:
    return pa.schema(delta.schema().to_arrow()).empty_table()
