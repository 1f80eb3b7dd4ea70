"""The four raw sources in a folder, as `.csv`, `.parquet` or a `.zip` holding one CSV.

Each version of a source file is read once, streaming, into a staged Parquet copy with every
column as text and a `_row_number` (the data row in the file, from 1); the raw assets then pick
their months from it with DuckDB.

How a source is read is set per source in `config/contracts.yaml` (`Reading`: the encoding and
delimiter of a CSV, the decimal mark of numbers written as text, the text that means "missing").
A staged copy belongs to the file's bytes (a SHA-256 digest) and to those settings: a corrected
file is staged again even when its size and modification time did not change, and so is a file
whose reading settings change. Typed Parquet columns (dates, timestamps, numbers, categories)
are written as the text a CSV of the same data holds, so both give the same tables.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
# bumped whenever the staged text of a file would change: older staged copies are not reused
_STAGED_FORMAT = 2
# a stat signature younger than this may miss a change made in the same clock tick: rehash
_RACY_SECONDS = 2

# The default missing-value markers: what R (NA), Excel (#N/A), SQL exports (NULL), pandas'
# astype(str) (nan) and people (N/A) write for "no value".
DEFAULT_NULL_VALUES = ("", "NA", "N/A", "n/a", "NULL", "null", "NaN", "nan", "#N/A")
DELIMITERS = (",", ";", "\t", "|")
DECIMALS = (".", ",")


class SourceError(ValueError):
    """A source file is missing, unreadable or not what the platform expects."""


@dataclass(frozen=True)
class Reading:
    """How a source's files are read (`config/contracts.yaml`, `defaults:` and per source).

    `encoding` (a Python codec name, e.g. utf-8, cp1252, latin-1) and `delimiter` (one
    character) apply to a CSV, also inside a zip. `decimal` is the decimal mark of numbers
    written as text: with `,`, a cell such as `1234,5` (or `-0,25`, `52312,68_`) is staged as
    `1234.5`. `null_values` are the cells that mean "missing", in every column (quoted or not):
    they are staged as NULL, like an empty cell. Raises ValueError naming a bad setting.
    """

    encoding: str = "utf-8"
    delimiter: str = ","
    decimal: str = "."
    null_values: tuple[str, ...] = DEFAULT_NULL_VALUES

    def __post_init__(self):
        try:
            codec = codecs.lookup(self.encoding).name
        except (LookupError, TypeError):
            raise ValueError(f"encoding {self.encoding!r} is not an encoding Python knows "
                             f"(e.g. utf-8, cp1252, latin-1)") from None
        # UTF-8 with a byte-order mark is UTF-8: the mark is skipped either way
        codec = "utf-8" if codec == "utf-8-sig" else codec
        plain = "\r\n,;\t|\"'.-_ 0123456789AZaz"
        if plain.encode(codec, "replace") != plain.encode("ascii"):
            raise ValueError(f"encoding {self.encoding!r} is not supported: it does not write "
                             f"plain ASCII characters as single bytes; save the file as UTF-8")
        object.__setattr__(self, "encoding", codec)
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1 \
                or self.delimiter in "\"\r\n":
            raise ValueError(f"delimiter must be one character other than a quote or a line "
                             f"break, e.g. ',' ';' or '\\t'; got {self.delimiter!r}")
        if self.decimal not in DECIMALS:
            raise ValueError(f"decimal must be '.' or ','; got {self.decimal!r}")
        if self.decimal == self.delimiter:
            raise ValueError(f"decimal {self.decimal!r} is also the delimiter; a file with "
                             f"',' decimals needs another delimiter, e.g. ';'")
        if isinstance(self.null_values, str | bytes) or not all(
                isinstance(v, str) for v in self.null_values):
            raise ValueError(f"null_values must be a list of quoted strings (YAML reads an "
                             f"unquoted null, ~, true or 1 as no text); got {self.null_values!r}")
        object.__setattr__(self, "null_values", tuple(self.null_values))

    @property
    def key(self) -> str:
        """Eight hex digits naming these settings in a staged copy's file name."""
        settings = json.dumps([_STAGED_FORMAT, asdict(self)], sort_keys=True)
        return hashlib.sha1(settings.encode()).hexdigest()[:8]

    def describe(self) -> str:
        return (f"encoding {self.encoding}, delimiter {self.delimiter!r}, decimal "
                f"{self.decimal!r}, missing values {list(self.null_values)}")


