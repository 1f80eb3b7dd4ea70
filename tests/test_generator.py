"""The demo generator: the course file layout, its dirt, the label it drives, drift and signal.

The label is recomputed here from the lms file with the course definition, independently of
the generator, so the checks hold for whatever the generator does internally.
"""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ml_assets.demo import generator
from ml_assets.demo.generator import SOURCE_NAMES, demo_month_range, generate

SCALE = 1.0  # 12,500 customers: enough for the rate tolerances, generated in about a second
SHIFT = "2024-07-01"
COLUMNS = {
    "lms_loan_daily": ["loan_id", "Customer_ID", "loan_start_date", "tenure", "installment_num",
                       "loan_amt", "due_amt", "paid_amt", "overdue_amt", "balance",
                       "snapshot_date"],
    "feature_clickstream": [*(f"fe_{k}" for k in range(1, 21)), "Customer_ID", "snapshot_date"],
    "features_attributes": ["Customer_ID", "Name", "Age", "SSN", "Occupation", "snapshot_date"],
    "features_financials": [
        "Customer_ID", "Annual_Income", "Monthly_Inhand_Salary", "Num_Bank_Accounts",
        "Num_Credit_Card", "Interest_Rate", "Num_of_Loan", "Type_of_Loan", "Delay_from_due_date",
        "Num_of_Delayed_Payment", "Changed_Credit_Limit", "Num_Credit_Inquiries", "Credit_Mix",
        "Outstanding_Debt", "Credit_Utilization_Ratio", "Credit_History_Age",
        "Payment_of_Min_Amount", "Total_EMI_per_month", "Amount_invested_monthly",
        "Payment_Behaviour", "Monthly_Balance", "snapshot_date"],
}
FIRST_OF_MONTH = re.compile(r"^\d{4}-\d{2}-01$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    paths = generate(folder, scale=SCALE, seed=42, shift_month=SHIFT[:7])
    text = {name: pd.read_csv(path, dtype=str, keep_default_na=False)
            for name, path in paths.items()}
    return folder, paths, text


@pytest.fixture(scope="module")
def lms(demo):
    frame = pd.read_csv(demo[1]["lms_loan_daily"], parse_dates=["loan_start_date",
                                                                "snapshot_date"])
    return frame.sort_values(["loan_id", "installment_num"], ignore_index=True)


@pytest.fixture(scope="module")
def labels(lms):
    """The course label, 30 dpd at 6 months on book, by loan (customer) and application month."""
    at_mob = lms[lms.installment_num == 6]
    overdue, due = at_mob.overdue_amt.to_numpy(), at_mob.due_amt.to_numpy()
    missed = np.where(overdue > 0, np.ceil(overdue / np.where(due > 0, due, 1)), 0).astype(int)
    month = at_mob.snapshot_date.dt.to_period("M").astype("int64").to_numpy()
    first_missed = pd.PeriodIndex.from_ordinals(month - missed, freq="M").to_timestamp()
    days = (at_mob.snapshot_date.to_numpy() - first_missed.to_numpy()) // np.timedelta64(1, "D")
    dpd = np.where(overdue > 0, days, 0)
    return pd.DataFrame({"Customer_ID": at_mob.Customer_ID.to_numpy(),
                         "application": at_mob.loan_start_date.to_numpy(),
                         "label": (dpd >= 30).astype(int)})


def number(text: pd.Series, low: float, high: float) -> pd.Series:
    """A dirty numeric column cleaned the way the platform does: strip a trailing underscore,
    anything else that is not a number, or outside [low, high], is missing."""
    value = pd.to_numeric(text.str.replace(r"_+$", "", regex=True), errors="coerce")
    return value.where(value.between(low, high))


def psi(expected: pd.Series, actual: pd.Series, bins: int = 10) -> float:
    expected, actual = expected.dropna().to_numpy(), actual.dropna().to_numpy()
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    shares = [np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
              / len(v) for v in (expected, actual)]
    e, a = (np.clip(s, 1e-4, None) for s in shares)
    return float(((a - e) * np.log(a / e)).sum())


def test_files_columns_and_order(demo):
    folder, paths, text = demo
    assert list(paths) == list(SOURCE_NAMES)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.csv" for n in SOURCE_NAMES)
    for name, path in paths.items():
        assert path == folder / f"{name}.csv"
        assert path.read_text().split("\n", 1)[0] == ",".join(COLUMNS[name])
        assert list(text[name].columns) == COLUMNS[name]


def test_constants_and_month_range():
    assert generator.COHORTS * generator.LOANS_PER_COHORT_AT_1X == 12_500
    first, clickstream = generator.FIRST_APPLICATION_MONTH, generator.CLICKSTREAM_MONTHS
    assert first == date(2023, 1, 1)
    assert clickstream == (date(2023, 1, 1), date(2024, 12, 1))
    assert demo_month_range() == (date(2023, 1, 1), date(2025, 11, 1))


def test_dates_are_iso_first_of_month(demo, lms):
    _, _, text = demo
    for frame in text.values():
        assert frame.snapshot_date.str.fullmatch(FIRST_OF_MONTH).all()
    assert text["lms_loan_daily"].loan_start_date.str.fullmatch(FIRST_OF_MONTH).all()
    first, last = demo_month_range()
    assert (lms.snapshot_date.min().date(), lms.snapshot_date.max().date()) == (first, last)


def test_one_application_row_per_customer_in_25_even_cohorts(demo):
    _, _, text = demo
    attributes, financials = text["features_attributes"], text["features_financials"]
    customers = round(12_500 * SCALE)
    for frame in (attributes, financials):
        assert len(frame) == frame.Customer_ID.nunique() == customers
        assert frame.Customer_ID.str.fullmatch(r"CUS_0x[0-9a-f]+").all()
    merged = attributes.merge(financials, on="Customer_ID", suffixes=("_a", "_f"))
    assert len(merged) == customers
    assert (merged.snapshot_date_a == merged.snapshot_date_f).all()
    per_cohort = attributes.snapshot_date.value_counts().sort_index()
    assert list(per_cohort.index) == [f"{2023 + m // 12}-{m % 12 + 1:02d}-01" for m in range(25)]
    assert per_cohort.max() - per_cohort.min() <= 1


def test_fractional_scale_keeps_one_customer_per_cohort(tmp_path):
    paths = generate(tmp_path, scale=0.0001)
    attributes = pd.read_csv(paths["features_attributes"], dtype=str)
    assert attributes.snapshot_date.value_counts().tolist() == [1] * 25


def test_lms_has_eleven_monthly_rows_per_loan(demo, lms):
    financials = demo[2]["features_financials"]
    rows = lms.groupby("loan_id").installment_num.agg(list)
    assert len(rows) == len(financials)
    assert all(r == list(range(11)) for r in rows)
    def months(day: pd.Series) -> pd.Series:
        return day.dt.year * 12 + day.dt.month

    assert (months(lms.snapshot_date) - months(lms.loan_start_date) == lms.installment_num).all()
    start = lms.loan_start_date.dt.strftime("%Y_%m_%d")
    assert (lms.loan_id == lms.Customer_ID + "_" + start).all()
    application = dict(zip(financials.Customer_ID, pd.to_datetime(financials.snapshot_date),
                           strict=True))
    assert (lms.loan_start_date == lms.Customer_ID.map(application)).all()


def test_lms_ledger_arithmetic(demo, lms):
    assert (lms.tenure == 10).all() and (lms.loan_amt == 10_000).all()
    assert (lms.due_amt == np.where(lms.installment_num == 0, 0, 1000)).all()
    start = lms[lms.installment_num == 0]
    assert (start.paid_amt == 0).all() and (start.overdue_amt == 0).all()
    assert (start.balance == 10_000).all()
    by_loan = lms.groupby("loan_id")
    paid = by_loan.paid_amt.cumsum()
    assert np.allclose(lms.overdue_amt, by_loan.due_amt.cumsum() - paid)
    assert np.allclose(lms.balance, 10_000 - paid)
    assert (lms.overdue_amt >= 0).all() and (lms.balance >= 0).all()
    raw = demo[2]["lms_loan_daily"]
    assert raw.due_amt.isin(["0.0", "1000.0"]).all()


def test_clickstream_covers_every_month_for_72_percent(demo):
    _, _, text = demo
    click, customers = text["feature_clickstream"], text["features_financials"].Customer_ID
    months = sorted(click.snapshot_date.unique())
    assert months == [f"{2023 + m // 12}-{m % 12 + 1:02d}-01" for m in range(24)]
    assert (click.groupby("Customer_ID").snapshot_date.nunique() == 24).all()
    assert not click.duplicated(["Customer_ID", "snapshot_date"]).any()
    assert 0.68 < click.Customer_ID.nunique() / len(customers) < 0.76
    assert click.Customer_ID.isin(customers).all()


def test_clickstream_values_are_integers_15_percent_negative(demo):
    click = demo[2]["feature_clickstream"]
    values = click[[f"fe_{k}" for k in range(1, 21)]]
    assert values.apply(lambda c: c.str.fullmatch(r"-?\d+").all()).all()
    numbers = values.astype(int).to_numpy()
    assert 0.13 < (numbers < 0).mean() < 0.18
    assert 80 < numbers.mean() < 130 and 85 < numbers.std() < 120


def test_type_of_loan_lists_match_num_of_loan(demo):
    folder, paths, text = demo
    financials = text["features_financials"]
    listed = financials.Type_of_Loan
    items = listed.str.replace(", and ", ", ").str.split(", ")
    count = items.str.len().where(listed != "", 0)
    loans = number(financials.Num_of_Loan, 0, 20)
    clean = loans.notna()
    assert (count[clean] == loans[clean]).all()
    known = set(generator.LOAN_TYPES)
    assert all(set(i) <= known for i in items[listed != ""])
    two = listed[count == 2]
    assert two.str.fullmatch(r"[^,]+, and [^,]+").all()
    assert listed[count >= 3].str.contains(r", [^,]+, and [^,]+$").all()
    raw = paths["features_financials"].read_text()
    assert f',"{two.iloc[0]}",' in raw


def test_deterministic_per_seed(tmp_path):
    first = generate(tmp_path / "a", scale=0.05, seed=7)
    again = generate(tmp_path / "b", scale=0.05, seed=7)
    other = generate(tmp_path / "c", scale=0.05, seed=8)
    for name in SOURCE_NAMES:
        assert first[name].read_bytes() == again[name].read_bytes()
        assert first[name].read_bytes() != other[name].read_bytes()


def test_failed_run_leaves_no_files(tmp_path, monkeypatch):
    real_chunk = generator._chunk

    def failing_chunk(seed, index, *args):
        if index == 1:
            raise RuntimeError("disk full")
        return real_chunk(seed, index, *args)

    monkeypatch.setattr(generator, "CHUNK_CUSTOMERS", 100)
    monkeypatch.setattr(generator, "_chunk", failing_chunk)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path, scale=0.05)
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_only_when_asked_or_large(tmp_path, capsys):
    generate(tmp_path / "quiet", scale=0.01)
    assert capsys.readouterr().err == ""
    generate(tmp_path / "loud", scale=0.01, progress=True)
    err = capsys.readouterr().err
    assert "\r" in err and "1/1" in err


