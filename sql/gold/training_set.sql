-- gold.training_set, per training month T: the labels of the target definition ($label_def)
-- observed in T's window (the months before T, never T or later), each joined to its loan's
-- features in the feature store at its application month.
--   split `oot`: the window's last labelled month, held out of time;
--   split `test` / `train`: the other loans, by a hash of the loan id and $seed (md5, stable
--   across DuckDB versions), so a loan keeps its split whichever window it is in.
-- labelled_months: how many of T's window months have labels (the asset trains nothing for a
-- month with too few).
-- Inputs: `gold_label_store` (the windows' observation months), `gold_feature_store` (their
-- application months), and `training_window` (month, upstream_month): each training month's
-- label months, from the partition mapping.
WITH windowed AS (
    SELECT
        window_months.month AS training_month,
        labels.*,
        date_trunc('month', labels.snapshot_date)::DATE AS observation_month
    FROM training_window AS window_months
    JOIN gold_label_store AS labels
      ON date_trunc('month', labels.snapshot_date) = window_months.upstream_month
     AND labels.label_def = $label_def
),
coverage AS (
    SELECT
        training_month,
        count(DISTINCT observation_month) AS labelled_months,
        max(observation_month) AS oot_month
    FROM windowed
    GROUP BY training_month
)
SELECT
    w.training_month,
    w.loan_id,
    w.customer_id,
    w.application_month,
    w.observation_month,
    w.label,
    w.label_def,
    c.labelled_months,
    CASE WHEN w.observation_month = c.oot_month THEN 'oot'
         WHEN md5_number(w.loan_id || ':' || $seed::VARCHAR) % 1000000
              < $test_fraction * 1000000 THEN 'test'
         ELSE 'train' END AS split,
    features.* EXCLUDE (loan_id, customer_id, application_month)
FROM windowed AS w
JOIN coverage AS c USING (training_month)
JOIN gold_feature_store AS features
  ON features.loan_id = w.loan_id AND features.application_month = w.application_month