@dataclass(frozen=True)
class StagedSource:
    name: str
    file: Path  # the user's file
    staged: Path  # the text Parquet copy with _row_number
    columns: tuple[str, ...]
    rows: int
    digest: str = ""  # SHA-256 of the file's bytes (32 hex digits)
    reading: Reading = field(default_factory=Reading)
    notes: tuple[str, ...] = ()  # what reading the file did beyond the plain rules


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


def _signature(path: Path) -> list:
    """What changes whenever a file is written, replaced or touched: its path, size, modification
    and status-change times (a copy keeping the old modification time still changes the
    latter) and inode."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def fingerprint(path: Path) -> str:
    """A cheap identity of a file's current version (16 hex digits, from its stat signature):
    the source-files sensor's change detector. Staging decides by the bytes (`content_digest`)."""
    return hashlib.sha1(json.dumps(_signature(path)).encode()).hexdigest()[:16]


def content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (the first 32 of its hex digits). SHA-256 rather than BLAKE2b:
    with the CPU's SHA instructions it hashes 1.4 GB/s here, BLAKE2b 0.8 GB/s."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()[:32]


# -- reading a CSV ------------------------------------------------------------------------------


def _open_bytes(file: Path, stack: ExitStack) -> io.BufferedIOBase:
    """The CSV bytes of `file`: the file itself, or the one CSV inside a zip."""
    if file.suffix.lower() != ".zip":
        return stack.enter_context(open(file, "rb"))
    archive = stack.enter_context(zipfile.ZipFile(file))
    return stack.enter_context(archive.open(_zip_member(archive, file)))


def _zip_member(archive: zipfile.ZipFile, file: Path) -> str:
    members = [
        m for m in archive.namelist()
        if m.lower().endswith(".csv") and not m.startswith("__MACOSX/")
    ]
    if len(members) != 1:
        raise SourceError(f"{file}: expected one CSV inside the zip, found {len(members)}")
    return members[0]


def _config_hint(name: str, setting: str) -> str:
    from ml_assets.settings import contracts_file

    copy = "" if os.environ.get("VINTAGE_CONTRACTS") else " (or a copy VINTAGE_CONTRACTS names)"
    return f"set `{setting}` for {name} in {contracts_file()}{copy}"


def _check_names(names: list[str], file: Path) -> None:
    """Refuse a header with empty or repeated column names, naming their positions (from 1)."""
    empty = [i + 1 for i, n in enumerate(names) if not n]
    repeated = {n: [i + 1 for i, m in enumerate(names) if m == n]
                for n in names if n and names.count(n) > 1}
    if not empty and not repeated:
        return
    problems = []
    if empty:
        problems.append(f"column{'s' if len(empty) > 1 else ''} "
                        f"{', '.join(map(str, empty))} {'have' if len(empty) > 1 else 'has'} "
                        f"no name")
    problems += [f"columns {', '.join(map(str, at))} are all named {n!r}"
                 for n, at in repeated.items()]
    hint = ("; a file saved with pandas' index (to_csv without index=False)? Save it with "
            "index=False or remove that column" if empty == [1]
            else "; give every column its own name")
    raise SourceError(f"{file}: header: {'; '.join(problems)}{hint}")


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def guess_delimiter(line: str) -> str:
    """Whichever of , ; tab | splits a header line into the most columns (`,` on a tie)."""
    return max(DELIMITERS, key=lambda d: (len(_split(line, d)), d == ","))


_COMMA_NUMBER = re.compile(r"[-+]?[0-9]+,[0-9]+")
_DOT_NUMBER = re.compile(r"[-+]?[0-9]+\.[0-9]+")


def guess_decimal(lines: list[str], delimiter: str) -> str:
    """`,` when more cells of `lines` are numbers written `1234,5` than `1234.5`, else `.`."""
    if delimiter == ",":
        return "."
    cells = [c.strip() for line in lines for c in _split(line, delimiter)]
    commas = sum(bool(_COMMA_NUMBER.fullmatch(c)) for c in cells)
    dots = sum(bool(_DOT_NUMBER.fullmatch(c)) for c in cells)
    return "," if commas > dots else "."