DIRT = [
    # (file, column, what the dirty value looks like, expected share)
    ("features_financials", "Annual_Income", r"\d+(\.\d+)?_", 0.07),
    ("features_attributes", "SSN", re.escape("#F%$D@*&8"), 0.055),
    ("features_attributes", "Occupation", "_______", 0.07),
    ("features_financials", "Credit_Mix", "_", 0.20),
    ("features_financials", "Payment_Behaviour", re.escape("!@9#%8"), 0.08),
    ("features_attributes", "Age", r"-500|-\d+|\d{4,}", 0.05),
    ("features_attributes", "Age", r"\d+_", 0.05),
    ("features_financials", "Num_Bank_Accounts", r"\d{3,}", 0.015),
    ("features_financials", "Num_Credit_Card", r"\d{3,}", 0.015),
    ("features_financials", "Interest_Rate", r"\d{3,}", 0.015),
    ("features_financials", "Num_Credit_Inquiries", r"\d{3,}", 0.015),
    ("features_financials", "Num_of_Loan", "-100", 0.04),
    ("features_financials", "Num_of_Loan", r"\d+_", 0.05),
    ("features_financials", "Num_of_Delayed_Payment", r"\d+_", 0.03),
    ("features_financials", "Num_of_Delayed_Payment", "", 0.07),
    ("features_financials", "Num_of_Delayed_Payment", r"\d{3,}", 0.01),
    ("features_financials", "Changed_Credit_Limit", "_", 0.02),
    ("features_financials", "Outstanding_Debt", r"\d+(\.\d+)?_", 0.01),
    ("features_financials", "Amount_invested_monthly", "__10000__", 0.045),
    ("features_financials", "Amount_invested_monthly", "", 0.045),
    ("features_financials", "Monthly_Balance", "", 0.01),
    ("features_financials", "Monthly_Inhand_Salary", "", 0.15),
    ("features_financials", "Credit_History_Age", "", 0.09),
    ("features_financials", "Type_of_Loan", "", 0.11),
    ("features_financials", "Num_Credit_Inquiries", "", 0.02),
    ("features_financials", "Payment_of_Min_Amount", "NM", 0.12),
]


