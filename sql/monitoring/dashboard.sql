-- The month's monitoring figures, one row per model version and metric: what the monitoring
-- dashboard's evidently snapshots hold (ml_assets/assets/dashboard.py). Every value is a column
-- of a published table, named in `source`; the only figures derived here are the shares of the
-- month's decisions in gold.predictions. NULLs (a metric not measurable) are left out.
-- Inputs: `all_stability` (filtered to $months), `monitoring_performance`,
-- `monitoring_early_read`, `monitoring_calibration`, `gold_predictions`, `ml_cutoff_strategy`.
WITH performance AS (
    SELECT 'monitoring.performance' AS source_table, * FROM monitoring_performance
    UNION ALL BY NAME
    SELECT 'monitoring.early_read_performance' AS source_table, * FROM monitoring_early_read
),
figures AS (
    SELECT month, model_version,
           CASE WHEN variable = 'score' THEN 'psi:score' ELSE 'csi:' || variable END AS metric,
           psi AS value, 'monitoring.stability.psi' AS source
    FROM all_stability
    WHERE list_contains($months, month)
    UNION ALL
    SELECT month, model_version, 'missing:' || variable, actual_missing_share,
           'monitoring.stability.actual_missing_share'
    FROM all_stability
    WHERE list_contains($months, month) AND variable <> 'score'
    UNION ALL
    SELECT month, model_version, name || ':' || label_def, value, source_table || '.' || name
    FROM (UNPIVOT (SELECT month, model_version, label_def, source_table, auc, gini, ks,
                          default_rate, approved_default_rate FROM performance)
          ON auc, gini, ks, default_rate, approved_default_rate INTO NAME name VALUE value)
    UNION ALL
    SELECT month, model_version, name || ':' || label_def || ':' || grade, value,
           'monitoring.calibration.' || name
    FROM (UNPIVOT (SELECT month, model_version, label_def, grade, predicted_pd, observed_rate
                   FROM monitoring_calibration)
          ON predicted_pd, observed_rate INTO NAME name VALUE value)
    UNION ALL
    SELECT month, model_version, 'hl_p_value:' || label_def, any_value(hl_p_value),
           'monitoring.calibration.hl_p_value'
    FROM monitoring_calibration
    WHERE hl_p_value IS NOT NULL
    GROUP BY ALL
    UNION ALL
    SELECT application_month, model_version, name, value, 'gold.predictions.decision'
    FROM (UNPIVOT (SELECT application_month, model_version,
                          avg((decision = 'approve')::DOUBLE) AS approval_rate,
                          avg((decision = 'decline')::DOUBLE) AS decline_rate,
                          avg((decision = 'refer')::DOUBLE) AS refer_rate
                   FROM gold_predictions GROUP BY ALL)
          ON approval_rate, decline_rate, refer_rate INTO NAME name VALUE value)
    UNION ALL
    SELECT month, model_version, name, value, 'ml.cutoff_strategy.' || name
    FROM (UNPIVOT (SELECT DISTINCT month, model_version, decision_cutoff,
                          decision_approval_rate, decision_bad_rate
                   FROM ml_cutoff_strategy)
          ON decision_cutoff, decision_approval_rate, decision_bad_rate
          INTO NAME name VALUE value)
)
SELECT month::DATE AS month, model_version, model_line(model_version) AS model_line, metric,
       value::DOUBLE AS value, source
FROM figures
WHERE value IS NOT NULL AND isfinite(value::DOUBLE)
ORDER BY month, model_line, metric