def guess_encoding(data: bytes, tried: str = "utf-8") -> str:
    """The first of utf-8, cp1252 (Windows, Excel's "CSV"), latin-1 other than `tried` that
    decodes `data`."""
    for encoding in ("utf-8", "cp1252", "latin-1"):
        if encoding == tried:
            continue
        try:
            data.decode(encoding)
            return encoding
        except UnicodeDecodeError:
            continue
    return "latin-1"


def _csv_header(stream: io.BufferedIOBase, file: Path, name: str, reading: Reading) -> list[str]:
    first_line = stream.readline()
    if not first_line.strip():
        raise SourceError(f"{file}: the file is empty (no header row)")
    if first_line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SourceError(f"{file}: the file is UTF-16 (it starts with a UTF-16 byte-order "
                          f"mark); save it as UTF-8 CSV")
    try:
        text = first_line.decode("utf-8-sig" if reading.encoding == "utf-8" else reading.encoding)
    except UnicodeDecodeError as error:
        guess = guess_encoding(first_line, reading.encoding)
        raise SourceError(
            f"{file}: header row: byte {first_line[error.start:error.end]!r} at byte offset "
            f"{error.start} is not {reading.encoding}; the file looks {guess}: "
            f"{_config_hint(name, f'encoding: {guess}')}") from None
    header = [column.strip() for column in _split(text, reading.delimiter)]
    other = guess_delimiter(text)
    if len(header) == 1 and len(_split(text, other)) > 1:
        sample = [stream.readline().decode(reading.encoding, "replace") for _ in range(200)]
        decimal = guess_decimal(sample, other)
        comma = " and writes numbers with ',' decimals (1234,5)" if decimal == "," else ""
        setting = f"delimiter: {json.dumps(other)}" + (', decimal: ","' if comma else "")
        raise SourceError(
            f"{file}: the header reads as one column with delimiter {reading.delimiter!r} but "
            f"as {len(_split(text, other))} with {other!r}: the file is {other!r}-delimited"
            f"{comma}; {_config_hint(name, setting)}")
    _check_names(header, file)
    return header


def _csv_batches(stream: io.BufferedIOBase, header: list[str], reading: Reading
                 ) -> Iterator[pa.RecordBatch]:
    yield from pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=header, block_size=_BLOCK_BYTES,
                                       encoding=reading.encoding),
        parse_options=pacsv.ParseOptions(delimiter=reading.delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={column: pa.string() for column in header},
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            null_values=list(reading.null_values),
        ),
    )


# -- reading a Parquet file -------------------------------------------------------------------

_PANDAS_INDEX = re.compile(r"__index_level_[0-9]+__")
# `2023-07-01 00:00:00.000000000` -> `2023-07-01`; `12:30:05.000` -> `12:30:05`
_ZERO_TIME = r"( 00:00:00)?(\.0+)?$"


def _parquet_columns(parquet: pq.ParquetFile, file: Path) -> tuple[list[str], tuple[str, ...]]:
    """The data columns of a Parquet file, and notes: pandas' unnamed index (`__index_level_0__`,
    written by to_parquet with an index) is not data and is dropped."""
    names = parquet.schema_arrow.names
    index = (parquet.schema_arrow.pandas_metadata or {}).get("index_columns", [])
    dropped = [n for n in names if n in index and _PANDAS_INDEX.fullmatch(n)]
    columns = [n for n in names if n not in dropped]
    _check_names(columns, file)
    notes = tuple(f"dropped column {n}: pandas' index, not data" for n in dropped)
    return columns, notes


def as_text(array: pa.Array, reading: Reading) -> pa.Array:
    """A Parquet column as the text a CSV of the same data holds (a string array).

    Dates read `2023-07-01`; timestamps of any unit the same at midnight, else
    `2023-07-01 12:30:05[.fraction]`; a time-zone-aware timestamp is first converted to the wall
    time in its own zone (a pandas `Europe/Paris` column gives the Paris date; a UTC one, e.g.
    Spark's, the UTC date). Floats read as their shortest form (40.0 is `40`, NaN is missing),
    decimals, integers and booleans as Arrow writes them; dictionaries (categoricals) as their
    values; text gets the source's missing-value markers and decimal mark. Raises TypeError for
    a nested column (list, struct, map).
    """
    kind = array.type
    if pa.types.is_dictionary(kind):
        return as_text(array.dictionary_decode(), reading)
    if pa.types.is_nested(kind):
        raise TypeError(f"it holds {kind} values, not plain values")
    if pa.types.is_timestamp(kind):
        if kind.tz:
            array = pc.local_timestamp(array)
        return pc.replace_substring_regex(array.cast(pa.string()), _ZERO_TIME, "")
    if pa.types.is_floating(kind):
        array = pc.if_else(pc.is_nan(array), pa.scalar(None, kind), array)
    text = array.cast(pa.string())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        return text_cells(text, reading)
    return text


