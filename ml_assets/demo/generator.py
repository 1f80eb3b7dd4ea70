"""Seeded demo data in the layout of the course's loan-default files, dirt included.

One loan per customer, 25 monthly application cohorts. Every customer has latent (true) values;
a logistic risk on them decides which loans go bad, the files show those values with the dirt
of the course data written over some of them. From `shift_month` on, the applicant population
drifts: a few features move and the default rate rises. Customers are generated in chunks and
appended to the files, so 100x never sits in memory.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

SOURCE_NAMES = ("lms_loan_daily", "feature_clickstream", "features_attributes",
                "features_financials")
FIRST_APPLICATION_MONTH = date(2023, 1, 1)
COHORTS = 25
CLICKSTREAM_MONTHS = (date(2023, 1, 1), date(2024, 12, 1))
LOANS_PER_COHORT_AT_1X = 500

CHUNK_CUSTOMERS = 25_000
FIRST_CUSTOMER_NUMBER = 0x1000
LOAN_AMOUNT, TENURE = 10_000.0, 10
INSTALMENT = LOAN_AMOUNT / TENURE
FE_COUNT, FE_MEAN, FE_CUSTOMER_SD, FE_MONTH_SD = 20, 100.0, 80.0, 60.0
CLICKSTREAM_SHARE = 0.72

# Latent factors: each is loading * credit quality (higher is worse) + independent noise.
LOADINGS = {"income": -0.4, "debt": 0.5, "rate": 0.55, "delay": 0.6, "delayed": 0.5,
            "inquiries": 0.5, "mix": 0.7, "utilisation": 0.1, "history": -0.5, "loans": 0.4,
            "min_payment": 0.5, "limit": 0.3, "banks": 0.4, "cards": 0.35, "age": -0.2}
# The logistic risk of going bad, on the standardised latent values (fe by 0-based index). The
# intercept is calibrated so that 30 dpd at mob 6 is about 29% over all cohorts (pre ~27.5%).
RISK_INTERCEPT = -1.62
RISK_WEIGHTS = {"income": -0.4, "debt": 0.25, "rate": 0.2, "delay": 0.5, "delayed": 0.25,
                "inquiries": 0.2, "mix": 0.4, "utilisation": 0.1, "history": -0.25,
                "min_payment": 0.2}
FE_RISK_WEIGHTS = {0: 0.2, 3: -0.35, 4: 0.3}
# The drift of applications from shift_month on, in latent standard deviations: fe_1..fe_3 up
# 0.55-0.7 sd, Outstanding_Debt mean up ~40%, Interest_Rate ~4 points, inquiries ~1.4; default
# rate up ~6 points.
SHIFT = {"debt": 0.6, "rate": 0.45, "inquiries": 0.4}
FE_SHIFT = {0: 0.85, 1: 0.8, 2: 0.7}
# Repayment behaviour: a good loan misses an instalment now and then and pays it next month.
GOOD_MISS_RATE = 0.03
LABEL_MOB = 6

OCCUPATIONS = ("Scientist", "Teacher", "Engineer", "Entrepreneur", "Developer", "Lawyer",
               "Media_Manager", "Doctor", "Journalist", "Manager", "Accountant", "Musician",
               "Mechanic", "Writer", "Architect")
LOAN_TYPES = ("Auto Loan", "Credit-Builder Loan", "Personal Loan", "Home Equity Loan",
              "Mortgage Loan", "Student Loan", "Debt Consolidation Loan", "Payday Loan",
              "Not Specified")
NUM_OF_LOAN_SHARES = (0.11, 0.11, 0.15, 0.15, 0.15, 0.07, 0.08, 0.08, 0.04, 0.06)
PAYMENT_BEHAVIOURS = tuple(f"{spent}_spent_{value}_value_payments"
                           for spent in ("Low", "High") for value in ("Small", "Medium", "Large"))
PAYMENT_BEHAVIOUR_SHARES = (0.28, 0.15, 0.11, 0.12, 0.19, 0.15)
FIRST_NAMES = ("Aaron", "Alistair", "Ana", "Ben", "Carla", "Chen", "Daniel", "Elena", "Emma",
               "Farah", "Gabriel", "Hana", "Ivan", "Jasmine", "Jonathan", "Kavya", "Laura",
               "Lucas", "Maria", "Mei", "Nadia", "Noah", "Olga", "Pedro", "Priya", "Rafael",
               "Sarah", "Tomas", "Yuki", "Zoe")
LAST_NAMES = ("Adams", "Baker", "Cohen", "Dubois", "Evans", "Fischer", "Garcia", "Hughes",
              "Ito", "Jensen", "Khan", "Lopez", "Maashoh", "Nguyen", "Okafor", "Petrov", "Quinn",
              "Rossi", "Schmidt", "Tanaka", "Usman", "Varga", "Wong", "Xu", "Yilmaz", "Zhang")
BAD_SSN, BAD_OCCUPATION, BAD_BEHAVIOUR = "#F%$D@*&8", "_______", "!@9#%8"
INVESTED_SENTINEL, BALANCE_SENTINEL = "__10000__", "-333333333333333333333333333"


# The value a correction re-issues, per source: its first digit goes up by one (same byte size).
CORRECTED_COLUMN = {"lms_loan_daily": "balance", "feature_clickstream": "fe_1",
                    "features_attributes": "Age", "features_financials": "Annual_Income"}
FEATURE_SOURCES = ("feature_clickstream", "features_attributes", "features_financials")


@dataclass(frozen=True)
class Arrivals:
    """How the files arrive, beside the data itself: the faults of real monthly feeds. Each maps
    a source name to a month `YYYY-MM`; empty (the default): every feed complete.

    - stops_covering: the source has no row at all for customers who apply from the month on
      (it still has its rows for earlier applicants): a feed that stops covering new applicants
      (attributes, financials or clickstream);
    - ends: the source's last snapshot month is this one (a feed that lands late or stops);
    - corrected: the first row of the month carries a re-issued value (one digit of
      CORRECTED_COLUMN's value goes up by one, same byte size): a corrected file.
    """

    stops_covering: dict[str, str] = field(default_factory=dict)
    ends: dict[str, str] = field(default_factory=dict)
    corrected: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for kind, allowed in (("stops_covering", FEATURE_SOURCES), ("ends", SOURCE_NAMES),
                              ("corrected", SOURCE_NAMES)):
            for source, month in getattr(self, kind).items():
                if source not in allowed:
                    raise ValueError(f"{kind}: source {source!r} is not one of "
                                     f"{', '.join(allowed)}")
                _month_index(_parse_month(month, kind))

    def month_index(self, kind: str, source: str) -> int | None:
        month = getattr(self, kind).get(source)
        return None if month is None else _month_index(_parse_month(month, kind))


def _parse_month(text: str, what: str) -> date:
    try:
        return date.fromisoformat(f"{text[:7]}-01")
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {text!r} is not a month YYYY-MM") from None


def _arrive(name: str, frame: pl.DataFrame, arrivals: Arrivals, ids: np.ndarray,
            start: np.ndarray) -> pl.DataFrame:
    """A chunk's rows of source `name` as they arrive: without the customers it stopped
    covering, and without the months after it ends."""
    stop = arrivals.month_index("stops_covering", name)
    if stop is not None:
        frame = frame.filter(~pl.col("Customer_ID").is_in(ids[start >= stop].tolist()))
    end = arrivals.month_index("ends", name)
    if end is not None:
        frame = frame.filter(pl.col("snapshot_date") <= _month_date(end))
    return frame


def _correct(name: str, frame: pl.DataFrame, month: int) -> tuple[pl.DataFrame, str | None]:
    """The chunk with the first row of `month` corrected, and a line saying what changed (None
    when the chunk has no row of the month whose value can be corrected)."""
    column = CORRECTED_COLUMN[name]
    rows = frame.with_row_index("_index").filter(pl.col("snapshot_date") == _month_date(month))
    for index, value in zip(rows["_index"], rows[column], strict=True):
        text = "" if value is None else str(value)
        if text[:1] in "12345678" and text:
            new = str(int(text[0]) + 1) + text[1:]
            values = frame[column].cast(pl.String).scatter(index, new)
            frame = frame.with_columns(values.cast(frame[column].dtype).alias(column))
            return frame, f"{name} {_month_date(month):%Y-%m}: {column} {text} -> {new}"
    return frame, None


def demo_month_range() -> tuple[date, date]:
    """The first and last lms snapshot month: first application to last cohort's last instalment."""
    return FIRST_APPLICATION_MONTH, _month_date(_month_index(FIRST_APPLICATION_MONTH)
                                                + COHORTS - 1 + TENURE)


def _month_index(day: date) -> int:
    return (day.year - 1970) * 12 + day.month - 1


def _month_date(index: int) -> date:
    return date(1970 + index // 12, index % 12 + 1, 1)


def _dates(month_indexes: np.ndarray) -> pl.Series:
    """First days of months (counted from 1970-01) as a polars Date column."""
    return pl.Series(np.asarray(month_indexes).astype("datetime64[M]").astype("datetime64[D]"))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _between(z: np.ndarray, low: float, high: float, median: float, spread: float,
             log: bool = False) -> np.ndarray:
    """A value in [low, high] rising with z, logit-normal: realistic tails, no pile at a bound."""
    if log:
        return np.exp(_between(z, np.log(low), np.log(high), np.log(median), spread))
    share = (median - low) / (high - low)
    return low + (high - low) * _sigmoid(np.log(share / (1 - share)) + spread * z)


def _whole(z: np.ndarray, low: int, high: int, median: int, spread: float) -> np.ndarray:
    """A whole number in [low, high] rising with z."""
    return np.rint(_between(z, low - 0.49, high + 0.49, median + 0.5, spread)).astype(np.int64)


def _latent(rng: np.random.Generator, shifted: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """True customer values: standard normal factors, clickstream means, and who goes bad."""
    n = len(shifted)
    quality = rng.standard_normal(n)
    z = {name: load * quality + np.sqrt(1 - load**2) * rng.standard_normal(n)
         for name, load in LOADINGS.items()}
    fe = rng.standard_normal((n, FE_COUNT))
    for name, delta in SHIFT.items():
        z[name] = z[name] + delta * shifted
    for k, delta in FE_SHIFT.items():
        fe[:, k] += delta * shifted
    logit = RISK_INTERCEPT + sum(w * z[name] for name, w in RISK_WEIGHTS.items())
    logit = logit + sum(w * fe[:, k] for k, w in FE_RISK_WEIGHTS.items())
    bad = rng.random(n) < _sigmoid(logit)
    return z, fe, bad


def _payments(rng: np.random.Generator, bad: np.ndarray) -> np.ndarray:
    """Paid amount per loan and instalment 0..TENURE.

    A bad loan stops paying at a month on book in 1..5 and is still missing at the label mob;
    afterwards it keeps missing, resumes the regular instalment, or pays double to catch up.
    A good loan misses a single instalment now and then and pays it with the next one.
    """
    n, months = len(bad), np.arange(TENURE + 1)
    stop = rng.integers(1, LABEL_MOB, n)
    cure_month = rng.integers(LABEL_MOB + 1, TENURE + 1, n)
    cure = rng.choice(3, n, p=(0.5, 0.3, 0.2))  # 0 never, 1 resumes, 2 catches up
    miss = rng.random((n, TENURE + 1)) < GOOD_MISS_RATE
    miss[:, 0] = False
    for t in range(2, TENURE + 1):
        miss[:, t] &= ~miss[:, t - 1]
    good_paid = INSTALMENT * ((~miss).astype(float) + np.roll(miss, 1, axis=1))
    cured = months[None, :] >= cure_month[:, None]
    bad_paid = np.where(months[None, :] < stop[:, None], INSTALMENT,
                        np.where(cured, INSTALMENT * cure[:, None], 0.0))
    wanted = np.where(bad[:, None], bad_paid, good_paid)
    wanted[:, 0] = 0.0
    paid, overdue = np.zeros_like(wanted), np.zeros(n)
    for t in range(1, TENURE + 1):  # never pay more than is owed
        paid[:, t] = np.minimum(wanted[:, t], overdue + INSTALMENT)
        overdue = overdue + INSTALMENT - paid[:, t]
    return paid


def _lms(ids: np.ndarray, start: np.ndarray, paid: np.ndarray) -> pl.DataFrame:
    """Eleven ledger rows per loan, instalments 0..TENURE, one per month."""
    n, months = len(start), np.arange(TENURE + 1)
    due = np.tile(np.r_[0.0, np.full(TENURE, INSTALMENT)], (n, 1))
    cum_paid = paid.cumsum(axis=1)
    days = start.astype("datetime64[M]").astype("datetime64[D]").astype(str)
    loan_ids = pl.Series(_join(ids, "_", np.strings.replace(days, "-", "_")))
    return pl.DataFrame({
        "loan_id": loan_ids.gather(np.repeat(np.arange(n), TENURE + 1)),
        "Customer_ID": pl.Series(ids).gather(np.repeat(np.arange(n), TENURE + 1)),
        "loan_start_date": _dates(np.repeat(start, TENURE + 1)),
        "tenure": np.full(n * (TENURE + 1), TENURE),
        "installment_num": np.tile(months, n),
        "loan_amt": np.full(n * (TENURE + 1), LOAN_AMOUNT),
        "due_amt": due.ravel(),
        "paid_amt": paid.ravel(),
        "overdue_amt": (due.cumsum(axis=1) - cum_paid).ravel(),
        "balance": (LOAN_AMOUNT - cum_paid).ravel(),
        "snapshot_date": _dates((start[:, None] + months[None, :]).ravel()),
    })


def _clickstream(rng: np.random.Generator, ids: np.ndarray, fe: np.ndarray) -> pl.DataFrame:
    """Every clickstream month for the customers that have clickstream, before and after their
    application alike (a point-in-time pipeline must skip the later ones)."""
    has = rng.random(len(ids)) < CLICKSTREAM_SHARE
    first, last = (_month_index(m) for m in CLICKSTREAM_MONTHS)
    months = np.arange(first, last + 1)
    means = FE_MEAN + FE_CUSTOMER_SD * fe[has]
    values = means[None] + FE_MONTH_SD * rng.standard_normal((len(months), *means.shape))
    values = np.rint(values).astype(np.int64).reshape(-1, FE_COUNT)
    frame = pl.DataFrame(values, schema=[f"fe_{k + 1}" for k in range(FE_COUNT)], orient="row")
    customers = ids[has]
    return frame.with_columns(
        Customer_ID=pl.Series(np.tile(customers, len(months))),
        snapshot_date=_dates(np.repeat(months, len(customers))),
    )


def _dirt(rng: np.random.Generator, column: str, n: int, *rules,
          at_least_one: bool = False) -> pl.Expr:
    """`column` as text with each rule (share, replacement) applied to its own random rows;
    `at_least_one` gives the first rule one row even when the share rounds to none."""
    draws = rng.random(n)
    if at_least_one:
        draws[np.argmin(draws)] = 0.0
    u, expr, low = pl.Series(draws), pl.col(column).cast(pl.String), 0.0
    for share, replacement in rules:
        expr = pl.when(u.is_between(low, low + share, closed="left")).then(replacement)\
            .otherwise(expr)
        low += share
    return expr.alias(column)


def _join(*parts, sep: str = "") -> np.ndarray:
    """Element-wise concatenation of string arrays (and plain strings), with a separator."""
    text = parts[0]
    for part in parts[1:]:
        text = np.strings.add(np.strings.add(text, sep), part)
    return text


def _underscored(column: str) -> pl.Expr:
    return pl.concat_str([pl.col(column).cast(pl.String), pl.lit("_")])


def _outliers(rng: np.random.Generator, n: int, low: int, high: int) -> pl.Expr:
    return pl.lit(pl.Series(rng.integers(low, high, n)).cast(pl.String))


def _loan_types(rng: np.random.Generator, count: np.ndarray) -> pl.Series:
    """`A`, `A, and B`, `A, B, and C`: count loan types, duplicates possible; empty for none."""
    names = np.array(LOAN_TYPES)[rng.integers(0, len(LOAN_TYPES), (len(count), 9))]
    text = np.full(len(count), "", dtype=np.dtypes.StringDType())
    for j in range(9):
        sep = ", and " if j else ""
        sep = np.where((j > 0) & (j < count - 1), ", ", sep)
        text = np.where(j < count, text + sep + names[:, j], text)
    return pl.Series(text).replace("", None)


def _customers(rng: np.random.Generator, dirt: np.random.Generator, ids: np.ndarray,
               start: np.ndarray, z: dict, first: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The attributes and financials rows: true values from the latent factors, then dirt."""
    n = len(ids)
    month = _dates(start)
    income = np.round(_between(z["income"], 7006, 179987, 37000, 0.86, log=True), 2)
    salary = np.round(income / 12 * rng.uniform(0.86, 0.99, n), 2)
    num_loans = np.searchsorted(np.cumsum(NUM_OF_LOAN_SHARES)[:-1], _sigmoid(1.7 * z["loans"]))
    emi = np.round(num_loans * salary * 0.012 * rng.lognormal(0, 0.4, n), 2)
    invested = np.round(salary * rng.uniform(0.02, 0.12, n), 2)
    balance = np.maximum(salary - emi - invested, 0) * rng.uniform(0.04, 0.3, n)
    history = _whole(z["history"], 0, 33 * 12 + 11, 220, 1.0)
    min_payment = np.where(z["min_payment"] > -0.23, "Yes", "No")
    mix_index = np.searchsorted((-0.52, 0.71), z["mix"])
    attributes = pl.DataFrame({
        "Customer_ID": ids,
        "Name": _join(np.array(FIRST_NAMES)[rng.integers(0, len(FIRST_NAMES), n)], " ",
                      np.array(LAST_NAMES)[rng.integers(0, len(LAST_NAMES), n)]),
        "Age": _whole(z["age"], 18, 65, 33, 1.05),
        "SSN": _join(*(np.strings.zfill(rng.integers(0, 10**w, n).astype(str), w)
                       for w in (3, 2, 4)), sep="-"),
        "Occupation": np.array(OCCUPATIONS)[rng.integers(0, len(OCCUPATIONS), n)],
        "snapshot_date": month,
    }).with_columns(
        _dirt(dirt, "Age", n, (0.02, pl.lit("-500")), (0.03, _outliers(dirt, n, 1001, 8700)),
              (0.05, _underscored("Age"))),
        _dirt(dirt, "SSN", n, (0.055, pl.lit(BAD_SSN))),
        _dirt(dirt, "Occupation", n, (0.07, pl.lit(BAD_OCCUPATION))),
    )
    financials = pl.DataFrame({
        "Customer_ID": ids,
        "Annual_Income": income,
        "Monthly_Inhand_Salary": salary,
        "Num_Bank_Accounts": _whole(z["banks"], 0, 11, 5, 0.84),
        "Num_Credit_Card": _whole(z["cards"], 0, 11, 5, 0.67),
        "Interest_Rate": _whole(z["rate"], 1, 34, 17, 1.7),
        "Num_of_Loan": num_loans,
        "Type_of_Loan": _loan_types(rng, num_loans),
        "Delay_from_due_date": _whole(z["delay"], -5, 67, 19, 0.87),
        "Num_of_Delayed_Payment": _whole(z["delayed"], 0, 28, 13, 0.83),
        "Changed_Credit_Limit": np.round(_between(z["limit"], -6.49, 36.97, 9.4, 0.67), 2),
        "Num_Credit_Inquiries": _whole(z["inquiries"], 0, 17, 5, 1.0),
        "Credit_Mix": np.array(("Good", "Standard", "Bad"))[mix_index],
        "Outstanding_Debt": np.round(_between(z["debt"], 0.23, 4998, 1150, 0.68, log=True), 2),
        "Credit_Utilization_Ratio": _between(z["utilisation"], 20.0, 50.0, 32, 0.71),
        "Credit_History_Age": _join((history // 12).astype(str), " Years and ",
                                    (history % 12).astype(str), " Months"),
        "Payment_of_Min_Amount": np.where(rng.random(n) < 0.12, "NM", min_payment),
        "Total_EMI_per_month": emi,
        "Amount_invested_monthly": invested,
        "Payment_Behaviour": np.array(PAYMENT_BEHAVIOURS)[
            rng.choice(len(PAYMENT_BEHAVIOURS), n, p=PAYMENT_BEHAVIOUR_SHARES)],
        "Monthly_Balance": balance,
        "snapshot_date": month,
    })
    financials = financials.with_columns(
        _dirt(dirt, "Annual_Income", n, (0.07, _underscored("Annual_Income"))),
        _dirt(dirt, "Monthly_Inhand_Salary", n, (0.15, pl.lit(None))),
        _dirt(dirt, "Num_Bank_Accounts", n, (0.015, _outliers(dirt, n, 100, 1800)),
              (0.002, pl.lit("-1"))),
        _dirt(dirt, "Num_Credit_Card", n, (0.015, _outliers(dirt, n, 100, 1500))),
        _dirt(dirt, "Interest_Rate", n, (0.015, _outliers(dirt, n, 100, 5800))),
        _dirt(dirt, "Num_of_Loan", n, (0.04, pl.lit("-100")), (0.05, _underscored("Num_of_Loan"))),
        _dirt(dirt, "Num_of_Delayed_Payment", n, (0.03, _underscored("Num_of_Delayed_Payment")),
              (0.07, pl.lit(None)), (0.01, _outliers(dirt, n, 100, 4400))),
        _dirt(dirt, "Changed_Credit_Limit", n, (0.02, pl.lit("_"))),
        _dirt(dirt, "Num_Credit_Inquiries", n, (0.015, _outliers(dirt, n, 100, 2600)),
              (0.02, pl.lit(None))),
        _dirt(dirt, "Credit_Mix", n, (0.2, pl.lit("_"))),
        _dirt(dirt, "Outstanding_Debt", n, (0.01, _underscored("Outstanding_Debt"))),
        _dirt(dirt, "Credit_History_Age", n, (0.09, pl.lit(None))),
        _dirt(dirt, "Amount_invested_monthly", n, (0.045, pl.lit(INVESTED_SENTINEL)),
              (0.045, pl.lit(None))),
        _dirt(dirt, "Payment_Behaviour", n, (0.08, pl.lit(BAD_BEHAVIOUR))),
        _dirt(dirt, "Monthly_Balance", n, (0.001, pl.lit(BALANCE_SENTINEL)), (0.01, pl.lit(None)),
              at_least_one=first),
    )
    return attributes, financials


def _chunk(seed: int, index: int, first: int, count: int, total: int,
           shift: int, arrivals: Arrivals) -> dict[str, pl.DataFrame]:
    """All four files' rows for customers first .. first + count - 1 of `total`."""
    rng = np.random.default_rng([seed, index, 0])
    dirt = np.random.default_rng([seed, index, 1])
    numbers = np.arange(first, first + count)
    start = _month_index(FIRST_APPLICATION_MONTH) + numbers * COHORTS // total
    ids = np.strings.mod("CUS_0x%x", numbers + FIRST_CUSTOMER_NUMBER)
    z, fe, bad = _latent(rng, start >= shift)
    attributes, financials = _customers(rng, dirt, ids, start, z, index == 0)
    frames = {
        "lms_loan_daily": _lms(ids, start, _payments(rng, bad)),
        "feature_clickstream": _clickstream(rng, ids, fe),
        "features_attributes": attributes,
        "features_financials": financials,
    }
    return {name: _arrive(name, frame, arrivals, ids, start) for name, frame in frames.items()}


def generate(out_dir: str | Path, scale: float = 1.0, seed: int = 42, shift_month: str = "2024-07",
             progress: bool | None = None, arrivals: Arrivals | None = None) -> dict[str, Path]:
    """Writes the four CSV files into out_dir and returns {source_name: path}.

    Chunks of customers are appended to hidden temporary files, renamed into place at the end.
    An empty shift_month means no drift. `arrivals` reproduces how real feeds arrive (a feed
    that stops covering new applicants, ends early, or re-issues a month); the data is the same
    as without it, apart from those rows. Raises ValueError for a bad month or source.
    """
    arrivals = arrivals or Arrivals()
    to_correct = {name: arrivals.month_index("corrected", name) for name in arrivals.corrected}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = max(round(LOANS_PER_COHORT_AT_1X * COHORTS * scale), COHORTS)
    shift = _month_index(_parse_month(shift_month, "shift_month")) if shift_month else 10**9
    progress = scale >= 5 if progress is None else progress
    chunks = range(0, total, CHUNK_CUSTOMERS)
    paths = {name: out / f"{name}.csv" for name in SOURCE_NAMES}
    temps = {name: out / f".{name}.csv.tmp" for name in SOURCE_NAMES}
    try:
        with ExitStack() as stack:
            files = {name: stack.enter_context(open(temps[name], "wb")) for name in SOURCE_NAMES}
            for index, first in enumerate(chunks):
                count = min(CHUNK_CUSTOMERS, total - first)
                for name, frame in _chunk(seed, index, first, count, total, shift,
                                          arrivals).items():
                    if to_correct.get(name) is not None:
                        frame, change = _correct(name, frame, to_correct[name])
                        if change:
                            print(f"corrected {change}", file=sys.stderr)
                            to_correct[name] = None
                    frame.write_csv(files[name], include_header=index == 0)
                if progress:
                    bar = "#" * ((index + 1) * 30 // len(chunks))
                    print(f"\rgenerating [{bar:.<30}] {index + 1}/{len(chunks)} chunks", end="",
                          file=sys.stderr, flush=True)
        for name in SOURCE_NAMES:
            os.replace(temps[name], paths[name])
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        if progress:
            print(file=sys.stderr)
    return paths
