from datetime import date

import pytest

from ml_assets.months import (
    MonthError,
    add_months,
    application_month,
    folder_label,
    label_month,
    month_range,
    parse_month,
    partition_key,
)


@pytest.mark.parametrize("text,month", [("2024-03", date(2024, 3, 1)),
                                        ("2024-03-01", date(2024, 3, 1)),
                                        (" 2023-12 ", date(2023, 12, 1))])
def test_parse_month(text, month):
    assert parse_month(text) == month


@pytest.mark.parametrize("text", ["2024-13", "2024-3", "2024-03-15", "03/2024", "", "2024-00",
                                  "'; drop table x; --"])
def test_parse_month_rejects(text):
    with pytest.raises(MonthError):
        parse_month(text)


def test_arithmetic_across_years():
    assert add_months(date(2024, 11, 1), 3) == date(2025, 2, 1)
    assert add_months(date(2024, 1, 1), -1) == date(2023, 12, 1)
    assert label_month(date(2024, 7, 1), 6) == date(2025, 1, 1)
    assert application_month(date(2025, 1, 1), 6) == date(2024, 7, 1)
    assert list(month_range(date(2023, 11, 1), date(2024, 2, 1)))[-1] == date(2024, 2, 1)
    assert len(list(month_range(date(2023, 1, 1), date(2025, 1, 1)))) == 25
    assert partition_key(date(2024, 3, 1)) == "2024-03-01"
    assert folder_label(date(2024, 3, 1)) == "2024-03"