_COMMA_DECIMAL = r"^([-+]?[0-9]+),([0-9]+([eE][-+]?[0-9]+)?_*)$"


def text_cells(text: pa.Array, reading: Reading, nulls: bool = True) -> pa.Array:
    """Text cells with the source's reading rules: missing-value markers become NULL (unless
    `nulls` is false: the CSV reader has done that) and, with decimal ',', a number written
    `1234,5` becomes `1234.5`."""
    if nulls and reading.null_values:
        markers = pc.is_in(text, value_set=pa.array(reading.null_values, pa.string()))
        text = pc.if_else(markers, pa.scalar(None, pa.string()), text)
    if reading.decimal == ",":
        text = pc.replace_substring_regex(text, _COMMA_DECIMAL, r"\1.\2")
    return text


def _parquet_batches(parquet: pq.ParquetFile, file: Path, columns: list[str], reading: Reading,
                     where: dict) -> Iterator[pa.RecordBatch]:
    for group in range(parquet.num_row_groups):
        where["row_group"] = group
        for batch in parquet.iter_batches(batch_size=65_536, row_groups=[group],
                                          columns=columns):
            arrays = []
            for column in columns:
                where["column"] = column
                try:
                    arrays.append(as_text(batch.column(column), reading))
                except TypeError as error:
                    raise SourceError(f"{file}: column {column}: {error}; the platform reads "
                                      f"one plain value per cell") from None
            where["column"] = None
            yield pa.RecordBatch.from_arrays(arrays, names=columns)


@contextmanager
def _read_text_batches(file: Path, name: str, reading: Reading, where: dict
                       ) -> Iterator[tuple[list[str], Iterator[pa.RecordBatch], tuple]]:
    """The column names of `file`, its rows as text batches (streamed) and notes. `where`
    records the row group and column being read, for an error message."""
    if file.suffix.lower() == ".parquet":
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as error:
            raise SourceError(
                f"{file}: not readable as Parquet ({file.stat().st_size} bytes): its footer, "
                f"at the end of the file, which lists its columns and row groups, is missing "
                f"or damaged: the file is cut short or is not Parquet ({error})") from None
        columns, notes = _parquet_columns(parquet, file)
        where["parquet"] = parquet
        yield columns, _parquet_batches(parquet, file, columns, reading, where), notes
        return
    with ExitStack() as stack:
        stream = _open_bytes(file, stack)
        header = _csv_header(stream, file, name, reading)
        # pyarrow refuses an empty stream: a header without rows is a file with no rows
        batches = _csv_batches(stream, header, reading) if stream.peek(1) else iter(())
        if reading.decimal == ",":
            batches = (pa.RecordBatch.from_arrays(
                [text_cells(c, reading, nulls=False) for c in b.columns], names=header)
                for b in batches)
        yield header, batches, ()


# -- where an unreadable file breaks ----------------------------------------------------------


class _SalvagedZip(io.RawIOBase):
    """The first member of a zip whose end (the central directory) is missing, decompressed
    from its local header: how far a cut-short zip still reads. Raises EOFError at the cut."""

    def __init__(self, raw: io.BufferedIOBase, method: int):
        self.raw, self.inflate = raw, zlib.decompressobj(-15) if method == 8 else None
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            chunk = self.raw.read(1 << 16)
            if self.inflate is None:
                self.pending = chunk
                if not chunk:
                    return 0
            elif self.inflate.eof:
                return 0
            elif not chunk:
                raise EOFError("the file ends inside the compressed CSV")
            else:
                self.pending = self.inflate.decompress(chunk)
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        return size


def _salvage_zip(file: Path, stack: ExitStack) -> io.BufferedIOBase | None:
    raw = stack.enter_context(file.open("rb"))
    head = raw.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return None
    flags, method = struct.unpack("<HH", head[6:10])
    name_length, extra_length = struct.unpack("<HH", head[26:30])
    name = raw.read(name_length).decode("utf-8", "replace")
    raw.read(extra_length)
    if flags & 1 or method not in (0, 8) or not name.lower().endswith(".csv"):
        return None
    return io.BufferedReader(_SalvagedZip(raw, method))


