"""Data contracts: how a month departs from one, and drafting one from files."""

from __future__ import annotations

import shutil
from datetime import date

import duckdb
import pyarrow as pa
import pytest
import yaml

from ml_assets.contracts import (
    ColumnContract,
    SourceContract,
    check_folder,
    empty_month_findings,
    evaluate,
    infer_contract,
    load_contracts,
)
from ml_assets.demo.generator import generate
from resources.lake import sql_text
from resources.sources import SOURCE_NAMES

JAN, FEB = date(2024, 1, 1), date(2024, 2, 1)


def column(name, kind, **bounds):
    defaults = {"max_null_share": 0.0, "max_unparseable_share": 0.01, "max_violation_share": 0.1}
    return ColumnContract(name, kind, **{**defaults, **bounds})


CONTRACT = SourceContract("features_financials", (
    column("Customer_ID", "text"),
    column("Annual_Income", "number", min=0, max_null_share=0.5),
    column("Age", "integer", min=18, max=100, max_null_share=0.5),
    column("Credit_Mix", "category", values=("Good", "Bad", "_")),
    column("snapshot_date", "date"),
), ("Customer_ID", "snapshot_date"), "outside_range")


def findings_for(rows: list[dict], contract=CONTRACT, months=(JAN,)):
    columns = list(rows[0])
    table = pa.Table.from_pylist(
        [{**r, "_row_number": i + 1, "_snapshot_month": JAN} for i, r in enumerate(rows)])
    with duckdb.connect() as con:
        con.execute(sql_text("macros"))
        con.register("raw_month", table)
        return evaluate(con, "raw_month", contract, columns, list(months))[JAN]


def row(**values):
    base = {"Customer_ID": "C1", "Annual_Income": "52312.68_", "Age": "28_",
            "Credit_Mix": "_", "snapshot_date": "2024-01-01"}
    return {**base, **values}


def test_known_dirt_is_no_departure():
    rows = [row(), row(Annual_Income="__10000__"), row(Age="-500"), row(Annual_Income=None)]
    assert [f.kind for f in findings_for(rows * 10)] == ["values"]  # ages out of range: a WARN
    assert findings_for([row()] * 10) == []


def test_renamed_column_is_missing_plus_new_naming_both():
    rows = [{("AnnualIncome" if k == "Annual_Income" else k): v for k, v in row().items()}] * 5
    found = {f.kind: f for f in findings_for(rows)}
    assert found["missing"].message == "column Annual_Income missing; new column AnnualIncome"
    assert found["missing"].blocking and found["missing"].severity == "ERROR"
    assert found["new"].severity == "WARN" and not found["new"].blocking
    assert found["missing"].describe("features_financials.csv") == (
        "features_financials.csv 2024-01: column Annual_Income missing; new column AnnualIncome")


def test_text_in_a_numeric_column_above_the_share_is_a_retyped_column():
    rows = [row()] * 95 + [row(Annual_Income="twelve thousand")] * 5
    [retyped] = [f for f in findings_for(rows) if f.kind == "retyped"]
    assert retyped.column == "Annual_Income" and retyped.blocking
    assert "5.0% of 100 values are not number (first at data row 96: 'twelve thousand')" \
        in retyped.message
    below = [row()] * 999 + [row(Annual_Income="twelve thousand")]
    assert not [f for f in findings_for(below) if f.kind == "retyped"]


def test_nulls_above_the_bound_and_values_outside_the_allowed():
    rows = [row(Customer_ID=None)] + [row(Credit_Mix="Excellent")] * 3 + [row()] * 6
    kinds = {f.kind: f for f in findings_for(rows)}
    assert kinds["nulls"].column == "Customer_ID" and kinds["nulls"].severity == "ERROR"
    assert kinds["values"].column == "Credit_Mix" and kinds["values"].severity == "WARN"


def test_dates_that_read_two_ways_are_not_dates():
    rows = [row(snapshot_date="13/01/2024")] * 5
    [retyped] = [f for f in findings_for(rows) if f.kind == "retyped"]
    assert retyped.column == "snapshot_date" and "not date" in retyped.message


