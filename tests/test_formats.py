"""How source files are read: encodings, delimiters, decimal marks, missing-value markers, ISO
timestamps, headers, typed Parquet, where a broken file breaks, and when a file is staged again.

Each fault is tested for every source and every format it can arrive in (`.csv`, `.zip` of a
CSV, `.parquet`), on small files made here."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import zipfile
import zlib
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import resources.sources as sources
from resources.lake import sql_text
from resources.sources import (
    SOURCE_NAMES,
    Reading,
    SourceError,
    detect_reading,
    fingerprint,
    locate,
    month_range,
    stage,
)

COLUMNS = ["Customer_ID", "Name", "Amount", "Count", "Mix", "loan_start_date", "snapshot_date"]
ROWS = [
    ["CUS_1", "Ann Lee", "52312.68", "4", "Good", "2023-01-15", "2023-01-01"],
    ["CUS_2", "Bo Chan", "-0.25", "", "Bad", "2023-01-20", "2023-01-01"],
    ["CUS_3", "Cy Diaz", "1234.5", "40", "", "2023-02-03", "2023-02-01"],
    ["CUS_4", "Di Ekon", "52312.68_", "7", "_", "2023-02-07", "2023-02-01"],
]
DEFAULT = Reading()


def csv_bytes(rows, header=COLUMNS, delimiter=",", encoding="utf-8", newline="\n") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def write_source(folder: Path, name: str, fmt: str, data: bytes) -> Path:
    """`data` (CSV bytes) as source `name` in `folder`: the CSV itself or a zip holding it."""
    if fmt == "csv":
        path = folder / f"{name}.csv"
        path.write_bytes(data)
    else:
        path = folder / f"{name}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{name}.csv", data)
    return path


def staged_rows(staged) -> list[dict]:
    with duckdb.connect() as con:
        result = con.execute("SELECT * FROM read_parquet($p) ORDER BY _row_number",
                             {"p": str(staged.staged)})
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def column_of(staged, name: str) -> list:
    return [row[name] for row in staged_rows(staged)]


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    return path


def read(folder: Path, name: str, tmp_path: Path, reading: Reading = DEFAULT):
    return stage(locate(folder, name), name, tmp_path / "staging", reading)


CSV_FORMATS = ["csv", "zip"]
EVERY_SOURCE = pytest.mark.parametrize("name", SOURCE_NAMES)


# -- encodings (case03: a cp1252 file from Excel on Windows) ---------------------------------


def accented(rows=ROWS, row=2, column="Name", value="Renée Müller"):
    changed = [list(r) for r in rows]
    changed[row - 1][COLUMNS.index(column)] = value
    return changed


@EVERY_SOURCE
@pytest.mark.parametrize("fmt", CSV_FORMATS)
def test_a_cp1252_file_names_the_row_column_and_encoding_then_reads_when_configured(
        folder, tmp_path, name, fmt):
    data = csv_bytes(accented(row=3), encoding="cp1252")
    write_source(folder, name, fmt, data)
    with pytest.raises(SourceError) as error:
        read(folder, name, tmp_path)
    message = str(error.value)
    offset = data.index("é".encode("cp1252"))
    assert f"{name}.{fmt}: data row 3 (snapshot_date 2023-02-01), column Name: byte b'\\xe9' " \
           f"at byte offset {offset}" in message
    assert "is not utf-8; read as cp1252 the value is 'Renée Müller'" in message
    assert f"set `encoding: cp1252` for {name} in config/contracts.yaml" in message
    staged = read(folder, name, tmp_path, Reading(encoding="cp1252"))
    assert column_of(staged, "Name")[2] == "Renée Müller"


@pytest.mark.parametrize("column", ["Customer_ID", "Mix", "snapshot_date"])
def test_the_encoding_error_names_whichever_column_holds_the_bytes(folder, tmp_path, column):
    write_source(folder, "lms_loan_daily", "csv",
                 csv_bytes(accented(row=4, column=column, value="Ünï"), encoding="latin-1"))
    with pytest.raises(SourceError, match=f"data row 4.*, column {column}: byte"):
        read(folder, "lms_loan_daily", tmp_path)


def test_bytes_cp1252_cannot_hold_are_suggested_as_latin1(folder, tmp_path):
    data = csv_bytes(ROWS).replace(b"Bo Chan", b"Bo \x81Chan")
    write_source(folder, "features_attributes", "csv", data)
    with pytest.raises(SourceError, match="the file looks latin-1-encoded"):
        read(folder, "features_attributes", tmp_path)


def test_a_header_that_is_not_utf8_is_named(folder, tmp_path):
    header = [*COLUMNS[:-1], "snapshot_dáte"]
    write_source(folder, "features_attributes", "csv",
                 csv_bytes(ROWS, header=header, encoding="cp1252"))
    with pytest.raises(SourceError, match=r"header row: byte b'\\xe1' at byte offset \d+ is not "
                                          r"utf-8; the file looks cp1252"):
        read(folder, "features_attributes", tmp_path)


def test_a_utf8_byte_order_mark_is_skipped_and_utf16_is_named(folder, tmp_path):
    write_source(folder, "features_attributes", "csv", b"\xef\xbb\xbf" + csv_bytes(ROWS))
    assert read(folder, "features_attributes", tmp_path).columns[0] == "Customer_ID"
    write_source(folder, "features_attributes", "csv", csv_bytes(ROWS, encoding="utf-16"))
    with pytest.raises(SourceError, match="the file is UTF-16.*save it as UTF-8"):
        read(folder, "features_attributes", tmp_path / "again")


# -- delimiters and decimal marks (case04: Excel in a European locale) -----------------------


def european(rows=ROWS):
    return [[v.replace(".", ",") if v.replace(".", "").replace("-", "").isdigit() else v
             for v in row] for row in rows]


@EVERY_SOURCE
@pytest.mark.parametrize("fmt", CSV_FORMATS)
def test_a_semicolon_file_with_comma_decimals_is_named_then_reads_when_configured(
        folder, tmp_path, name, fmt):
    rows = european([*ROWS, ["CUS_5", "Ed Fox", "1,5E+3", "2", "Good", "2023-02-01",
                             "2023-02-01"]])
    rows[0][1] = "Lee, Ann"  # a comma in text is text
    write_source(folder, name, fmt, csv_bytes(rows, delimiter=";"))
    with pytest.raises(SourceError) as error:
        read(folder, name, tmp_path)
    assert f"{name}.{fmt}: the header reads as one column with delimiter ',' but as 7 with " \
           f"';': the file is ';'-delimited and writes numbers with ',' decimals (1234,5); " \
           f"set `delimiter: \";\", decimal: \",\"` for {name}" in str(error.value)
    staged = read(folder, name, tmp_path, Reading(delimiter=";", decimal=","))
    assert column_of(staged, "Amount") == ["52312.68", "-0.25", "1234.5", "52312.68_", "1.5E+3"]
    assert column_of(staged, "Name")[0] == "Lee, Ann"


@pytest.mark.parametrize("delimiter", ["\t", "|", ";"])
def test_other_delimiters_are_detected_and_read(folder, tmp_path, delimiter):
    write_source(folder, "feature_clickstream", "csv", csv_bytes(ROWS, delimiter=delimiter))
    with pytest.raises(SourceError, match=re.escape(
            f"the file is {delimiter!r}-delimited; set `delimiter: {json.dumps(delimiter)}`")):
        read(folder, "feature_clickstream", tmp_path)
    staged = read(folder, "feature_clickstream", tmp_path, Reading(delimiter=delimiter))
    assert staged_rows(staged)[0]["Amount"] == "52312.68"


def test_a_comma_file_read_with_a_semicolon_setting_is_named(folder, tmp_path):
    write_source(folder, "lms_loan_daily", "csv", csv_bytes(ROWS))
    with pytest.raises(SourceError, match="the file is ','-delimited; set `delimiter: \",\"`"):
        read(folder, "lms_loan_daily", tmp_path, Reading(delimiter=";"))


def test_comma_decimals_in_parquet_text_columns(folder, tmp_path):
    pq.write_table(pa.table({"Amount": ["1234,5", "-0,25", None], "snapshot_date":
                             ["2023-01-01"] * 3}), folder / "features_financials.parquet")
    staged = read(folder, "features_financials", tmp_path, Reading(delimiter=";", decimal=","))
    assert column_of(staged, "Amount") == ["1234.5", "-0.25", None]


# -- missing-value markers (case05: NA for missing, as R writes it) --------------------------


def with_markers(rows, marker="NA"):
    return [[marker if v == "" else v for v in row] for row in rows]


MARKED = [["CUS_9", "NA", "NA", "NA", "NA", "NA", "2023-02-01"], *ROWS]


@EVERY_SOURCE
@pytest.mark.parametrize("fmt", [*CSV_FORMATS, "parquet"])
def test_na_reads_as_missing_in_every_column_and_format(folder, tmp_path, name, fmt):
    rows = with_markers(MARKED)
    if fmt == "parquet":
        pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)}),
                       folder / f"{name}.parquet")
    else:
        write_source(folder, name, fmt, csv_bytes(rows))
    first = staged_rows(read(folder, name, tmp_path))[0]
    assert [first[c] for c in COLUMNS] == ["CUS_9", None, None, None, None, None, "2023-02-01"]
    empty = read(folder, name, tmp_path / "empty", DEFAULT)
    assert column_of(empty, "Count")[2] is None and column_of(empty, "Mix")[3] is None


@pytest.mark.parametrize("marker", ["", "NA", "N/A", "n/a", "NULL", "null", "NaN", "nan", "#N/A"])
def test_the_default_markers(folder, tmp_path, marker):
    write_source(folder, "features_financials", "csv", csv_bytes(with_markers(ROWS, marker)))
    assert column_of(read(folder, "features_financials", tmp_path), "Count")[1] is None


def test_markers_are_configurable_and_quoted_markers_count_too(folder, tmp_path):
    data = csv_bytes(with_markers(ROWS, "-")).replace(b"Ann Lee", b'"NA"')
    write_source(folder, "features_financials", "csv", data)
    default = read(folder, "features_financials", tmp_path)
    assert column_of(default, "Count")[1] == "-" and column_of(default, "Name")[0] is None
    only_dash = read(folder, "features_financials", tmp_path, Reading(null_values=("", "-")))
    assert column_of(only_dash, "Count")[1] is None and column_of(only_dash, "Name")[0] == "NA"


# -- ISO 8601 timestamps where dates are expected (case09: Spark's CSV writer) ---------------


@pytest.mark.parametrize("text,expected", [
    ("2023-01-01", date(2023, 1, 1)),
    ("2023-1-5", date(2023, 1, 5)),
    ("2023-01-01 00:00:00", date(2023, 1, 1)),
    ("2023-01-01 12:30:05.120000000", date(2023, 1, 1)),
    ("2023-01-01T00:00:00.000Z", date(2023, 1, 1)),
    ("2023-01-01T00:00:00Z", date(2023, 1, 1)),
    ("2023-03-01T00:00:00+01:00", date(2023, 3, 1)),  # the date as written, not UTC's
    ("2023-03-01T23:59:59-0500", date(2023, 3, 1)),
    ("2023-03-01T00:00:00.000+05:30", date(2023, 3, 1)),
    ("2023-03-01T09:30", date(2023, 3, 1)),
    ("2023-03-01 00:00:00 UTC", date(2023, 3, 1)),
    (" 2023-03-01t00:00z ", date(2023, 3, 1)),
    ("1/31/2023", date(2023, 1, 31)),
    ("1/31/23", date(2023, 1, 31)),
    ("1/31/2023 0:00", date(2023, 1, 31)),
    ("1/31/2023 12:00:00 AM", date(2023, 1, 31)),
    ("2023-03-01T25:00", None),
    ("2023-02-30", None),
    ("2023-01-01Z", None),
    ("13/02/2023", None),
    ("31/1/2023", None),
    ("abc", None),
    ("", None),
    (None, None),
])
def test_parse_source_date(text, expected):
    with duckdb.connect() as con:
        con.execute(sql_text("macros"))
        assert con.execute("SELECT parse_source_date($t)", {"t": text}).fetchone()[0] == expected


ISO_ROWS = [[*r[:5], r[5] + "T00:00:00+01:00", r[6] + "T00:00:00.000Z"] for r in ROWS]


@EVERY_SOURCE
@pytest.mark.parametrize("fmt", [*CSV_FORMATS, "parquet"])
def test_iso_timestamps_in_any_date_column_give_the_months(folder, tmp_path, name, fmt):
    if fmt == "parquet":  # as Parquet strings
        pq.write_table(pa.table({c: [r[i] for r in ISO_ROWS] for i, c in enumerate(COLUMNS)}),
                       folder / f"{name}.parquet")
    else:
        write_source(folder, name, fmt, csv_bytes(ISO_ROWS))
    staged = read(folder, name, tmp_path)
    assert month_range(staged, sql_text("macros")) == (date(2023, 1, 1), date(2023, 2, 1))
    with duckdb.connect() as con:
        con.execute(sql_text("macros"))
        starts = con.execute("SELECT parse_source_date(loan_start_date) FROM read_parquet($p) "
                             "ORDER BY _row_number", {"p": str(staged.staged)}).fetchall()
    assert [s for (s,) in starts] == [date.fromisoformat(r[5]) for r in ROWS]


# -- headers (case13: a pandas index saved as a column) --------------------------------------


@EVERY_SOURCE
@pytest.mark.parametrize("fmt", CSV_FORMATS)
def test_a_pandas_index_column_is_named_with_its_likely_cause(folder, tmp_path, name, fmt):
    frame = pd.DataFrame(ROWS, columns=COLUMNS)
    write_source(folder, name, fmt, frame.to_csv().encode())
    with pytest.raises(SourceError) as error:
        read(folder, name, tmp_path)
    assert f"{name}.{fmt}: header: column 1 has no name; a file saved with pandas' index " \
           f"(to_csv without index=False)?" in str(error.value)


@pytest.mark.parametrize("header,message", [
    (["Customer_ID", "Age", "Age", "snapshot_date"], "columns 2, 3 are all named 'Age'"),
    (["Customer_ID", "", "Age", " "], "columns 2, 4 have no name; give every column"),
    (["", "Customer_ID", "Customer_ID", "snapshot_date"],
     "column 1 has no name; columns 2, 3 are all named 'Customer_ID'"),
])
def test_empty_and_repeated_names_are_named_by_position(folder, tmp_path, header, message):
    write_source(folder, "features_financials", "csv", csv_bytes([["a", "b", "c", "d"]], header))
    with pytest.raises(SourceError, match=message):
        read(folder, "features_financials", tmp_path)


def test_a_parquet_pandas_index_is_dropped_and_said_a_named_one_kept(folder, tmp_path):
    frame = pd.DataFrame(ROWS, columns=COLUMNS, index=[10, 11, 12, 13])
    frame.to_parquet(folder / "features_attributes.parquet")
    staged = read(folder, "features_attributes", tmp_path)
    assert staged.columns == tuple(COLUMNS)
    assert staged.notes == ("dropped column __index_level_0__: pandas' index, not data",)
    frame.set_index("Customer_ID").to_parquet(folder / "features_attributes.parquet")
    os.utime(folder / "features_attributes.parquet", ns=(1, 1))
    staged = read(folder, "features_attributes", tmp_path)
    assert "Customer_ID" in staged.columns and staged.notes == ()
    assert column_of(staged, "Customer_ID") == ["CUS_1", "CUS_2", "CUS_3", "CUS_4"]


def test_parquet_with_repeated_column_names_is_refused(folder, tmp_path):
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["x", "x"])
    pq.write_table(table, folder / "features_attributes.parquet")
    with pytest.raises(SourceError, match="columns 1, 2 are all named 'x'"):
        read(folder, "features_attributes", tmp_path)


# -- typed Parquet (case08: pandas' Parquet, timestamp[ns] dates) ----------------------------


def test_typed_parquet_columns_read_as_the_text_a_csv_holds(folder, tmp_path):
    midnight, later = datetime(2023, 7, 1), datetime(2023, 7, 1, 12, 30, 5, 120000)
    paris = timezone(timedelta(hours=2))
    table = pa.table({
        "date32": pa.array([date(2023, 7, 1), None], pa.date32()),
        "date64": pa.array([date(2023, 7, 1), None], pa.date64()),
        **{f"ts_{unit}": pa.array([midnight, later], pa.timestamp(unit))
           for unit in ("s", "ms", "us", "ns")},
        # stored as the UTC instant 2023-06-30 22:00; its zone says it is 2023-07-01 in Paris
        "ts_paris": pa.array([midnight.replace(tzinfo=paris), None],
                             pa.timestamp("ns", tz="Europe/Paris")),
        "ts_utc": pa.array([datetime(2023, 7, 1, tzinfo=UTC), None],
                           pa.timestamp("us", tz="UTC")),
        "decimal": pa.array([Decimal("52312.68"), None], pa.decimal128(10, 2)),
        "integer": pa.array([40, None], pa.int64()),
        "int_as_float": pa.array([40.0, float("nan")], pa.float64()),
        "float": pa.array([52312.68, 31.93238850264445], pa.float64()),
        "float32": pa.array([0.5, None], pa.float32()),
        "bool": pa.array([True, False]),
        "string": pa.array(["Good", "NA"]),
        "large_string": pa.array(["Good", ""], pa.large_string()),
        "category": pa.array(["Good", "Bad"]).dictionary_encode(),
        "nothing": pa.nulls(2),
        "snapshot_date": pa.array([date(2023, 7, 1)] * 2, pa.date32()),
    })
    pq.write_table(table, folder / "lms_loan_daily.parquet")
    first, second = staged_rows(read(folder, "lms_loan_daily", tmp_path))
    assert {k: v for k, v in first.items() if k != "_row_number"} == {
        "date32": "2023-07-01", "date64": "2023-07-01", "ts_s": "2023-07-01",
        "ts_ms": "2023-07-01", "ts_us": "2023-07-01", "ts_ns": "2023-07-01",
        "ts_paris": "2023-07-01", "ts_utc": "2023-07-01", "decimal": "52312.68",
        "integer": "40", "int_as_float": "40", "float": "52312.68", "float32": "0.5",
        "bool": "true", "string": "Good", "large_string": "Good", "category": "Good",
        "nothing": None, "snapshot_date": "2023-07-01"}
    assert second["ts_s"] == "2023-07-01 12:30:05"
    assert second["ts_ns"] == "2023-07-01 12:30:05.120000000"
    assert second["int_as_float"] is None and second["string"] is None
    assert second["large_string"] is None and second["float"] == "31.93238850264445"


@pytest.mark.parametrize("zone,expected", [("Europe/Paris", "2023-03-01"),
                                           ("America/New_York", "2023-03-01"),
                                           ("UTC", "2023-03-01")])
def test_a_zoned_timestamp_gives_the_date_in_its_own_zone(folder, tmp_path, zone, expected):
    stamps = pd.Series(pd.to_datetime(["2023-03-01"])).dt.tz_localize(zone)
    pd.DataFrame({"snapshot_date": stamps}).to_parquet(folder / "features_attributes.parquet")
    staged = read(folder, "features_attributes", tmp_path)
    assert column_of(staged, "snapshot_date") == [expected]


def frame_of(rows=ROWS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


@EVERY_SOURCE
def test_pandas_parquet_stages_like_the_csv_it_came_from(folder, tmp_path, name):
    """What pandas makes of a CSV (parse_dates, int64, float64 with NaN, categories), written
    to Parquet, reads as the same values the CSV does."""
    rows = [r[:2] + ["52312.68", r[3], *r[4:]] for r in ROWS]  # a clean float column
    csv_path = write_source(folder, name, "csv", csv_bytes(rows))
    frame = pd.read_csv(csv_path, parse_dates=["loan_start_date", "snapshot_date"])
    frame["Mix"] = frame["Mix"].astype("category")
    assert frame["Count"].dtype == "float64"  # 4, NaN, 40, 7
    from_csv = staged_rows(read(folder, name, tmp_path))
    csv_path.unlink()
    frame.to_parquet(folder / f"{name}.parquet")
    from_parquet = staged_rows(read(folder, name, tmp_path))
    assert from_parquet == from_csv


def test_a_nested_parquet_column_is_named(folder, tmp_path):
    pq.write_table(pa.table({"tags": [["a"], ["b"]], "snapshot_date": ["2023-01-01"] * 2}),
                   folder / "features_attributes.parquet")
    with pytest.raises(SourceError, match="features_attributes.parquet: column tags: it holds "
                                          "list<element: string> values"):
        read(folder, "features_attributes", tmp_path)


# -- where a broken file breaks --------------------------------------------------------------


def many_rows(count: int) -> list[list[str]]:
    return [[f"CUS_{i}", f"Name {i}", f"{i}.5", str(i % 9), "Good", "2023-01-15", "2023-01-01"]
            for i in range(1, count + 1)]


@pytest.fixture
def small_blocks(monkeypatch):
    """The streaming reader's blocks at 4 KB, so that a break lies many blocks in."""
    monkeypatch.setattr(sources, "_BLOCK_BYTES", 4096)