_SURROGATE = re.compile("[\udc80-\udcff]")
_STREAM_ERRORS = (zlib.error, EOFError, zipfile.BadZipFile, OSError)


def _zip_intact(file: Path) -> bool:
    """Whether the CSV inside a zip decompresses whole and passes its CRC check."""
    try:
        with ExitStack() as stack:
            stream = _open_bytes(file, stack)
            while stream.read(1 << 20):
                pass
        return True
    except _STREAM_ERRORS:
        return False


def _csv_line(fields: list[str], delimiter: str) -> str:
    """Fields as one CSV line again, quoted where they need it."""
    line = io.StringIO()
    csv.writer(line, delimiter=delimiter, lineterminator="").writerow(fields)
    return line.getvalue()


def _shown(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _find_break(stream: io.BufferedIOBase, file: Path, name: str, reading: Reading
                ) -> str | None:
    """Where a CSV stops reading, by the data row (from 1) and byte offset: the first row
    with bytes that are not `reading.encoding`, with more or fewer fields than the header, or a
    quote that never closes; or where the stream itself breaks (a damaged or cut-short zip).
    None if every row reads (Python's csv module, streamed: the error path only)."""
    state = {"offset": 0, "undecodable": None, "complete": True}

    def lines():
        for number, raw in enumerate(stream):
            if number == 0 and reading.encoding == "utf-8" and raw.startswith(codecs.BOM_UTF8):
                state["offset"], raw = len(codecs.BOM_UTF8), raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode(reading.encoding)
            except UnicodeDecodeError as error:
                if state["undecodable"] is None:
                    state["undecodable"] = (state["offset"] + error.start,
                                            raw[error.start:error.end])
                text = raw.decode(reading.encoding, "surrogateescape")
            state["offset"] += len(raw)
            state["complete"] = raw.endswith(b"\n")
            yield text

    reader = csv.reader(lines(), delimiter=reading.delimiter, strict=True)
    inside = " of the CSV inside the zip" if file.suffix.lower() == ".zip" else ""
    row = 0
    try:
        header = next(reader)
        while True:
            start = state["offset"]
            try:
                fields = next(reader)
            except StopIteration:
                return None
            except csv.Error as error:
                if "unexpected end of data" in str(error) or "field larger" in str(error):
                    return (f"data row {row + 1} (byte offset {start}{inside}) opens a quoted "
                            f"value that never closes: the file is cut short, or a quote is "
                            f"missing")
                return f"data row {row + 1} (byte offset {start}{inside}): {error}"
            if not fields:
                continue
            row += 1
            where = f"data row {row} (byte offset {start}{inside})"
            if state["undecodable"]:
                offset, data = state["undecodable"]
                at = next((i for i, f in enumerate(fields) if _SURROGATE.search(f)), 0)
                column = header[at] if at < len(header) else f"{at + 1} (beyond the header)"
                raw_value = fields[at].encode(reading.encoding, "surrogateescape")
                guess = guess_encoding(raw_value, reading.encoding)
                dated = (f" (snapshot_date {fields[header.index('snapshot_date')]})"
                         if "snapshot_date" in header and len(fields) == len(header) else "")
                excel = "Excel on Windows saves CSV as cp1252; " if guess == "cp1252" else ""
                return (f"data row {row}{dated}, column {column}: byte {data!r} at byte offset "
                        f"{offset}{inside} is not {reading.encoding}; read as {guess} the value "
                        f"is {raw_value.decode(guess)!r}: the file looks {guess}-encoded "
                        f"({excel}{_config_hint(name, f'encoding: {guess}')})")
            if len(fields) != len(header):
                text = _csv_line(fields, reading.delimiter)
                if len(fields) < len(header) and not state["complete"]:
                    return (f"the file ends in the middle of {where}: {len(fields)} of "
                            f"{len(header)} fields ({_shown(text)}); it is cut short")
                return (f"{where} has {len(fields)} fields, the header has {len(header)}: "
                        f"{_shown(text)}")
    except _STREAM_ERRORS as error:
        return (f"the data breaks after data row {row} (byte offset {state['offset']}{inside}): "
                f"{error}")


def _break_message(file: Path, name: str, reading: Reading, rows: int, where: dict,
                   error: Exception) -> str:
    """The message for a file that stopped reading: the row (and byte or row group) where it
    breaks, found by a second, careful pass; else the row the fast reader had reached."""
    parquet = where.get("parquet")
    if parquet is not None:
        group, groups = where.get("row_group", 0), parquet.num_row_groups
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(groups)]
        first = sum(sizes[:group]) + 1
        column = f", column {where['column']}" if where.get("column") else ""
        return (f"{file}: row group {group + 1} of {groups} (data rows {first}.."
                f"{first + sizes[group] - 1}){column}: unreadable: {error}")
    with ExitStack() as stack:
        try:
            stream = _open_bytes(file, stack)
        except zipfile.BadZipFile:
            stream = _salvage_zip(file, stack)
            if stream is None:
                return f"{file}: not readable as a zip ({error})"
            found = _find_break(stream, file, name, reading) or "its CSV reads whole"
            return (f"{file}: the zip is cut short or damaged (its end, which lists its "
                    f"contents, is missing): {found}")
        except _STREAM_ERRORS as open_error:
            return f"{file}: not readable: {open_error}"
        found = _find_break(stream, file, name, reading)
    damaged = "the zip is damaged (its CSV fails the zip's CRC check); " \
        if file.suffix.lower() == ".zip" and not _zip_intact(file) else ""
    if found:
        return f"{file}: {damaged}{found}"
    place = f"after data row {rows}" if rows else "at its start"
    return f"{file}: corrupt or truncated file, unreadable {place}: {error}"


