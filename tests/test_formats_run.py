"""Source files in the shapes real users send them, each through a real `vintage run`: the run
either reads the file and gives the same silver and gold tables as the demo CSVs (compared with
DuckDB, EXCEPT ALL both ways), or stops with a message naming the file, the data row, the
column and the setting that reads it.

Every change is made here from the demo data with the project's own code (pandas, csv)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import zipfile
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml

from ml_assets.demo.generator import generate
from tests.conftest import run_vintage

pytestmark = pytest.mark.slow

MONTHS = ["--from", "2023-01", "--to", "2023-07"]
SELECT = ["--select", "group:raw or group:silver or key:gold/label_store or key:gold/feature_store"]
SILVER_AND_GOLD = ["silver/loan_daily", "silver/clickstream", "silver/attributes",
                   "silver/financials", "silver/loan_daily_quarantine",
                   "silver/clickstream_quarantine", "silver/attributes_quarantine",
                   "silver/financials_quarantine", "gold/label_store", "gold/feature_store"]
LINEAGE = ("_source_file", "_ingested_at")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    generate(root / "demo", scale=0.05, seed=5)
    return root


def run(base: Path, source: Path, warehouse: Path, contracts: Path | None = None):
    env = {"DAGSTER_HOME": str(base / "home")}
    if contracts:
        env["VINTAGE_CONTRACTS"] = str(contracts)
    return run_vintage("run", "--source", str(source), "--warehouse", str(warehouse), *MONTHS,
                       *SELECT, env=env)


@pytest.fixture(scope="module")
def reference(base) -> Path:
    """The warehouse the demo CSVs give."""
    done = run(base, base / "demo", base / "reference")
    assert done.returncode == 0, done.stderr
    return base / "reference"


def case_folder(base: Path, name: str) -> Path:
    folder = base / "cases" / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(base / "demo", folder)
    return folder


def contracts_with(tmp_path: Path, source: str, **settings) -> Path:
    """The shipped contracts with reading settings for one source."""
    contract = yaml.safe_load(Path("config/contracts.yaml").read_text())
    contract["sources"][source].update(settings)
    path = tmp_path / "contracts.yaml"
    path.write_text(yaml.safe_dump(contract))
    return path


def differences(a: Path, b: Path, tables=SILVER_AND_GOLD) -> dict[str, tuple[int, int]]:
    """Per table (`layer/name`), the rows only in warehouse `a` and only in `b` (lineage
    columns aside); empty when every table is the same multiset of rows."""
    found = {}
    with duckdb.connect() as con:
        for table in tables:
            files = [sorted((w / table).glob("month=*/*.parquet")) for w in (a, b)]
            if not any(files):
                continue
            assert all(files), (table, files)
            rows = [f"SELECT COLUMNS(lambda c: c NOT IN {LINEAGE}) FROM read_parquet("
                    f"{[str(p) for p in paths]})" for paths in files]
            only_a = con.execute(f"SELECT count(*) FROM ({rows[0]} EXCEPT ALL {rows[1]})")
            only_a = only_a.fetchone()[0]
            only_b = con.execute(f"SELECT count(*) FROM ({rows[1]} EXCEPT ALL {rows[0]})")
            only_b = only_b.fetchone()[0]
            if only_a or only_b:
                found[table] = (only_a, only_b)
    return found


def query(warehouse: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse / "catalog.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


# -- the changes, as users' tools make them --------------------------------------------------


def rewrite(path: Path, change, encoding="utf-8", delimiter=",") -> None:
    """Rewrite a CSV row by row: `change(header, rows)` returns the new rows."""
    with path.open(newline="", encoding="utf-8") as stream:
        header, *rows = list(csv.reader(stream))
    with path.open("w", newline="", encoding=encoding) as stream:
        csv.writer(stream, delimiter=delimiter).writerows([header, *change(header, rows)])


def missing_as(marker: str):
    return lambda header, rows: [[marker if v == "" else v for v in row] for row in rows]


def set_first(column: str, value: str, month: str = "2023-03"):
    def change(header, rows):
        row = next(r for r in rows if r[header.index("snapshot_date")].startswith(month))
        row[header.index(column)] = value
        return rows
    return change


NUMBER = re.compile(r"-?\d+\.\d+")


def comma_decimals(header, rows):
    return [[v.replace(".", ",") if NUMBER.fullmatch(v) else v for v in row] for row in rows]


def iso_timestamps(column: str, suffix: str):
    def change(header, rows):
        at = header.index(column)
        for row in rows:
            row[at] += suffix
        return rows
    return change


def zipped(path: Path) -> Path:
    target = path.with_suffix(".zip")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, path.name)
    path.unlink()
    return target


def pandas_parquet(path: Path, dates: list[str], how: str = "timestamp", index=False) -> None:
    """A source CSV as pandas writes it after read_csv(parse_dates=...): dates as timestamp[ns]
    ("timestamp"), Python dates (Arrow date32, "date") or zoned timestamps ("Europe/Paris");
    with `index`, pandas' own unnamed index as well. (pandas' default float parser is off by
    one unit in the last place on some 17-digit values; round_trip reads what the CSV says.)"""
    frame = pd.read_csv(path, parse_dates=dates, float_precision="round_trip")
    for column in dates:
        if how == "date":
            frame[column] = frame[column].dt.date
        elif how != "timestamp":
            frame[column] = frame[column].dt.tz_localize(how)
    if index:
        frame.index = frame.index + 1000
    frame.to_parquet(path.with_suffix(".parquet"), index=index)
    path.unlink()


# -- the cases -------------------------------------------------------------------------------


def test_pandas_parquet_sources_give_the_tables_of_the_csvs(base, reference, tmp_path):
    """case08 and its kind: every source as pandas' Parquet, dates typed four ways (timestamp
    [ns], date32, zoned timestamps, with pandas' index), integers with NaN as float64."""
    folder = case_folder(base, "pandas_parquet")
    pandas_parquet(folder / "lms_loan_daily.csv", ["loan_start_date", "snapshot_date"])
    pandas_parquet(folder / "feature_clickstream.csv", ["snapshot_date"], "Europe/Paris")
    pandas_parquet(folder / "features_attributes.csv", ["snapshot_date"], "date", index=True)
    pandas_parquet(folder / "features_financials.csv", ["snapshot_date"])
    assert pd.read_parquet(folder / "features_financials.parquet")[
        "Num_Credit_Inquiries"].dtype == "float64"
    done = run(base, folder, tmp_path / "wh")
    assert done.returncode == 0, done.stderr
    assert differences(reference, tmp_path / "wh") == {}
    assert query(tmp_path / "wh", "SELECT count(*) FROM silver.loan_daily")[0][0] > 0


