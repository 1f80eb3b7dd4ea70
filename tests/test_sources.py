"""Reading a source folder: .csv, .parquet or a .zip of a CSV, staged once per file version."""

from __future__ import annotations

import os
import zipfile
from datetime import date, datetime

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets.settings import CONFIG_DIR
from resources.lake import sql_text
from resources.sources import SourceError, Sources, locate, month_range, stage

CSV = (
    "Customer_ID,Age,Type_of_Loan,snapshot_date\n"
    'CUS_1,23,"Auto Loan, and Student Loan",2023-01-01\n'
    "CUS_2,28_,,1/1/2023\n"
    "CUS_3,-500,Payday Loan,2/1/2023\n"
)


def staged_rows(staged):
    return duckdb.connect().execute(
        "SELECT * FROM read_parquet($p) ORDER BY _row_number", {"p": str(staged.staged)}
    ).fetchall()


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "src"
    path.mkdir()
    return path


def test_csv_is_staged_verbatim_as_text_with_row_numbers(folder, tmp_path):
    (folder / "features_attributes.csv").write_text(CSV)
    staged = stage(locate(folder, "features_attributes"), "features_attributes", tmp_path / "st")
    assert staged.columns == ("Customer_ID", "Age", "Type_of_Loan", "snapshot_date")
    assert staged.rows == 3
    assert staged_rows(staged) == [
        ("CUS_1", "23", "Auto Loan, and Student Loan", "2023-01-01", 1),
        ("CUS_2", "28_", None, "1/1/2023", 2),
        ("CUS_3", "-500", "Payday Loan", "2/1/2023", 3),
    ]
    assert month_range(staged, sql_text("macros")) == (date(2023, 1, 1), date(2023, 2, 1))


def test_zip_holding_a_csv(folder, tmp_path):
    with zipfile.ZipFile(folder / "features_attributes.zip", "w") as archive:
        archive.writestr("features_attributes.csv", CSV)
    staged = stage(locate(folder, "features_attributes"), "features_attributes", tmp_path / "st")
    assert [row[0] for row in staged_rows(staged)] == ["CUS_1", "CUS_2", "CUS_3"]


def test_parquet_with_typed_columns_is_read_as_text(folder, tmp_path):
    table = pa.table({"Customer_ID": ["CUS_1"], "Age": [23], "Annual_Income": [52312.68],
                      "snapshot_date": pa.array([datetime(2023, 1, 1)], pa.timestamp("ns"))})
    pq.write_table(table, folder / "features_attributes.parquet")
    staged = stage(locate(folder, "features_attributes"), "features_attributes", tmp_path / "st")
    assert staged_rows(staged) == [("CUS_1", "23", "52312.68", "2023-01-01", 1)]
    assert month_range(staged, sql_text("macros")) == (date(2023, 1, 1), date(2023, 1, 1))


def test_a_changed_file_is_staged_again(folder, tmp_path):
    path = folder / "features_attributes.csv"
    path.write_text(CSV)
    first = stage(path, "features_attributes", tmp_path / "st")
    assert stage(path, "features_attributes", tmp_path / "st").staged == first.staged
    path.write_text(CSV + "CUS_4,40,,2023-03-01\n")
    os.utime(path, ns=(1, 10**18))
    second = stage(path, "features_attributes", tmp_path / "st")
    assert second.staged != first.staged and second.rows == 4


def test_the_source_files_settings_in_the_contracts_reach_the_reader(folder, tmp_path,
                                                                      monkeypatch):
    import yaml

    from ml_assets.contracts import contracts

    contract = yaml.safe_load((CONFIG_DIR / "contracts.yaml").read_text())
    contract["sources"]["features_attributes"].update(delimiter=";", null_values=["-"])
    (tmp_path / "contracts.yaml").write_text(yaml.safe_dump(contract))
    monkeypatch.setenv("VINTAGE_CONTRACTS", str(tmp_path / "contracts.yaml"))
    contracts.cache_clear()
    try:
        (folder / "features_attributes.csv").write_text(
            "Customer_ID;Age;snapshot_date\nCUS_1;-;2023-01-01\nCUS_2;NA;2023-01-01\n")
        staged = Sources(folder=str(folder), staging_dir=str(tmp_path / "st")).stage(
            "features_attributes")
    finally:
        contracts.cache_clear()
    assert staged.reading.delimiter == ";"
    assert [row[1] for row in staged_rows(staged)] == [None, "NA"]


def test_missing_and_ambiguous_files(folder):
    with pytest.raises(SourceError, match="no lms_loan_daily.csv, lms_loan_daily.parquet"):
        locate(folder, "lms_loan_daily")
    (folder / "lms_loan_daily.csv").write_text(CSV)
    (folder / "lms_loan_daily.zip").write_bytes(b"")
    with pytest.raises(SourceError, match="several files for lms_loan_daily"):
        locate(folder, "lms_loan_daily")


def test_a_link_out_of_the_folder_is_refused(folder, tmp_path):
    outside = tmp_path / "elsewhere.csv"
    outside.write_text(CSV)
    (folder / "lms_loan_daily.csv").symlink_to(outside)
    with pytest.raises(SourceError, match="must be a regular file inside"):
        locate(folder, "lms_loan_daily")


@pytest.mark.parametrize("name,content,message", [
    ("features_attributes.csv", b"", "the file is empty"),
    ("features_attributes.csv", b"Customer_ID,Age,snapshot_date\nCUS_1,23\nCUS_2,1,2,3\n",
     r"data row 1 \(byte offset 30\) has 2 fields, the header has 3: 'CUS_1,23'"),
    ("features_attributes.csv", b"Customer_ID,Age,snapshot_date\nCUS_1,23,2023-01-01\nCUS_2,1",
     r"the file ends in the middle of data row 2 \(byte offset 50\): 2 of 3 fields"),
    ("features_attributes.zip", b"PK\x03\x04 not really a zip", "not readable as a zip"),
    ("features_attributes.parquet", b"PAR1 truncated", "not readable as Parquet"),
])
def test_unreadable_files_name_the_file(folder, tmp_path, name, content, message):
    (folder / name).write_bytes(content)
    with pytest.raises(SourceError, match=message) as error:
        stage(locate(folder, "features_attributes"), "features_attributes", tmp_path / "st")
    assert name in str(error.value)
    assert not list((tmp_path / "st").glob("*.parquet"))


def test_a_header_without_rows_is_named(folder, tmp_path):
    (folder / "lms_loan_daily.csv").write_text("loan_id,snapshot_date\n")
    staged = stage(locate(folder, "lms_loan_daily"), "lms_loan_daily", tmp_path / "st")
    with pytest.raises(SourceError, match="lms_loan_daily.csv: the file has a header but no "
                                          "data rows"):
        month_range(staged, sql_text("macros"))