# -- staging ----------------------------------------------------------------------------------

_UNREADABLE = (pa.ArrowException, OSError, zipfile.BadZipFile, zlib.error, EOFError,
               UnicodeError, csv.Error)


def _write_staged(file: Path, name: str, reading: Reading, target: Path
                  ) -> tuple[tuple[str, ...], int, tuple[str, ...]]:
    """Stream `file` into `target` as text Parquet with row numbers; returns (columns, rows,
    notes). Raises SourceError naming the file and where it breaks."""
    rows, where = 0, {}
    try:
        with _read_text_batches(file, name, reading, where) as (columns, batches, notes):
            schema = pa.schema([(c, pa.string()) for c in columns] + [(ROW_NUMBER, pa.int64())])
            with pq.ParquetWriter(target, schema, compression="zstd") as writer:
                for batch in batches:
                    numbers = pa.array(np.arange(rows + 1, rows + batch.num_rows + 1))
                    writer.write_batch(batch.append_column(ROW_NUMBER, numbers))
                    rows += batch.num_rows
    except _UNREADABLE as error:
        raise SourceError(_break_message(file, name, reading, rows, where, error)) from None
    return tuple(columns), rows, notes


def configured_reading(name: str) -> Reading:
    """The reading settings of source `name` in the data contracts (VINTAGE_CONTRACTS or
    config/contracts.yaml); the defaults for a source without a contract."""
    from ml_assets.contracts import contracts

    contract = contracts().get(name)
    return contract.reading if contract else Reading()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