def test_na_for_missing_reads_as_missing(base, reference, tmp_path):
    """case05 and its kind: NA in every empty field (numbers, integers, categories, text, in
    a CSV and in a zip): the tables of the file with empty cells, raw included."""
    folder = case_folder(base, "na")
    rewrite(folder / "features_financials.csv", missing_as("NA"))
    rewrite(folder / "features_attributes.csv", missing_as("NA"))
    zipped(folder / "features_attributes.csv")
    assert ",NA," in (folder / "features_financials.csv").read_text()
    done = run(base, folder, tmp_path / "wh")
    assert done.returncode == 0, done.stderr
    assert differences(reference, tmp_path / "wh", [
        *SILVER_AND_GOLD, "raw/features_financials", "raw/features_attributes"]) == {}


def test_a_cp1252_file_is_named_then_read_with_its_encoding(base, reference, tmp_path):
    """case03: an Excel-on-Windows file with one accented name in a 2023-03 row."""
    folder = case_folder(base, "cp1252")
    rewrite(folder / "features_attributes.csv", set_first("Name", "Renée Müller"),
            encoding="cp1252")
    refused = run(base, folder, tmp_path / "refused")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert re.search(r"features_attributes.csv: data row \d+ \(snapshot_date 2023-03-01\), "
                     r"column Name: byte b'\\xe9' at byte offset \d+ is not utf-8; read as "
                     r"cp1252 the value is 'Renée Müller'", refused.stderr), refused.stderr
    assert "set `encoding: cp1252` for features_attributes" in refused.stderr
    done = run(base, folder, tmp_path / "wh",
               contracts_with(tmp_path, "features_attributes", encoding="cp1252"))
    assert done.returncode == 0, done.stderr
    assert query(tmp_path / "wh", "SELECT _snapshot_month::VARCHAR FROM raw.features_attributes "
                                  "WHERE Name = 'Renée Müller'") == [("2023-03-01",)]
    assert differences(reference, tmp_path / "wh") == {}


