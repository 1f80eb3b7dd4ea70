-- analytics.roll_rate: per snapshot month, the loans observed in both that month and the month
-- before, counted by their delinquency bucket then (from_bucket) and now (to_bucket):
--   loans  how many moved from from_bucket to to_bucket
--   rate   loans / the loans that were in from_bucket the month before (a row of the matrix
--          sums to 1)
-- Buckets: delinquency_bucket (closed, current, 1-29, 30-59, 60-89, 90+). A loan's first month
-- (no month before) and a loan missing from this month are not counted.
-- Inputs: `silver_loan_daily` (the month and the month before) and `previous_month` (month,
-- upstream_month): each month's month before, from the partition mapping.
WITH buckets AS (
    SELECT
        loan_id,
        date_trunc('month', snapshot_date)::DATE AS snapshot_month,
        delinquency_bucket(dpd, balance) AS bucket
    FROM silver_loan_daily
),
moves AS (
    SELECT w.month, before.bucket AS from_bucket, now.bucket AS to_bucket
    FROM previous_month AS w
    JOIN buckets AS now ON now.snapshot_month = w.month
    JOIN buckets AS before
      ON before.snapshot_month = w.upstream_month AND before.loan_id = now.loan_id
)
SELECT
    month,
    from_bucket,
    to_bucket,
    count(*) AS loans,
    count(*) / sum(count(*)) OVER (PARTITION BY month, from_bucket) AS rate
FROM moves
GROUP BY month, from_bucket, to_bucket
ORDER BY month, from_bucket, to_bucket
