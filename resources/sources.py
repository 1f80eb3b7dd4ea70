"""The four raw sources in a folder, as `.csv`, `.parquet` or a `.zip` holding one CSV.

Each version of a source file is read once, streaming, into a staged Parquet copy with every
column as text and a `_row_number` (the data row in the file, from 1); the raw assets then pick
their months from it with DuckDB. A changed file (size or modification time) is staged again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SOURCE_NAMES = (
    "lms_loan_daily",
    "feature_clickstream",
    "features_attributes",
    "features_financials",
)
SUFFIXES = (".csv", ".parquet", ".zip")
ROW_NUMBER = "_row_number"
_BLOCK_BYTES = 16 << 20


class SourceError(ValueError):
    """A source file is missing, unreadable or not what the platform expects."""


@dataclass(frozen=True)
class StagedSource:
    name: str
    file: Path  # the user's file
    staged: Path  # the text Parquet copy with _row_number
    columns: tuple[str, ...]
    rows: int


def locate(folder: Path, name: str) -> Path:
    """The one file of source `name` in `folder`, resolved and confined to the folder."""
    if name not in SOURCE_NAMES:
        raise SourceError(f"unknown source {name!r}; sources are {', '.join(SOURCE_NAMES)}")
    folder = folder.resolve()
    if not folder.is_dir():
        raise SourceError(f"source folder {folder} does not exist")
    found = [folder / f"{name}{suffix}" for suffix in SUFFIXES]
    found = [path for path in found if path.exists()]
    if not found:
        raise SourceError(f"{folder}: no {name}.csv, {name}.parquet or {name}.zip")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SourceError(f"{folder}: several files for {name} ({names}); keep one")
    path = found[0].resolve()
    if path.parent != folder or not path.is_file():
        raise SourceError(f"{found[0]}: must be a regular file inside {folder}")
    return path


def fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _csv_header(stream: io.BufferedIOBase, file: Path) -> list[str]:
    first_line = stream.readline()
    if not first_line.strip():
        raise SourceError(f"{file}: the file is empty (no header row)")
    header = [column.strip() for column in next(csv.reader([first_line.decode("utf-8-sig")]))]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated or "" in header:
        raise SourceError(f"{file}: header has duplicate or empty column names {duplicated}")
    return header


def _csv_batches(stream: io.BufferedIOBase, header: list[str]) -> Iterator[pa.RecordBatch]:
    yield from pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=header, block_size=_BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(
            column_types={column: pa.string() for column in header},
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            null_values=[""],
        ),
    )


def _parquet_batches(parquet: pq.ParquetFile) -> Iterator[pa.RecordBatch]:
    for batch in parquet.iter_batches(batch_size=256_000):
        yield pa.RecordBatch.from_arrays(
            [column.cast(pa.string()) for column in batch.columns], names=batch.schema.names
        )


def _zip_member(archive: zipfile.ZipFile, file: Path) -> str:
    members = [
        m for m in archive.namelist()
        if m.lower().endswith(".csv") and not m.startswith("__MACOSX/")
    ]
    if len(members) != 1:
        raise SourceError(f"{file}: expected one CSV inside the zip, found {len(members)}")
    return members[0]


@contextmanager
def _read_text_batches(file: Path) -> Iterator[tuple[list[str], Iterator[pa.RecordBatch]]]:
    """The column names of `file` and its rows as text batches, streamed."""
    if file.suffix.lower() == ".parquet":
        parquet = pq.ParquetFile(file)
        yield parquet.schema_arrow.names, _parquet_batches(parquet)
        return
    with ExitStack() as stack:
        if file.suffix.lower() == ".zip":
            archive = stack.enter_context(zipfile.ZipFile(file))
            stream = stack.enter_context(archive.open(_zip_member(archive, file)))
        else:
            stream = stack.enter_context(open(file, "rb"))
        header = _csv_header(stream, file)
        yield header, _csv_batches(stream, header)


_UNREADABLE = (pa.ArrowInvalid, pa.ArrowTypeError, OSError, zipfile.BadZipFile, zlib.error,
               EOFError, UnicodeDecodeError, csv.Error)


def _write_staged(file: Path, target: Path) -> tuple[tuple[str, ...], int]:
    """Stream `file` into `target` as text Parquet with row numbers; returns (columns, rows)."""
    rows = 0
    try:
        with _read_text_batches(file) as (columns, batches):
            schema = pa.schema([(c, pa.string()) for c in columns] + [(ROW_NUMBER, pa.int64())])
            with pq.ParquetWriter(target, schema, compression="zstd") as writer:
                for batch in batches:
                    numbers = pa.array(np.arange(rows + 1, rows + batch.num_rows + 1))
                    writer.write_batch(batch.append_column(ROW_NUMBER, numbers))
                    rows += batch.num_rows
    except _UNREADABLE as error:
        where = f"after data row {rows}" if rows else "at its start"
        raise SourceError(
            f"{file}: corrupt or truncated file, unreadable {where}: {error}"
        ) from None
    return tuple(columns), rows


def stage(file: Path, name: str, staging_dir: Path) -> StagedSource:
    """The staged copy of `file` (source `name`), made now if this version has none yet."""
    staging_dir.mkdir(parents=True, exist_ok=True)
    target = staging_dir / f"{name}-{fingerprint(file)}.parquet"
    info = target.with_suffix(".json")
    if target.is_file() and info.is_file():
        meta = json.loads(info.read_text())
        return StagedSource(name, file, target, tuple(meta["columns"]), meta["rows"])
    if file.stat().st_size == 0:
        raise SourceError(f"{file}: the file is empty (0 bytes)")
    partial = staging_dir / f".{target.name}.{os.getpid()}.tmp"
    try:
        columns, rows = _write_staged(file, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    info_partial = staging_dir / f".{info.name}.{os.getpid()}.tmp"
    info_partial.write_text(json.dumps({"file": str(file), "columns": columns, "rows": rows}))
    os.replace(info_partial, info)
    _forget_old_versions(staging_dir, name, keep=target)
    return StagedSource(name, file, target, columns, rows)


def _forget_old_versions(staging_dir: Path, name: str, keep: Path, age_seconds: float = 600):
    """Drop staged copies of older versions of a source, once no run can still be reading them."""
    now = time.time()
    for old in staging_dir.glob(f"{name}-*"):
        if old.stem != keep.stem and now - old.stat().st_mtime > age_seconds:
            old.unlink(missing_ok=True)


def month_range(staged: StagedSource, macros_sql: str) -> tuple[date, date]:
    """The first and last month of a staged source's `snapshot_date`."""
    if "snapshot_date" not in staged.columns:
        raise SourceError(f"{staged.file}: no snapshot_date column")
    cache = staged.staged.with_suffix(".months.json")
    if cache.is_file():
        first, last = json.loads(cache.read_text())
        return date.fromisoformat(first), date.fromisoformat(last)
    with duckdb.connect() as con:
        con.execute(macros_sql)
        first, last = con.execute(
            "SELECT min(month), max(month) FROM (SELECT date_trunc('month', "
            "parse_source_date(snapshot_date))::DATE AS month FROM read_parquet($path))",
            {"path": str(staged.staged)},
        ).fetchall()[0]
    if first is None:
        raise SourceError(f"{staged.file}: no row has a readable snapshot_date")
    cache.write_text(json.dumps([first.isoformat(), last.isoformat()]))
    return first, last


class Sources(dg.ConfigurableResource):
    """The folder of raw source files. With `demo`, the folder is the embedded demo data,
    generated there on first use."""

    folder: str
    staging_dir: str
    demo: bool = False
    demo_scale: float = 1.0
    demo_seed: int = 42
    demo_shift_month: str = "2024-07"

    def ensure_available(self) -> None:
        if self.demo:
            from ml_assets.demo import ensure_demo_data

            ensure_demo_data(Path(self.folder), self.demo_scale, self.demo_seed,
                             self.demo_shift_month)

    def locate(self, name: str) -> Path:
        self.ensure_available()
        return locate(Path(self.folder), name)

    def stage(self, name: str) -> StagedSource:
        return stage(self.locate(name), name, Path(self.staging_dir))