@pytest.mark.parametrize(("source", "column", "pattern", "share"), DIRT,
                         ids=[f"{c}={p or 'empty'}" for _, c, p, _ in DIRT])
def test_dirt_rates(demo, source, column, pattern, share):
    values = demo[2][source][column]
    observed = values.str.fullmatch(pattern).mean()
    assert abs(observed - share) <= max(0.25 * share, 0.004), observed


def test_rare_dirt(demo):
    financials = demo[2]["features_financials"]
    sentinel = (financials.Monthly_Balance == "-333333333333333333333333333").sum()
    assert 1 <= sentinel <= 0.005 * len(financials)
    assert 0 < (financials.Num_Bank_Accounts == "-1").mean() < 0.01


CLEAN_RANGES = [
    ("features_attributes", "Age", 18, 65),
    ("features_financials", "Annual_Income", 7000, 180_000),
    ("features_financials", "Num_Bank_Accounts", 0, 11),
    ("features_financials", "Num_Credit_Card", 0, 11),
    ("features_financials", "Interest_Rate", 1, 34),
    ("features_financials", "Num_of_Loan", 0, 9),
    ("features_financials", "Delay_from_due_date", -5, 67),
    ("features_financials", "Num_of_Delayed_Payment", 0, 28),
    ("features_financials", "Changed_Credit_Limit", -6.5, 37),
    ("features_financials", "Num_Credit_Inquiries", 0, 17),
    ("features_financials", "Outstanding_Debt", 0.23, 5000),
    ("features_financials", "Credit_Utilization_Ratio", 20, 50),
]


