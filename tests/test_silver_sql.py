"""Every silver cleaning rule, on hand-made rows holding the dirty values of the course files."""

from __future__ import annotations

from datetime import date

import pytest

from tests.conftest import text_table

FINANCIAL_COLUMNS = [
    "Customer_ID", "Annual_Income", "Monthly_Inhand_Salary", "Num_Bank_Accounts",
    "Num_Credit_Card", "Interest_Rate", "Num_of_Loan", "Type_of_Loan", "Delay_from_due_date",
    "Num_of_Delayed_Payment", "Changed_Credit_Limit", "Num_Credit_Inquiries", "Credit_Mix",
    "Outstanding_Debt", "Credit_Utilization_Ratio", "Credit_History_Age", "Payment_of_Min_Amount",
    "Total_EMI_per_month", "Amount_invested_monthly", "Payment_Behaviour", "Monthly_Balance",
    "snapshot_date",
]
CLEAN_FINANCIALS = {
    "Customer_ID": "CUS_0x1000", "Annual_Income": "19114.12", "Monthly_Inhand_Salary": "1824.84",
    "Num_Bank_Accounts": "3", "Num_Credit_Card": "4", "Interest_Rate": "3", "Num_of_Loan": "4",
    "Type_of_Loan": "Auto Loan, Credit-Builder Loan, Personal Loan, and Home Equity Loan",
    "Delay_from_due_date": "3", "Num_of_Delayed_Payment": "7", "Changed_Credit_Limit": "11.27",
    "Num_Credit_Inquiries": "4.0", "Credit_Mix": "Good", "Outstanding_Debt": "809.98",
    "Credit_Utilization_Ratio": "26.82", "Credit_History_Age": "22 Years and 1 Months",
    "Payment_of_Min_Amount": "No", "Total_EMI_per_month": "49.57",
    "Amount_invested_monthly": "80.41", "Payment_Behaviour": "High_spent_Small_value_payments",
    "Monthly_Balance": "312.49", "snapshot_date": "2023-01-01",
}


def financials(transform, **dirty):
    rows = transform("silver/financials", {
        "raw_features_financials": text_table([{**CLEAN_FINANCIALS, **dirty}], FINANCIAL_COLUMNS)
    })
    assert len(rows) == 1
    return rows[0]


def test_clean_row_is_typed(transform):
    row = financials(transform)
    assert row["_reject_reason"] is None
    assert row["customer_id"] == "CUS_0x1000"
    assert row["snapshot_date"] == date(2023, 1, 1)
    assert row["annual_income"] == pytest.approx(19114.12)
    assert row["num_bank_accounts"] == 3 and isinstance(row["num_bank_accounts"], int)
    assert row["num_credit_inquiries"] == 4
    assert row["credit_history_age_months"] == 22 * 12 + 1
    assert row["credit_mix"] == "Good"
    assert row["payment_of_min_amount"] == "No"
    assert (row["spend_level"], row["value_level"]) == ("High", "Small")


@pytest.mark.parametrize("column,text,expected", [
    ("Annual_Income", "52312.68_", 52312.68),
    ("Num_of_Loan", "3_", 3),
    ("Num_of_Delayed_Payment", "8_", 8),
    ("Outstanding_Debt", "1328.93_", 1328.93),
])
def test_trailing_underscore_is_stripped_and_counted(transform, column, text, expected):
    row = financials(transform, **{column: text})
    assert row[column.lower()] == pytest.approx(expected)
    prefix = "int" if column.startswith("Num") else "num"
    assert row[f"{prefix}__{column}"]["trailing_underscore"] is True
    assert row["_reject_reason"] is None


@pytest.mark.parametrize("column,text,rule", [
    ("Amount_invested_monthly", "__10000__", "placeholder"),
    ("Changed_Credit_Limit", "_", "placeholder"),
    ("Num_Bank_Accounts", "1414", "out_of_range"),
    ("Num_Bank_Accounts", "-1", "out_of_range"),
    ("Num_Credit_Card", "1385", "out_of_range"),
    ("Interest_Rate", "5318", "out_of_range"),
    ("Num_of_Loan", "-100", "out_of_range"),
    ("Num_Credit_Inquiries", "1700", "out_of_range"),
    ("Monthly_Balance", "-333333333333333333333333333", "out_of_range"),
    ("Num_of_Loan", "2.5", "not_whole"),
])
def test_placeholders_sentinels_and_outliers_become_null(transform, column, text, rule):
    row = financials(transform, **{column: text})
    assert row[column.lower()] is None
    prefix = "int" if f"int__{column}" in row else "num"
    assert row[f"{prefix}__{column}"][rule] is True
    assert row["_reject_reason"] is None


