"""Month arithmetic: the one place that turns partition keys into dates and adds months.

A month is represented as the `date` of its first day; its Dagster partition key is
`YYYY-MM-01` and its folder in the lake is `month=YYYY-MM`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date

_MONTH_TEXT = re.compile(r"^(\d{4})-(\d{2})(?:-01)?$")


class MonthError(ValueError):
    """A month given by a user or a partition key is not a valid month."""


def parse_month(text: str) -> date:
    """`YYYY-MM` or `YYYY-MM-01` to the month's first day; anything else is a MonthError."""
    match = _MONTH_TEXT.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise MonthError(f"{text!r} is not a month: expected YYYY-MM or YYYY-MM-01")
    year, month = int(match.group(1)), int(match.group(2))
    if not (1 <= month <= 12 and 1900 <= year <= 2999):
        raise MonthError(f"{text!r} is not a month: month must be 01-12, year 1900-2999")
    return date(year, month, 1)


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def months_between(first: date, last: date) -> int:
    """How many months `last` is after `first` (negative if before)."""
    return (last.year - first.year) * 12 + (last.month - first.month)


def month_range(first: date, last: date) -> Iterator[date]:
    """Every month from `first` to `last`, both included."""
    for offset in range(months_between(first, last) + 1):
        yield add_months(first, offset)


def partition_key(month: date) -> str:
    return month_start(month).isoformat()


def folder_label(month: date) -> str:
    """`YYYY-MM`, the lake's folder name after `month=`."""
    return month.strftime("%Y-%m")


def label_month(application_month: date, mob: int) -> date:
    """The month a loan applied in `application_month` has its label observed (mob months later)."""
    return add_months(application_month, mob)


def application_month(observation_month: date, mob: int) -> date:
    """The application month of the loans whose label is observed in `observation_month`."""
    return add_months(observation_month, -mob)