def test_values_without_dirt_are_realistic(demo):
    _, _, text = demo
    for source, column, low, high in CLEAN_RANGES:
        value = pd.to_numeric(text[source][column].str.replace(r"_+$", "", regex=True),
                              errors="coerce").dropna()
        outside = value[~value.between(low, high)]
        assert len(outside) < 0.06 * len(value), column
        assert ((outside <= -1) | (outside >= 100)).all(), column  # only the absurd dirt
    attributes, financials = text["features_attributes"], text["features_financials"]
    ssn = attributes.SSN[attributes.SSN != "#F%$D@*&8"]
    assert ssn.str.fullmatch(r"\d{3}-\d{2}-\d{4}").all()
    occupation = attributes.Occupation[attributes.Occupation != "_______"]
    assert set(occupation) == set(generator.OCCUPATIONS)
    assert set(financials.Credit_Mix) == {"Good", "Standard", "Bad", "_"}
    assert set(financials.Payment_of_Min_Amount) == {"Yes", "No", "NM"}
    history = financials.Credit_History_Age[financials.Credit_History_Age != ""]
    parts = history.str.extract(r"^(\d+) Years and (\d+) Months$").astype(float)
    assert parts.notna().all().all() and parts[0].max() <= 33 and parts[1].max() <= 11
    behaviour = financials.Payment_Behaviour[financials.Payment_Behaviour != "!@9#%8"]
    assert behaviour.str.fullmatch(r"(Low|High)_spent_(Small|Medium|Large)_value_payments").all()
    income = number(financials.Annual_Income, 0, 1e8)
    salary = number(financials.Monthly_Inhand_Salary, 0, 1e7)
    ratio = (salary / (income / 12)).dropna()
    assert ratio.between(0.8, 1.0).all()