def test_empty_cells_are_null_without_firing_rules(transform):
    row = financials(transform, Monthly_Inhand_Salary=None, Credit_History_Age=None,
                     Type_of_Loan=None, Num_of_Delayed_Payment=None)
    assert row["monthly_inhand_salary"] is None
    assert row["credit_history_age_months"] is None
    assert row["num_of_delayed_payment"] is None
    assert row["loan_type_count"] == 0 and row["loan_type_auto"] is False
    struct = row["num__Monthly_Inhand_Salary"]
    assert not any(v for k, v in struct.items() if isinstance(v, bool))
    assert row["parsed__Credit_History_Age"]["unparseable"] is False


def test_text_in_a_numeric_column_rejects_the_row_naming_the_column(transform):
    row = financials(transform, Annual_Income="twelve thousand")
    assert row["_reject_reason"] == "Annual_Income is not a number: twelve thousand"


@pytest.mark.parametrize("column,text", [
    ("Credit_Mix", "_"), ("Payment_Behaviour", "!@9#%8"), ("Payment_of_Min_Amount", "maybe"),
])
def test_category_placeholders_become_null(transform, column, text):
    row = financials(transform, **{column: text})
    assert row[column.lower()] is None
    assert row[f"cat__{column}"]["not_allowed"] is True


def test_payment_of_min_amount_nm_is_a_category_not_a_boolean(transform):
    assert financials(transform, Payment_of_Min_Amount="NM")["payment_of_min_amount"] == "NM"


@pytest.mark.parametrize("behaviour,spend,value", [
    ("Low_spent_Large_value_payments", "Low", "Large"),
    ("High_spent_Medium_value_payments", "High", "Medium"),
    ("!@9#%8", None, None),
])
def test_payment_behaviour_is_split(transform, behaviour, spend, value):
    row = financials(transform, Payment_Behaviour=behaviour)
    assert (row["spend_level"], row["value_level"]) == (spend, value)


@pytest.mark.parametrize("text,months,unparseable", [
    ("10 Years and 9 Months", 129, False),
    ("0 Years and 1 Months", 1, False),
    ("1 Year and 1 Month", 13, False),
    ("a long time", None, True),
])
def test_credit_history_age_in_months(transform, text, months, unparseable):
    row = financials(transform, Credit_History_Age=text)
    assert row["credit_history_age_months"] == months
    assert row["parsed__Credit_History_Age"]["unparseable"] is unparseable


@pytest.mark.parametrize("text,count,flags", [
    ("Auto Loan", 1, {"auto"}),
    ("Auto Loan, and Student Loan", 2, {"auto", "student"}),
    ("Personal Loan, Payday Loan, and Mortgage Loan", 3, {"personal", "payday", "mortgage"}),
    ("Auto Loan, Auto Loan, and Not Specified", 3, {"auto", "not_specified"}),
    ("Credit-Builder Loan, Home Equity Loan, and Debt Consolidation Loan", 3,
     {"credit_builder", "home_equity", "debt_consolidation"}),
])
def test_type_of_loan_flags_and_count(transform, text, count, flags):
    row = financials(transform, Type_of_Loan=text)
    assert row["loan_type_count"] == count
    set_flags = {k.removeprefix("loan_type_") for k, v in row.items()
                 if k.startswith("loan_type_") and k != "loan_type_count" and v}
    assert set_flags == flags
    assert row["parsed__Type_of_Loan"]["unknown_type"] is False


def test_unknown_loan_type_is_counted(transform):
    row = financials(transform, Type_of_Loan="Auto Loan, and Boat Loan")
    assert row["loan_type_count"] == 2 and row["loan_type_auto"] is True
    assert row["parsed__Type_of_Loan"]["unknown_type"] is True


def test_us_dates_are_read(transform):
    row = financials(transform, snapshot_date="1/31/2023", _snapshot_month=date(2023, 1, 1))
    assert row["snapshot_date"] == date(2023, 1, 31)


ATTRIBUTE_COLUMNS = ["Customer_ID", "Name", "Age", "SSN", "Occupation", "snapshot_date"]


def attributes(transform, **values):
    base = {"Customer_ID": "CUS_0x1000", "Name": "Aaron Maashoh", "Age": "23",
            "SSN": "821-00-0265", "Occupation": "Scientist", "snapshot_date": "2023-01-01"}
    rows = transform("silver/attributes", {
        "raw_features_attributes": text_table([{**base, **values}], ATTRIBUTE_COLUMNS)})
    return rows[0]


