-- silver.loan_daily: one typed row per loan and snapshot month, with the course's delinquency
-- fields derived per loan-month:
--   mob                  months on book = installment_num
--   installments_missed  ceil(overdue_amt / due_amt); 0 when nothing is overdue
--   first_missed_date    snapshot_date minus installments_missed months; NULL when none missed
--   dpd                  days from first_missed_date to snapshot_date when overdue_amt > 0, else 0
-- Ledger rows are strict: a missing key, an unreadable date, or an amount that is not a number or
-- out of range sends the row to quarantine rather than into the arithmetic as NULL.
-- Input: `raw_lms_loan_daily`.
WITH cleaned AS (
    SELECT
        _source_file, _row_number, _snapshot_month,
        nullif(trim(loan_id), '') AS loan_id,
        nullif(trim(Customer_ID), '') AS customer_id,
        loan_start_date AS loan_start_text,
        parse_source_date(loan_start_date) AS loan_start_date,
        parse_source_date(snapshot_date) AS snapshot_date,
        clean_number(tenure, 1, 1200, whole := true) AS int__tenure,
        clean_number(installment_num, 0, 1200, whole := true) AS int__installment_num,
        clean_number(loan_amt, 0, 1e12) AS num__loan_amt,
        clean_number(due_amt, 0, 1e12) AS num__due_amt,
        clean_number(paid_amt, 0, 1e12) AS num__paid_amt,
        clean_number(overdue_amt, 0, 1e12) AS num__overdue_amt,
        clean_number(balance, -1e12, 1e12) AS num__balance
    FROM raw_lms_loan_daily
),
typed AS (
    SELECT
        *,
        int__tenure.value::INTEGER AS tenure,
        int__installment_num.value::INTEGER AS installment_num,
        num__loan_amt.value AS loan_amt,
        num__due_amt.value AS due_amt,
        num__paid_amt.value AS paid_amt,
        num__overdue_amt.value AS overdue_amt,
        num__balance.value AS balance,
        CASE WHEN num__overdue_amt.value > 0
             THEN ceil(num__overdue_amt.value / nullif(num__due_amt.value, 0))::INTEGER
             ELSE 0 END AS installments_missed,
        number_problem(alias(COLUMNS('^(num|int)__.+$')), COLUMNS('^(num|int)__.+$'), true)
            AS 'problem__\0'
    FROM cleaned
),
derived AS (
    SELECT
        *,
        CASE WHEN loan_id IS NULL THEN 'loan_id is missing' END AS problem__loan_id,
        CASE WHEN customer_id IS NULL THEN 'Customer_ID is missing' END AS problem__customer_id,
        CASE WHEN loan_start_date IS NULL
             THEN format('loan_start_date is not a date: {}', loan_start_text) END
            AS problem__loan_start_date,
        CASE WHEN overdue_amt > 0 AND installments_missed IS NULL
             THEN 'overdue_amt > 0 with no due_amt' END AS problem__overdue_amt,
        CASE WHEN installments_missed > 0
             THEN (snapshot_date - to_months(installments_missed))::DATE END AS first_missed_date
    FROM typed
)
SELECT
    loan_id, customer_id, loan_start_date, tenure, installment_num,
    loan_amt, due_amt, paid_amt, overdue_amt, balance, snapshot_date,
    installment_num AS mob,
    installments_missed,
    first_missed_date,
    CASE WHEN overdue_amt > 0 THEN date_diff('day', first_missed_date, snapshot_date)
         ELSE 0 END AS dpd,
    COLUMNS('^(num|int)__.+$'),
    nullif(concat_ws('; ', *COLUMNS('^problem__')), '') AS _reject_reason,
    _source_file, _row_number, _snapshot_month
FROM derived