def test_empty_months_inside_the_file_range_are_errors():
    found = empty_month_findings(CONTRACT, {JAN: 0, FEB: 10, date(2025, 1, 1): 0},
                                 (JAN, FEB))
    assert [(f.month, f.blocking) for f in found] == [(JAN, True)]
    allowed = SourceContract(CONTRACT.name, CONTRACT.columns, CONTRACT.key, "allowed")
    assert empty_month_findings(allowed, {JAN: 0}, (JAN, FEB)) == []


def test_the_shipped_contract_reads_and_the_demo_data_matches_it(tmp_path):
    generate(tmp_path / "demo", scale=0.5, seed=3)
    contracts = load_contracts()
    assert set(contracts) == set(SOURCE_NAMES)
    results = check_folder(tmp_path / "demo", contracts, tmp_path / "staging")
    assert {source: [f.describe() for f in found if f.severity == "ERROR"]
            for source, found in results.items()} == {s: [] for s in SOURCE_NAMES}


def test_an_inferred_draft_loads_and_the_data_it_came_from_passes_it(tmp_path):
    generate(tmp_path / "demo", scale=0.5, seed=3)
    draft = infer_contract(tmp_path / "demo", SOURCE_NAMES, tmp_path / "staging")
    path = tmp_path / "draft.yaml"
    path.write_text(draft)
    parsed = yaml.safe_load(draft)
    assert parsed["sources"]["features_financials"]["columns"]["Annual_Income"]["type"] == \
        "number"
    assert parsed["sources"]["features_attributes"]["columns"]["Age"]["type"] == "integer"
    assert parsed["sources"]["lms_loan_daily"]["columns"]["snapshot_date"]["type"] == "date"
    assert set(parsed["sources"]["features_financials"]["columns"]["Payment_of_Min_Amount"]
               ["values"]) == {"Yes", "No", "NM"}
    results = check_folder(tmp_path / "demo", load_contracts(path), tmp_path / "staging")
    assert all(f.severity != "ERROR" for found in results.values() for f in found)


def test_check_reports_drift_in_a_changed_folder(tmp_path):
    generate(tmp_path / "demo", scale=0.5, seed=3)
    changed = tmp_path / "changed"
    shutil.copytree(tmp_path / "demo", changed)
    path = changed / "features_financials.csv"
    path.write_text(path.read_text().replace("Annual_Income", "AnnualIncome", 1))
    results = check_folder(changed, load_contracts(), tmp_path / "staging")
    messages = [f.describe() for f in results["features_financials"]]
    assert any("column Annual_Income missing; new column AnnualIncome" in m for m in messages)
    assert all(f.severity != "ERROR" for name, found in results.items()
               if name != "features_financials" for f in found)


@pytest.mark.parametrize("bad", ["type: money", "empty_months: sometimes"])
def test_a_malformed_contract_is_refused(tmp_path, bad):
    from ml_assets.settings import SettingsError

    key, value = bad.split(": ")
    source = {"columns": {"x": {"type": value}}} if key == "type" else \
        {"empty_months": value, "columns": {"x": {"type": "text"}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": {"lms_loan_daily": source}}))
    with pytest.raises(SettingsError):
        load_contracts(path)


# -- reading settings ------------------------------------------------------------------------


def contract_file(tmp_path, defaults=None, **source_settings):
    source = {"columns": {"x": {"type": "text"}}, **source_settings}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"defaults": defaults or {},
                                    "sources": {"features_financials": source,
                                                "lms_loan_daily": {"columns": {}}}}))
    return path


def test_reading_settings_come_from_the_defaults_and_the_source():
    from resources.sources import Reading

    shipped = load_contracts()
    assert {c.reading for c in shipped.values()} == {Reading()}
    assert "NA" in Reading().null_values and "" in Reading().null_values


def test_a_source_overrides_the_default_reading_settings(tmp_path):
    path = contract_file(tmp_path, {"delimiter": ";", "null_values": ["", "-"]},
                         encoding="cp1252", decimal=",")
    loaded = load_contracts(path)
    financials, lms = loaded["features_financials"].reading, loaded["lms_loan_daily"].reading
    assert (financials.encoding, financials.delimiter, financials.decimal,
            financials.null_values) == ("cp1252", ";", ",", ("", "-"))
    assert (lms.encoding, lms.delimiter, lms.decimal) == ("utf-8", ";", ".")


