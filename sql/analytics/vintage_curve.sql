-- analytics.vintage_curve: per snapshot month, one row per origination cohort (cohort_month =
-- the month of loan_start_date) at the months on book (mob, silver's) its loans have then:
--   loans                    the cohort's loans observed at that mob (a row in the month)
--   ever_30dpd_rate, ever_60dpd_rate, ever_90dpd_rate
--                            share of those loans whose dpd reached 30 / 60 / 90 in any month
--                            up to and including this one
--   current_delinquent_rate  share with dpd > 0 now and not closed
--   closed_rate              share closed now (balance <= 0, delinquency_bucket)
-- A month follows the cohorts that started within its history window (analytics.vintage_max_mob
-- months): the window holds their whole history, so the ever-rates are exact.
-- Inputs: `silver_loan_daily` (the window's months) and `vintage_window` (month,
-- upstream_month): each month's history months, from the partition mapping.
WITH history AS (
    SELECT
        w.month,
        l.loan_id,
        date_trunc('month', l.loan_start_date)::DATE AS cohort_month,
        date_trunc('month', l.snapshot_date)::DATE AS snapshot_month,
        l.mob,
        l.dpd,
        delinquency_bucket(l.dpd, l.balance) AS bucket
    FROM vintage_window AS w
    JOIN silver_loan_daily AS l ON date_trunc('month', l.snapshot_date) = w.upstream_month
),
followed AS (  -- cohorts that started within the month's window
    SELECT h.*
    FROM history AS h
    SEMI JOIN vintage_window AS w ON w.month = h.month AND w.upstream_month = h.cohort_month
),
loans AS (
    SELECT
        month,
        loan_id,
        cohort_month,
        max(dpd) AS worst_dpd,
        max(mob) FILTER (WHERE snapshot_month = month) AS mob,
        max(bucket) FILTER (WHERE snapshot_month = month) AS bucket
    FROM followed
    GROUP BY month, loan_id, cohort_month
    HAVING count(*) FILTER (WHERE snapshot_month = month) > 0
)
SELECT
    month,
    cohort_month,
    mob,
    count(*) AS loans,
    avg((worst_dpd >= 30)::INTEGER) AS ever_30dpd_rate,
    avg((worst_dpd >= 60)::INTEGER) AS ever_60dpd_rate,
    avg((worst_dpd >= 90)::INTEGER) AS ever_90dpd_rate,
    avg((bucket NOT IN ('current', 'closed'))::INTEGER) AS current_delinquent_rate,
    avg((bucket = 'closed')::INTEGER) AS closed_rate
FROM loans
GROUP BY month, cohort_month, mob
ORDER BY month, cohort_month, mob