@pytest.mark.parametrize("text,age,rule", [
    ("23", 23, None), ("28_", 28, "trailing_underscore"), ("-500", None, "out_of_range"),
    ("8678", None, "out_of_range"), ("17", None, "out_of_range"), ("101", None, "out_of_range"),
])
def test_age(transform, text, age, rule):
    row = attributes(transform, Age=text)
    assert row["age"] == age
    fired = {k for k, v in row["int__Age"].items() if v is True}
    assert fired == ({rule} if rule else set())


def test_personal_data_is_dropped_and_ssn_validity_kept(transform):
    good, bad = attributes(transform), attributes(transform, SSN="#F%$D@*&8")
    assert good["ssn_valid"] is True and bad["ssn_valid"] is False
    assert not {"name", "ssn", "Name", "SSN"} & set(good)
    assert "821-00-0265" not in map(str, good.values())


def test_occupation_placeholder(transform):
    row = attributes(transform, Occupation="_______")
    assert row["occupation"] is None and row["cat__Occupation"]["not_allowed"] is True
    assert attributes(transform, Occupation="Media_Manager")["occupation"] == "Media_Manager"


def test_missing_customer_id_is_rejected(transform):
    assert attributes(transform, Customer_ID=" ")["_reject_reason"] == "Customer_ID is missing"


def test_clickstream_negative_values_are_data_and_text_is_rejected(transform):
    columns = ["fe_1", "fe_2", "fe_3", "Customer_ID", "snapshot_date"]
    rows = transform("silver/clickstream", {"raw_feature_clickstream": text_table([
        {"fe_1": "-101", "fe_2": "63", "fe_3": "0", "Customer_ID": "C1",
         "snapshot_date": "2023-01-01"},
        {"fe_1": "12", "fe_2": "x", "fe_3": "4.5", "Customer_ID": "C2",
         "snapshot_date": "2023-01-01"},
    ], columns)})
    good, bad = rows
    assert (good["fe_1"], good["fe_2"], good["fe_3"]) == (-101, 63, 0)
    assert good["_reject_reason"] is None
    assert bad["_reject_reason"] == "fe_2 is not a number: x; fe_3 out of range: 4.5"


LMS_COLUMNS = ["loan_id", "Customer_ID", "loan_start_date", "tenure", "installment_num",
               "loan_amt", "due_amt", "paid_amt", "overdue_amt", "balance", "snapshot_date"]


def lms_row(snapshot: str, installment: int, overdue: float, **values) -> dict:
    return {"loan_id": "C1_2023_01_01", "Customer_ID": "C1", "loan_start_date": "2023-01-01",
            "tenure": "10", "installment_num": str(installment), "loan_amt": "10000.0",
            "due_amt": "1000.0" if installment else "0.0", "paid_amt": "0.0",
            "overdue_amt": str(overdue), "balance": "10000.0", "snapshot_date": snapshot,
            **values}


def loan_daily(transform, rows):
    return transform("silver/loan_daily", {"raw_lms_loan_daily": text_table(rows, LMS_COLUMNS)})


@pytest.mark.parametrize("snapshot,installment,overdue,missed,first_missed,dpd", [
    ("2023-01-01", 0, 0.0, 0, None, 0),
    ("2023-03-01", 2, 1000.0, 1, date(2023, 2, 1), 28),
    ("2023-07-01", 6, 1000.0, 1, date(2023, 6, 1), 30),
    ("2023-07-01", 6, 2000.0, 2, date(2023, 5, 1), 61),
    ("2023-07-01", 6, 1500.0, 2, date(2023, 5, 1), 61),
    ("2023-07-01", 6, 0.0, 0, None, 0),
])
def test_delinquency_fields(transform, snapshot, installment, overdue, missed, first_missed, dpd):
    row = loan_daily(transform, [lms_row(snapshot, installment, overdue)])[0]
    assert row["mob"] == installment
    assert row["installments_missed"] == missed
    assert row["first_missed_date"] == first_missed
    assert row["dpd"] == dpd
    assert row["_reject_reason"] is None


def test_ledger_rows_with_bad_amounts_are_quarantined(transform):
    rows = loan_daily(transform, [
        lms_row("2023-02-01", 1, 0.0, paid_amt="abc"),
        lms_row("2023-02-01", 1, 0.0, due_amt="-5"),
        lms_row("2023-02-01", 1, 0.0, loan_start_date="someday"),
        lms_row("2023-02-01", 1, 0.0, loan_amt="10000.0_"),
    ])
    reasons = [r["_reject_reason"] for r in rows]
    assert reasons == ["paid_amt is not a number: abc", "due_amt out of range: -5",
                       "loan_start_date is not a date: someday", None]
    assert rows[3]["loan_amt"] == 10000.0
