-- gold.label_store: one row per loan at months on book $label_mob in the observation month.
-- label = 1 when the loan is $label_dpd or more days past due then (the course definition),
-- else 0; label_def names the definition (e.g. 30dpd_6mob). The loan's application month is
-- the month of its start date, $label_mob months before the observation month.
-- Input: `silver_loan_daily`, the observation months.
SELECT
    loan_id,
    customer_id,
    (CASE WHEN dpd >= $label_dpd THEN 1 ELSE 0 END)::TINYINT AS label,
    $label_def AS label_def,
    snapshot_date,
    date_trunc('month', loan_start_date)::DATE AS application_month
FROM silver_loan_daily
WHERE mob = $label_mob
