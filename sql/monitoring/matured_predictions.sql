-- The predictions of one application month whose labels are observed in the label month,
-- one row per loan: the material of monitoring.performance.
-- Inputs: `gold_predictions` (the application month, mob months before the label month) and
-- `gold_label_store` (the label month).
SELECT
    date_trunc('month', labels.snapshot_date)::DATE AS month,
    predictions.application_month,
    predictions.model_version,
    predictions.loan_id,
    predictions.score,
    predictions.grade,
    labels.label_def,
    labels.label
FROM gold_predictions AS predictions
JOIN gold_label_store AS labels USING (loan_id)
ORDER BY predictions.loan_id
