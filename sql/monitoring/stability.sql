-- monitoring.stability: for one prediction month, the population stability index of the score
-- (PSI) and of every model feature (CSI) against the model's reference, its out-of-time set.
-- The binning is fixed by the reference, so anyone can recompute it:
--   numeric: the edges are the reference's deciles (quantile_cont at 0.1 .. 0.9, duplicate edges
--     dropped); bins (-inf, e1], (e1, e2], ..., (ek, +inf); NULL values form one more bin
--   categorical: one bin per category seen on either side, plus one for NULL
--   each side's proportions are floored at $floor (1e-4), with no renormalisation
--   PSI = sum over bins of (actual - expected) * ln(actual / expected)
--   reference_missing_share, actual_missing_share: each side's share of NULL values (the NULL
--     bin, before flooring), reported on their own so that missing data is not read as drift
--   band: `outage` when the actual missing share exceeds the reference's by $outage or more, or
--     the variable is in $outage_variables (the features of a source below its coverage floor
--     this month, gold.source_coverage: e.g. a count that drops to 0): a feed that stopped,
--     not a population that moved; else PSI < $watch stable, < $act watch, else act
-- Inputs: `reference_rows` and `actual_rows`, one row per loan with the variables as columns;
-- $numeric and $categorical name the variables to compare (`_none` is a placeholder column that
-- keeps an empty list of variables valid SQL).
WITH reference_numeric AS (
    FROM (SELECT CAST(COLUMNS(lambda c: c = '_none' OR list_contains($numeric, c)) AS DOUBLE)
          FROM (SELECT NULL AS _none, * FROM reference_rows))
    UNPIVOT INCLUDE NULLS (value FOR variable IN (COLUMNS(*)))
),
actual_numeric AS (
    FROM (SELECT CAST(COLUMNS(lambda c: c = '_none' OR list_contains($numeric, c)) AS DOUBLE)
          FROM (SELECT NULL AS _none, * FROM actual_rows))
    UNPIVOT INCLUDE NULLS (value FOR variable IN (COLUMNS(*)))
),
reference_categorical AS (
    FROM (SELECT CAST(COLUMNS(lambda c: c = '_none' OR list_contains($categorical, c)) AS VARCHAR)
          FROM (SELECT NULL AS _none, * FROM reference_rows))
    UNPIVOT INCLUDE NULLS (value FOR variable IN (COLUMNS(*)))
),
actual_categorical AS (
    FROM (SELECT CAST(COLUMNS(lambda c: c = '_none' OR list_contains($categorical, c)) AS VARCHAR)
          FROM (SELECT NULL AS _none, * FROM actual_rows))
    UNPIVOT INCLUDE NULLS (value FOR variable IN (COLUMNS(*)))
),
edges AS (
    SELECT
        variable,
        list_sort(list_distinct(
            quantile_cont(value, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]))) AS edges
    FROM reference_numeric
    WHERE variable <> '_none' AND value IS NOT NULL
    GROUP BY variable
),
binned AS (
    SELECT side, values.variable, 'numeric' AS kind,
           CASE WHEN values.value IS NULL THEN 'NULL'
                ELSE coalesce(len(list_filter(edges.edges, lambda edge: edge < values.value)), 0)
                     ::VARCHAR END AS bin
    FROM (SELECT 'expected' AS side, * FROM reference_numeric
          UNION ALL SELECT 'actual', * FROM actual_numeric) AS values
    LEFT JOIN edges USING (variable)
    WHERE values.variable <> '_none'
    UNION ALL
    SELECT side, variable, 'categorical', coalesce('=' || value, 'NULL')
    FROM (SELECT 'expected' AS side, * FROM reference_categorical
          UNION ALL SELECT 'actual', * FROM actual_categorical)
    WHERE variable <> '_none'
),
counts AS (
    SELECT side, variable, kind, bin, count(*) AS n FROM binned GROUP BY ALL
),
totals AS (
    SELECT side, variable, sum(n) AS total FROM counts GROUP BY ALL
),
shares AS (
    SELECT
        bins.variable, bins.kind, bins.bin,
        greatest(coalesce(expected.n, 0) / expected_total.total, $floor) AS expected,
        greatest(coalesce(actual.n, 0) / actual_total.total, $floor) AS actual,
        expected_total.total AS reference_n,
        actual_total.total AS actual_n,
        coalesce(expected.n, 0) / expected_total.total AS expected_raw,
        coalesce(actual.n, 0) / actual_total.total AS actual_raw
    FROM (SELECT DISTINCT variable, kind, bin FROM counts) AS bins
    JOIN totals AS expected_total
      ON expected_total.side = 'expected' AND expected_total.variable = bins.variable
    JOIN totals AS actual_total
      ON actual_total.side = 'actual' AND actual_total.variable = bins.variable
    LEFT JOIN counts AS expected
      ON expected.side = 'expected' AND expected.variable = bins.variable
     AND expected.bin = bins.bin
    LEFT JOIN counts AS actual
      ON actual.side = 'actual' AND actual.variable = bins.variable AND actual.bin = bins.bin
),
psi AS (
    SELECT
        variable,
        any_value(kind) AS kind,
        -- in bin order: a floating-point sum depends on the order it adds in
        sum((actual - expected) * ln(actual / expected) ORDER BY bin) AS psi,
        count(*)::INTEGER AS bins,
        any_value(reference_n)::BIGINT AS reference_n,
        any_value(actual_n)::BIGINT AS actual_n,
        coalesce(sum(expected_raw) FILTER (WHERE bin = 'NULL'), 0) AS reference_missing_share,
        coalesce(sum(actual_raw) FILTER (WHERE bin = 'NULL'), 0) AS actual_missing_share
    FROM shares
    GROUP BY variable
)
SELECT
    $month::DATE AS month,
    $model_version AS model_version,
    psi.variable,
    psi.kind,
    psi.psi,
    CASE WHEN psi.actual_missing_share - psi.reference_missing_share >= $outage
              OR list_contains($outage_variables, psi.variable) THEN 'outage'
         WHEN psi.psi < $watch THEN 'stable' WHEN psi.psi < $act THEN 'watch' ELSE 'act' END
        AS band,
    psi.bins,
    edges.edges AS bin_edges,
    psi.reference_n,
    psi.actual_n,
    psi.reference_missing_share,
    psi.actual_missing_share
FROM psi
LEFT JOIN edges USING (variable)