@pytest.mark.parametrize("settings,message", [
    ({"encoding": "klingon"}, "features_financials: encoding 'klingon' is not an encoding"),
    ({"encoding": "utf-16"}, "is not supported"),
    ({"delimiter": ";;"}, "delimiter must be one character"),
    ({"decimal": ","}, "decimal ',' is also the delimiter"),
    ({"null_values": ["NA", None]}, "null_values must be a list of quoted strings"),
    ({"delimeter": ";"}, "unknown setting 'delimeter'; did you mean 'delimiter'?"),
    ({"null_value": ["NA"]}, "did you mean 'null_values'?"),
])
def test_bad_reading_settings_are_refused_naming_file_source_and_setting(tmp_path, settings,
                                                                         message):
    from ml_assets.settings import SettingsError

    with pytest.raises(SettingsError, match=message) as error:
        load_contracts(contract_file(tmp_path, **settings))
    assert str(tmp_path / "c.yaml") in str(error.value)


def test_a_bare_yaml_null_among_the_markers_is_refused(tmp_path):
    from ml_assets.settings import SettingsError

    path = tmp_path / "c.yaml"
    path.write_text("defaults:\n  null_values: [NA, null]\nsources: {}\n")
    with pytest.raises(SettingsError, match="defaults: null_values must be a list of quoted"):
        load_contracts(path)


def test_an_allowed_category_value_that_is_a_missing_marker_is_refused(tmp_path):
    from ml_assets.settings import SettingsError

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": {"features_financials": {"columns": {
        "Credit_Mix": {"type": "category", "values": ["Good", "NA"]}}}}}))
    with pytest.raises(SettingsError, match=r"Credit_Mix: allowed values \['NA'\] are also "
                                            r"missing-value markers"):
        load_contracts(path)


def test_an_unconfigured_marker_in_a_numeric_column_is_named_as_one():
    rows = [row()] * 90 + [row(Annual_Income="None")] * 10
    [retyped] = [f for f in findings_for(rows) if f.kind == "retyped"]
    assert "'None' looks like a missing-value marker: add it to null_values" in retyped.message


def test_a_pandas_index_column_is_named_as_one():
    rows = [{"Unnamed: 0": str(i), **row()} for i in range(5)]
    [new] = [f for f in findings_for(rows) if f.kind == "new"]
    assert new.message == ("new column Unnamed: 0, not in the contract; a pandas index saved as "
                           "data (to_csv without index=False, then read back)?")


def europeanise(path, encoding="cp1252"):
    """A CSV as Excel saves it in a European locale on Windows: `;` between fields, `,` as the
    decimal mark, cp1252; one text value accented."""
    import csv
    import re

    number = re.compile(r"-?\d+\.\d+")
    rows = list(csv.reader(path.open(newline="", encoding="utf-8")))
    rows = [rows[0]] + [[v.replace(".", ",") if number.fullmatch(v) else v for v in r]
                        for r in rows[1:]]
    text = rows[0].index("Type_of_Loan")
    rows[1][text] = "Prêt à la consommation"
    with path.open("w", newline="", encoding=encoding) as out:
        csv.writer(out, delimiter=";").writerows(rows)


def test_an_inferred_draft_proposes_the_reading_settings_it_detects(tmp_path):
    generate(tmp_path / "demo", scale=0.5, seed=3)
    europeanise(tmp_path / "demo" / "features_financials.csv")
    draft = infer_contract(tmp_path / "demo", SOURCE_NAMES, tmp_path / "staging")
    assert '    encoding: "cp1252"\n    delimiter: ";"\n    decimal: ","' in draft
    parsed = yaml.safe_load(draft)
    assert parsed["defaults"]["null_values"] == ["", "NA", "N/A", "n/a", "NULL", "null", "NaN",
                                                 "nan", "#N/A"]
    assert "delimiter" not in parsed["sources"]["lms_loan_daily"]
    path = tmp_path / "draft.yaml"
    path.write_text(draft)
    assert parsed["sources"]["features_financials"]["columns"]["Annual_Income"]["type"] == \
        "number"
    results = check_folder(tmp_path / "demo", load_contracts(path), tmp_path / "staging")
    assert all(f.severity != "ERROR" for found in results.values() for f in found)
