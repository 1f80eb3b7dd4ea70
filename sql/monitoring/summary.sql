-- monitoring.summary: one row per month with the score's stability, the features' drift (and
-- how many are in a data outage, missing far more often than in the reference), the
-- performance of the vintage whose labels matured in the month, and the recommendation.
-- Inputs: `all_stability`, `all_performance`, `all_drift`, `all_recommendation` (every
-- published month up to the last month being materialised).
WITH months AS (
    SELECT month FROM all_stability
    UNION SELECT month FROM all_performance
    UNION SELECT month FROM all_recommendation
),
score AS (
    SELECT month, model_version, psi AS score_psi, band AS score_band
    FROM all_stability WHERE variable = 'score'
),
features AS (
    SELECT
        month,
        count(*) FILTER (WHERE band = 'watch') AS features_watch,
        count(*) FILTER (WHERE band = 'act') AS features_act,
        count(*) FILTER (WHERE band = 'outage') AS features_outage,
        arg_max(variable, psi) FILTER (WHERE band <> 'outage') AS top_feature,
        max(psi) FILTER (WHERE band <> 'outage') AS top_feature_csi
    FROM all_stability
    WHERE variable <> 'score'
    GROUP BY month
),
drift AS (
    SELECT month, count(*) FILTER (WHERE drifted) AS columns_drifted,
           count(drifted) AS columns_tested
    FROM all_drift
    GROUP BY month
)
SELECT
    months.month,
    coalesce(score.model_version, recommendation.model_version) AS model_version,
    score.score_psi,
    score.score_band,
    features.features_watch,
    features.features_act,
    features.features_outage,
    features.top_feature,
    features.top_feature_csi,
    drift.columns_drifted,
    drift.columns_tested,
    performance.application_month AS matured_vintage,
    performance.model_version AS matured_model_version,
    performance.n AS matured_loans,
    performance.default_rate,
    performance.mean_score AS predicted_rate,
    performance.auc,
    performance.gini,
    performance.ks,
    recommendation.recommendation,
    recommendation.reasons
FROM months
LEFT JOIN score USING (month)
LEFT JOIN features USING (month)
LEFT JOIN drift USING (month)
LEFT JOIN all_performance AS performance USING (month)
LEFT JOIN all_recommendation AS recommendation USING (month)