def test_a_european_excel_file_is_named_then_read_with_its_delimiter_and_decimal(
        base, reference, tmp_path):
    """case04: `;` between fields and `,` as the decimal mark."""
    folder = case_folder(base, "european")
    rewrite(folder / "features_financials.csv", comma_decimals, delimiter=";")
    refused = run(base, folder, tmp_path / "refused")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "features_financials.csv: the header reads as one column with delimiter ',' but as " \
           "22 with ';': the file is ';'-delimited and writes numbers with ',' decimals " \
           "(1234,5); set `delimiter: \";\", decimal: \",\"` for features_financials" \
           in refused.stderr
    done = run(base, folder, tmp_path / "wh",
               contracts_with(tmp_path, "features_financials", delimiter=";", decimal=","))
    assert done.returncode == 0, done.stderr
    assert differences(reference, tmp_path / "wh") == {}


def test_iso_timestamps_in_date_columns_give_the_same_tables(base, reference, tmp_path):
    """case09 and its kind: Spark's `2023-01-01T00:00:00.000Z`, an offset, a plain timestamp,
    in snapshot_date and loan_start_date."""
    folder = case_folder(base, "iso")
    rewrite(folder / "features_attributes.csv",
            iso_timestamps("snapshot_date", "T00:00:00.000Z"))
    rewrite(folder / "lms_loan_daily.csv", iso_timestamps("loan_start_date", "T00:00:00+01:00"))
    rewrite(folder / "features_financials.csv", iso_timestamps("snapshot_date", " 00:00:00"))
    done = run(base, folder, tmp_path / "wh")
    assert done.returncode == 0, done.stderr
    assert differences(reference, tmp_path / "wh") == {}


def test_a_corrected_file_with_the_same_size_and_mtime_is_read_again(base, tmp_path):
    """case10: one digit of a 2023-03 Annual_Income corrected; the copy keeps the old size and
    modification time (cp -p, rsync -a, unzip)."""
    folder = case_folder(base, "corrected")
    path = folder / "features_financials.csv"
    first = run(base, folder, tmp_path / "wh")
    assert first.returncode == 0, first.stderr
    lines = path.read_text().split("\n")
    at = next(i for i, line in enumerate(lines) if line.endswith(",2023-03-01")
              and line.split(",")[1][:1] in "12345678" and "_" not in line.split(",")[1])
    fields = lines[at].split(",")
    customer, old = fields[0], fields[1]
    fields[1] = str(int(old[0]) + 1) + old[1:]
    lines[at] = ",".join(fields)
    before = path.stat()
    path.write_text("\n".join(lines))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = run(base, folder, tmp_path / "wh")
    assert again.returncode == 0, again.stderr
    assert query(tmp_path / "wh", f"SELECT annual_income FROM silver.financials WHERE "
                                  f"customer_id = '{customer}'") == [(float(fields[1]),)]


def test_a_pandas_index_column_is_named_with_its_cause(base, tmp_path):
    """case13: features_attributes.csv re-saved by pandas with its index."""
    folder = case_folder(base, "pandas_index")
    path = folder / "features_attributes.csv"
    pd.read_csv(path, dtype=str, keep_default_na=False).to_csv(path)
    done = run(base, folder, tmp_path / "wh")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "features_attributes.csv: header: column 1 has no name; a file saved with pandas' " \
           "index (to_csv without index=False)?" in done.stderr
