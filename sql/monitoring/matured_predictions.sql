-- The predictions of one application month whose labels of the definition $label_def are
-- observed in the label month, one row per loan: the material of monitoring.performance (the
-- target) and monitoring.early_read_performance (the early read).
-- Inputs: `gold_predictions` (the application month, the definition's mob months before the
-- label month) and `gold_label_store` (the label month).
SELECT
    date_trunc('month', labels.snapshot_date)::DATE AS month,
    predictions.application_month,
    predictions.model_version,
    predictions.loan_id,
    predictions.score,
    predictions.grade,
    predictions.decision,
    labels.label,
    labels.label_def
FROM gold_predictions AS predictions
JOIN gold_label_store AS labels USING (loan_id)
WHERE labels.label_def = $label_def
ORDER BY predictions.loan_id