def test_label_rate_and_its_rise_after_the_shift(labels):
    assert 0.27 <= labels.label.mean() <= 0.31
    shifted = labels.application >= pd.Timestamp(SHIFT)
    before, after = labels.label[~shifted].mean(), labels.label[shifted].mean()
    assert after - before > 0.02, (before, after)


def test_one_missed_instalment_counts_unless_the_month_before_is_february(lms, labels):
    """One instalment overdue at mob 6 is as many days past due as the previous month has."""
    at_mob = lms[lms.installment_num == 6].set_index("Customer_ID")
    one_missed = at_mob[at_mob.overdue_amt == 1000]
    label = labels.set_index("Customer_ID").label[one_missed.index]
    days = (one_missed.snapshot_date - pd.DateOffset(months=1)).dt.days_in_month
    assert len(one_missed) > 0 and (days < 30).any() and (days >= 30).any()
    assert (label == (days >= 30).astype(int)).all()


@pytest.fixture(scope="module")
def applications(demo, labels):
    """Cleaned application features, the mean clickstream of the application month and the two
    before it, and the independent label."""
    _, _, text = demo
    financials = text["features_financials"]
    frame = pd.DataFrame({
        "Customer_ID": financials.Customer_ID,
        "application": pd.to_datetime(financials.snapshot_date),
        "income": np.log(number(financials.Annual_Income, 0, 1e8)),
        "debt": number(financials.Outstanding_Debt, 0, 1e8),
        "rate": number(financials.Interest_Rate, 0, 100),
        "delay": number(financials.Delay_from_due_date, -31, 366),
        "inquiries": number(financials.Num_Credit_Inquiries, 0, 100),
        "mix": financials.Credit_Mix.map({"Good": 0, "Standard": 1, "Bad": 2}),
    })
    click = text["feature_clickstream"][["Customer_ID", "snapshot_date", "fe_1", "fe_5"]]
    click = click.assign(snapshot_date=pd.to_datetime(click.snapshot_date),
                         fe_1=click.fe_1.astype(int), fe_5=click.fe_5.astype(int))
    click = click.merge(frame[["Customer_ID", "application"]], on="Customer_ID")
    window = click[(click.snapshot_date <= click.application)
                   & (click.snapshot_date >= click.application - pd.DateOffset(months=2))]
    means = window.groupby("Customer_ID")[["fe_1", "fe_5"]].mean()
    frame = frame.merge(means, left_on="Customer_ID", right_index=True, how="left")
    return frame.merge(labels[["Customer_ID", "label"]], on="Customer_ID")


