-- gold.label_store: one row per loan and label definition, at the definition's months on book
-- (mob) in the observation month. label = 1 when the loan is `dpd` or more days past due then
-- (the course definition), else 0; label_def names the definition (e.g. 30dpd_6mob, the
-- target, and 30dpd_3mob, the early read). The loan's application month is the month of its
-- start date, mob months before the observation month.
-- Inputs: `silver_loan_daily`, the observation months, and `label_definitions` (label_def, dpd,
-- mob): the definitions of config/vintage.yaml `label:`.
SELECT
    loan_id,
    customer_id,
    (CASE WHEN l.dpd >= d.dpd THEN 1 ELSE 0 END)::TINYINT AS label,
    d.label_def,
    snapshot_date,
    date_trunc('month', loan_start_date)::DATE AS application_month
FROM silver_loan_daily AS l
JOIN label_definitions AS d ON l.mob = d.mob