def stage(file: Path, name: str, staging_dir: Path, reading: Reading | None = None
          ) -> StagedSource:
    """The staged copy of `file` (source `name`) read with `reading` (default: the source's
    settings in the data contracts), made now if these bytes have none yet with these settings.

    A staged copy is found by the file's stat signature when that was seen before (no
    reading), else by hashing the file (SHA-256, about 1.4 GB/s) and looking for a copy of the
    same bytes; only new bytes are parsed. Raises SourceError for an empty or unreadable file,
    naming the data row (and byte or row group) where it breaks.
    """
    reading = reading or configured_reading(name)
    staging_dir.mkdir(parents=True, exist_ok=True)
    signature = _signature(file)
    for info in staging_dir.glob(f"{name}-*-{reading.key}.json"):
        meta = _read_json(info)
        if meta and signature in meta["signatures"] and info.with_suffix(".parquet").is_file():
            return _staged_source(meta, name, file, info.with_suffix(".parquet"), reading)
    if file.stat().st_size == 0:
        raise SourceError(f"{file}: the file is empty (0 bytes)")
    digest = content_digest(file)
    if _signature(file) != signature:
        raise SourceError(f"{file}: the file changed while it was being read; run again once "
                          f"it is complete")
    target = staging_dir / f"{name}-{digest}-{reading.key}.parquet"
    info = target.with_suffix(".json")
    meta = _read_json(info) if target.is_file() else None
    if meta is None:
        partial = staging_dir / f".{target.name}.{os.getpid()}.tmp"
        try:
            columns, rows, notes = _write_staged(file, name, reading, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        meta = {"file": str(file), "digest": digest, "reading": asdict(reading),
                "columns": columns, "rows": rows, "notes": notes, "signatures": []}
    if time.time_ns() - signature[3] > _RACY_SECONDS * 10**9:
        meta["signatures"] = [signature] + [s for s in meta["signatures"] if s != signature][:4]
    _write_json(info, meta)
    _forget_old_versions(staging_dir, name, keep=target)
    return _staged_source(meta, name, file, target, reading)


def staged_copy(name: str, file: Path, staged: Path) -> StagedSource:
    """The StagedSource of an existing staged copy `staged` of `file` (its description is the
    JSON beside it): what a later step of a run reads without looking at the file again.
    Raises SourceError when the copy has gone."""
    meta = _read_json(staged.with_suffix(".json"))
    if meta is None or not staged.is_file():
        raise SourceError(f"{file}: its staged copy {staged.name} is gone; run again")
    return _staged_source(meta, name, file, staged, Reading(**{
        **meta["reading"], "null_values": tuple(meta["reading"]["null_values"])}))


def _staged_source(meta: dict, name: str, file: Path, target: Path, reading: Reading
                   ) -> StagedSource:
    return StagedSource(name, file, target, tuple(meta["columns"]), meta["rows"],
                        meta["digest"], reading, tuple(meta.get("notes", ())))


def _forget_old_versions(staging_dir: Path, name: str, keep: Path, age_seconds: float = 600):
    """Drop staged copies of older versions of a source, once no run can still be reading them."""
    now = time.time()
    for old in staging_dir.glob(f"{name}-*"):
        if not old.name.startswith(keep.stem + ".") and now - old.stat().st_mtime > age_seconds:
            old.unlink(missing_ok=True)


def _decodes(file: Path, encoding: str) -> bool:
    """Whether every byte of a CSV (or the CSV inside a zip) decodes as `encoding`."""
    with ExitStack() as stack:
        stream = _open_bytes(file, stack)
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def detect_reading(file: Path) -> Reading:
    """The reading settings a CSV (or a zip of one) appears to need: the encoding (utf-8 if all
    its bytes decode as UTF-8, else cp1252 if they do as that, else latin-1; reads the whole
    file), the delimiter (`guess_delimiter` on the header) and the decimal mark (`guess_decimal`
    on the first 1,000 rows). The defaults for Parquet."""
    if file.suffix.lower() == ".parquet":
        return Reading()
    encoding = next((e for e in ("utf-8", "cp1252") if _decodes(file, e)), "latin-1")
    with ExitStack() as stack:
        stream = _open_bytes(file, stack)
        lines = [stream.readline().decode(encoding).lstrip("\ufeff") for _ in range(1001)]
    lines = [line for line in lines if line.strip()]
    delimiter = guess_delimiter(lines[0]) if lines else ","
    return Reading(encoding=encoding, delimiter=delimiter,
                   decimal=guess_decimal(lines[1:], delimiter))


def month_range(staged: StagedSource, macros_sql: str) -> tuple[date, date]:
    """The first and last month of a staged source's `snapshot_date`. Raises SourceError when
    the file has no data rows or none with a readable date."""
    if "snapshot_date" not in staged.columns:
        raise SourceError(f"{staged.file}: no snapshot_date column")
    if not staged.rows:
        raise SourceError(f"{staged.file}: the file has a header but no data rows")
    cache = staged.staged.with_suffix(".months.json")
    if cache.is_file():
        first, last = json.loads(cache.read_text())
        return date.fromisoformat(first), date.fromisoformat(last)
    with duckdb.connect() as con:
        con.execute(macros_sql)
        first, last, example = con.execute(
            "SELECT min(month), max(month), any_value(snapshot_date) FROM (SELECT "
            "date_trunc('month', parse_source_date(snapshot_date))::DATE AS month, "
            "snapshot_date FROM read_parquet($path))",
            {"path": str(staged.staged)},
        ).fetchall()[0]
    if first is None:
        raise SourceError(f"{staged.file}: column snapshot_date: no row has a readable date "
                          f"(e.g. {example!r})")
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
        """Source `name` staged with its reading settings from the data contracts."""
        return stage(self.locate(name), name, Path(self.staging_dir))