def test_population_shift_from_shift_month(applications):
    shifted = applications.application >= pd.Timestamp(SHIFT)
    before = applications[~shifted]
    halves = (before[before.application < "2023-10-01"], before[before.application >= "2023-10-01"])
    after = applications[shifted]
    assert after.fe_1.mean() - before.fe_1.mean() > 40
    assert abs(halves[0].fe_1.mean() - halves[1].fe_1.mean()) < 15
    assert after.debt.mean() / before.debt.mean() > 1.25
    assert 0.93 < halves[0].debt.mean() / halves[1].debt.mean() < 1.07
    assert after.rate.mean() - before.rate.mean() > 2.5
    assert after.inquiries.mean() - before.inquiries.mean() > 0.7
    for column, act in (("fe_1", 0.25), ("debt", 0.1), ("rate", 0.1)):
        assert psi(before[column], after[column]) > act, column
        assert psi(*(h[column] for h in halves)) < 0.05, column
    assert psi(before.income, after.income) < 0.05


def test_features_predict_the_label(applications):
    features = applications.drop(columns=["Customer_ID", "application", "label"])
    features = features.fillna(features.median())
    features = (features - features.mean()) / features.std()
    train = applications.application < pd.Timestamp("2024-03-01")
    model = LogisticRegression(max_iter=1000).fit(features[train], applications.label[train])
    scores = model.predict_proba(features[~train])[:, 1]
    auc = roc_auc_score(applications.label[~train], scores)
    assert auc > 0.7, auc


# -- arrivals: the faults of real feeds -------------------------------------------------------

def read_text(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("plain"), scale=0.2, seed=9)


@pytest.mark.parametrize("source", generator.FEATURE_SOURCES)
def test_a_feed_that_stops_covering_new_applicants(plain, tmp_path, source):
    arrivals = generator.Arrivals(stops_covering={source: "2024-07"})
    paths = generate(tmp_path, scale=0.2, seed=9, arrivals=arrivals)
    applications = read_text(plain["features_attributes"])
    late = set(applications.loc[applications["snapshot_date"] >= "2024-07-01", "Customer_ID"])
    before, after = read_text(plain[source]), read_text(paths[source])
    assert late and not set(after["Customer_ID"]) & late
    expected = before[~before["Customer_ID"].isin(late)].reset_index(drop=True)
    pd.testing.assert_frame_equal(after, expected)
    for other in set(SOURCE_NAMES) - {source}:  # the other files are the same bytes
        assert paths[other].read_bytes() == plain[other].read_bytes()


@pytest.mark.parametrize("source", SOURCE_NAMES)
def test_a_feed_that_ends_early(plain, tmp_path, source):
    paths = generate(tmp_path, scale=0.2, seed=9,
                     arrivals=generator.Arrivals(ends={source: "2023-06"}))
    before, after = read_text(plain[source]), read_text(paths[source])
    assert after["snapshot_date"].max() == "2023-06-01"
    pd.testing.assert_frame_equal(
        after, before[before["snapshot_date"] <= "2023-06-01"].reset_index(drop=True))


@pytest.mark.parametrize("source", SOURCE_NAMES)
def test_a_corrected_month_changes_one_value_and_keeps_the_size(plain, tmp_path, source):
    paths = generate(tmp_path, scale=0.2, seed=9,
                     arrivals=generator.Arrivals(corrected={source: "2023-03"}))
    assert paths[source].stat().st_size == plain[source].stat().st_size
    before, after = read_text(plain[source]), read_text(paths[source])
    changed = (before != after).any(axis=1)
    assert changed.sum() == 1
    row = changed.idxmax()
    column = generator.CORRECTED_COLUMN[source]
    assert after.loc[row, "snapshot_date"] == "2023-03-01"
    assert (before != after).loc[row].tolist().count(True) == 1
    old, new = before.loc[row, column], after.loc[row, column]
    assert int(new[0]) == int(old[0]) + 1 and new[1:] == old[1:]


@pytest.mark.parametrize("arrivals,message", [
    ({"stops_covering": {"lms_loan_daily": "2024-07"}}, "stops_covering: source "
                                                        "'lms_loan_daily' is not one of"),
    ({"ends": {"features": "2024-07"}}, "ends: source 'features' is not one of"),
    ({"corrected": {"features_attributes": "2024-13"}}, "corrected: '2024-13' is not a month"),
])
def test_arrivals_refuse_an_unknown_source_or_month(arrivals, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generator.Arrivals(**arrivals)