@pytest.mark.parametrize("fmt", ["csv", "zip_stored"])
def test_a_file_cut_mid_row_is_named_at_that_row_and_byte(folder, tmp_path, small_blocks, fmt):
    data = csv_bytes(many_rows(3000))
    row_start = data.index(b"CUS_2254,")
    cut = data[:row_start + 12]
    if fmt == "csv":
        write_source(folder, "features_financials", "csv", cut)
        expected = "features_financials.csv: the file ends in the middle of data row 2254 " \
                   f"(byte offset {row_start}): 2 of 7 fields ('CUS_2254,Nam'); it is cut short"
    else:  # a zip cut in its stored CSV: no central directory
        path = folder / "features_financials.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("features_financials.csv", data)
        whole = path.read_bytes()
        path.write_bytes(whole[:whole.index(b"CUS_2254,") + 12])
        expected = "features_financials.zip: the zip is cut short or damaged (its end, which " \
                   "lists its contents, is missing): the file ends in the middle of data row " \
                   f"2254 (byte offset {row_start} of the CSV inside the zip): 2 of 7 fields"
    with pytest.raises(SourceError) as error:
        read(folder, "features_financials", tmp_path)
    assert expected in str(error.value)


def test_a_deflated_zip_cut_short_names_the_last_whole_row(folder, tmp_path):
    data = csv_bytes(many_rows(20000))
    path = folder / "feature_clickstream.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("feature_clickstream.csv", data)
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    header = len("PK\x03\x04") + 26 + len("feature_clickstream.csv")
    readable = zlib.decompressobj(-15).decompress(whole[header:len(whole) // 2])
    whole_rows, whole_bytes = readable.count(b"\n") - 1, readable.rindex(b"\n") + 1
    with pytest.raises(SourceError, match=f"feature_clickstream.zip: the zip is cut short or "
                                          f"damaged .*: the data breaks after data "
                                          f"row {whole_rows} \\(byte offset {whole_bytes} of "
                                          f"the CSV inside"):
        read(folder, "feature_clickstream", tmp_path)


@pytest.mark.parametrize("fmt", CSV_FORMATS)
def test_a_row_with_too_many_fields_or_an_open_quote_is_named(folder, tmp_path, small_blocks,
                                                             fmt):
    data = csv_bytes(many_rows(2000))
    extra = data.replace(b"CUS_1500,", b"CUS_1500,surplus,")
    write_source(folder, "lms_loan_daily", fmt, extra)
    with pytest.raises(SourceError, match=f"lms_loan_daily.{fmt}: data row 1500 \\(byte offset "
                                          f"{data.index(b'CUS_1500,')}.*\\) has 8 fields, the "
                                          f"header has 7"):
        read(folder, "lms_loan_daily", tmp_path)
    quote = data.replace(b"Name 1800,", b'"Name 1800,')
    write_source(folder, "lms_loan_daily", fmt, quote)
    with pytest.raises(SourceError, match="data row 1800 .* opens a quoted value that never "
                                          "closes"):
        read(folder, "lms_loan_daily", tmp_path / "again")


def test_a_damaged_zip_is_named_after_its_last_whole_row(folder, tmp_path):
    path = folder / "features_attributes.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("features_attributes.csv", csv_bytes(many_rows(20000)))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"features_attributes.zip: the zip is damaged \(its "
                                          r"CSV fails the zip's CRC check\); (the data breaks "
                                          r"after data row \d+|data row \d+ )"):
        read(folder, "features_attributes", tmp_path)


def test_a_parquet_file_is_named_by_its_damaged_row_group_or_missing_footer(folder, tmp_path):
    path = folder / "feature_clickstream.parquet"
    table = pa.table({"x": [f"value {i}" for i in range(3000)], "snapshot_date": ["2023-01-01"]
                      * 3000})
    pq.write_table(table, path, row_group_size=1000, compression="zstd")
    chunk = pq.read_metadata(path).row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset + 20
    data[start:start + 200] = bytes(200)
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"feature_clickstream.parquet: row group 2 of 3 \(data "
                                          r"rows 1001..2000\): unreadable"):
        read(folder, "feature_clickstream", tmp_path)
    path.write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(SourceError, match="not readable as Parquet .* its footer"):
        read(folder, "feature_clickstream", tmp_path / "again")


# -- when a file is staged again (case10: a corrected file, same size and mtime) -------------


def correct_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Replace `old` by `new` (same length) keeping the file's modification time, as `cp -p`
    or `rsync -a` of a corrected file do."""
    assert len(old) == len(new)
    before = path.stat()
    path.write_bytes(path.read_bytes().replace(old, new, 1))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size


@pytest.mark.parametrize("fmt", [*CSV_FORMATS, "parquet"])
def test_a_corrected_file_with_the_same_size_and_mtime_is_staged_again(folder, tmp_path, fmt):
    if fmt == "parquet":
        path = folder / "features_financials.parquet"
        pq.write_table(pa.table({"Amount": ["52312.68"], "snapshot_date": ["2023-01-01"]}), path,
                       compression="none")
    else:
        path = write_source(folder, "features_financials", fmt,
                            csv_bytes([["C1", "N", "52312.68", "1", "Good", "2023-01-01",
                                        "2023-01-01"]]))
        if fmt == "zip":  # a re-issued archive: same size, different bytes
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
                archive.writestr("features_financials.csv", csv_bytes(
                    [["C1", "N", "52312.68", "1", "Good", "2023-01-01", "2023-01-01"]]))
    first = read(folder, "features_financials", tmp_path)
    version = fingerprint(path)
    if fmt == "zip":  # the CRC in the zip changes too: rewrite the archive, same size
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("features_financials.csv", csv_bytes(
                [["C1", "N", "62312.68", "1", "Good", "2023-01-01", "2023-01-01"]]))
        os.utime(path, ns=(first.file.stat().st_atime_ns, 1_700_000_000 * 10**9))
    else:
        correct_in_place(path, b"52312.68", b"62312.68")
    assert fingerprint(path) != version
    second = read(folder, "features_financials", tmp_path)
    assert second.digest != first.digest and second.staged != first.staged
    assert column_of(second, "Amount") == ["62312.68"]


def test_a_touched_file_is_not_parsed_again_and_new_settings_are(folder, tmp_path, monkeypatch):
    path = write_source(folder, "features_attributes", "csv", csv_bytes(ROWS))
    first = read(folder, "features_attributes", tmp_path)
    os.utime(path, ns=(1, 10**18))
    parsed = []
    real = sources._write_staged
    monkeypatch.setattr(sources, "_write_staged", lambda *a: parsed.append(a) or real(*a))
    assert read(folder, "features_attributes", tmp_path).staged == first.staged
    assert parsed == []  # same bytes: hashed, not parsed
    other = read(folder, "features_attributes", tmp_path, Reading(null_values=("",)))
    assert other.staged != first.staged and len(parsed) == 1


def test_a_staged_copy_is_found_by_its_stat_signature_without_hashing(folder, tmp_path,
                                                                      monkeypatch):
    path = write_source(folder, "features_attributes", "csv", csv_bytes(ROWS))
    old = path.stat()
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns - 10 * 10**9))
    # a signature is trusted once the file is older than a clock tick or two
    monkeypatch.setattr(sources, "_RACY_SECONDS", 0)
    first = read(folder, "features_attributes", tmp_path)
    monkeypatch.setattr(sources, "content_digest", lambda p: pytest.fail("hashed again"))
    assert read(folder, "features_attributes", tmp_path).staged == first.staged


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("settings,message", [
    ({"encoding": "klingon"}, "not an encoding Python knows"),
    ({"encoding": "utf-16"}, "does not write plain ASCII characters as single bytes"),
    ({"delimiter": ";;"}, "delimiter must be one character"),
    ({"delimiter": '"'}, "delimiter must be one character"),
    ({"decimal": ";"}, "decimal must be '.' or ','"),
    ({"decimal": ","}, "decimal ',' is also the delimiter"),
    ({"null_values": ["NA", None]}, "null_values must be a list of quoted strings"),
    ({"null_values": "NA"}, "null_values must be a list of quoted strings"),
])
def test_bad_reading_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Reading(**settings)


def test_encoding_names_are_normalised():
    assert Reading(encoding="UTF-8-SIG").encoding == "utf-8"
    assert Reading(encoding="windows-1252").encoding == "cp1252"
    assert Reading(encoding="Latin-1").key == Reading(encoding="iso8859-1").key


@pytest.mark.parametrize("fmt", CSV_FORMATS)
def test_detect_reading(folder, tmp_path, fmt):
    path = write_source(folder, "features_financials", fmt,
                        csv_bytes(european(accented()), delimiter=";", encoding="cp1252"))
    assert detect_reading(path) == Reading(encoding="cp1252", delimiter=";", decimal=",")
    path.unlink()
    path = write_source(folder, "features_financials", fmt, csv_bytes(accented()))
    assert detect_reading(path) == DEFAULT
    path.unlink()
    path = write_source(folder, "features_financials", fmt,
                        csv_bytes(ROWS, delimiter="\t").replace(b"Bo Chan", b"Bo \x81Chan"))
    assert detect_reading(path) == Reading(encoding="latin-1", delimiter="\t")
