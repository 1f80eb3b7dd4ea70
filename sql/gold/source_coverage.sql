-- gold.source_coverage: for every application month and feature source, how many of the
-- month's applications the source covered, how current it was, and whether that is a feed
-- outage. One row per (application_month, source), also for a month without applications.
--   loans               the month's applications (loans of gold.feature_store)
--   loans_covered       applications with a snapshot of the source in its window: the
--                       application month (attributes, financials) or the clickstream lookback
--                       (the application month and the months before it), dated on or before
--                       the loan's start date: what the feature store could use
--   loans_current       applications with a snapshot in the application month itself
--   snapshot_months     clickstream months found per covered application (1 for the others)
--   source_as_of        the latest snapshot date the month's features used from this source
--   source_rows_in_month the source's rows dated in the application month, any customer: 0 is a
--                       feed that has not arrived; many with no coverage is a feed that stopped
--                       covering new applicants
--   previous_coverage   the coverage of the month before (NULL without applications)
--   trailing_coverage   the mean coverage of the $trailing_months months before (those with
--                       applications and not themselves below the floor): the source's level
--   status              error: coverage below the source's floor; warn: coverage (or current
--                       coverage) more than $max_relative_drop below its trailing level; ok
-- $trailing_months: how many months before the trailing level may use.
--   message             what a person reads in the check and the run summary
-- Inputs: `gold_feature_store` (the months and the $trailing_months before them),
-- `coverage_trailing` (month, upstream_month): each month's trailing months, from the partition
-- mapping; `source_windows` (source, window_first_offset): how far back each source looks;
-- `source_floors` (source, floor); `silver_attributes`, `silver_financials`,
-- `silver_clickstream` (the months). $months: the months to publish.
WITH per_loan AS (
    SELECT application_month, 'features_attributes' AS source, has_attributes AS covered,
           attributes_as_of AS as_of, has_attributes::INTEGER AS months_found
    FROM gold_feature_store
    UNION ALL
    SELECT application_month, 'features_financials', has_financials, financials_as_of,
           has_financials::INTEGER
    FROM gold_feature_store
    UNION ALL
    SELECT application_month, 'feature_clickstream', clickstream_months > 0, clickstream_as_of,
           clickstream_months
    FROM gold_feature_store
),
measured AS (
    SELECT
        application_month,
        source,
        count(*)::BIGINT AS loans,
        count_if(covered)::BIGINT AS loans_covered,
        count_if(covered AND date_trunc('month', as_of) = application_month)::BIGINT
            AS loans_current,
        avg(months_found) FILTER (WHERE covered) AS snapshot_months,
        max(as_of) AS source_as_of
    FROM per_loan
    GROUP BY ALL
),
grid AS (
    SELECT month AS application_month, source, floor, window_first_offset
    FROM unnest($months::DATE[]) AS months(month)
    CROSS JOIN source_floors
    JOIN source_windows USING (source)
),
source_rows AS (
    SELECT date_trunc('month', snapshot_date)::DATE AS application_month,
           'features_attributes' AS source, count(*) AS source_rows_in_month
    FROM silver_attributes GROUP BY ALL
    UNION ALL
    SELECT date_trunc('month', snapshot_date)::DATE, 'features_financials', count(*)
    FROM silver_financials GROUP BY ALL
    UNION ALL
    SELECT date_trunc('month', snapshot_date)::DATE, 'feature_clickstream', count(*)
    FROM silver_clickstream GROUP BY ALL
),
trailing_level AS (
    -- an earlier month below the floor was an outage, not the source's level
    SELECT
        pairs.month AS application_month,
        before.source,
        -- in month order: a floating-point mean depends on the order it adds in
        avg(before.loans_covered / before.loans ORDER BY before.application_month)
            FILTER (WHERE at_level) AS trailing_coverage,
        (count(*) FILTER (WHERE at_level))::INTEGER AS trailing_months,
        avg(before.loans_current / before.loans ORDER BY before.application_month)
            FILTER (WHERE at_level)
            AS trailing_current_coverage,
        count(*)::INTEGER AS earlier_months
    FROM coverage_trailing AS pairs
    JOIN (SELECT measured.*, loans_covered / loans >= floor AS at_level
          FROM measured JOIN source_floors USING (source) WHERE loans > 0) AS before
      ON before.application_month = pairs.upstream_month
    GROUP BY ALL
),
figures AS (
    SELECT
        grid.application_month,
        grid.source,
        coalesce(measured.loans, 0) AS loans,
        coalesce(measured.loans_covered, 0) AS loans_covered,
        CASE WHEN measured.loans > 0 THEN measured.loans_covered / measured.loans END
            AS coverage,
        coalesce(measured.loans_current, 0) AS loans_current,
        CASE WHEN measured.loans > 0 THEN measured.loans_current / measured.loans END
            AS current_coverage,
        (grid.application_month + to_months(grid.window_first_offset))::DATE AS window_first,
        grid.application_month AS window_last,
        measured.snapshot_months,
        measured.source_as_of,
        coalesce(source_rows.source_rows_in_month, 0)::BIGINT AS source_rows_in_month,
        previous.loans_covered / nullif(previous.loans, 0) AS previous_coverage,
        trailing_level.trailing_coverage,
        trailing_level.trailing_current_coverage,
        coalesce(trailing_level.trailing_months, 0) AS trailing_months,
        coalesce(trailing_level.earlier_months, 0) AS earlier_months,
        grid.floor
    FROM grid
    LEFT JOIN measured USING (application_month, source)
    LEFT JOIN source_rows USING (application_month, source)
    LEFT JOIN trailing_level USING (application_month, source)
    LEFT JOIN measured AS previous
      ON previous.source = grid.source
     AND previous.application_month = grid.application_month - INTERVAL 1 MONTH
),
judged AS (
    SELECT
        *,
        CASE
            WHEN loans = 0 THEN 'ok'
            WHEN coverage < floor THEN 'error'
            WHEN coverage < trailing_coverage * (1 - $max_relative_drop) THEN 'warn'
            WHEN current_coverage < trailing_current_coverage * (1 - $max_relative_drop)
            THEN 'warn'
            ELSE 'ok'
        END AS status,
        CASE WHEN window_first = window_last THEN strftime(window_first, '%Y-%m')
             ELSE strftime(window_first, '%Y-%m') || '..' || strftime(window_last, '%Y-%m')
        END AS window_label,
        CASE WHEN trailing_months > 0
             THEN format('; {:.1f}% on average in {} of the {} months before',
                         100 * trailing_coverage, trailing_months, $trailing_months)
             WHEN earlier_months > 0
             THEN format('; none of the {} months before reached the floor', earlier_months)
             ELSE '; no earlier month to compare' END
        || CASE WHEN previous_coverage IS NOT NULL
                THEN format(', {:.1f}% in {}', 100 * previous_coverage,
                            strftime(application_month - INTERVAL 1 MONTH, '%Y-%m'))
                ELSE '' END AS history,
        CASE WHEN source_rows_in_month = 0
             THEN format('; the source has no rows dated {}', strftime(application_month, '%Y-%m'))
             WHEN loans_covered = 0
             THEN format('; the source has {:,} rows dated {}, none for these applicants',
                         source_rows_in_month, strftime(application_month, '%Y-%m'))
             ELSE '' END AS feed
    FROM figures
)
SELECT
    application_month,
    source,
    loans,
    loans_covered,
    coverage,
    loans_current,
    current_coverage,
    window_first,
    window_last,
    snapshot_months,
    source_as_of,
    source_rows_in_month,
    previous_coverage,
    trailing_coverage,
    trailing_months,
    floor,
    status,
    CASE
        WHEN loans = 0
        THEN format('{}: no applications in {}', source, strftime(application_month, '%Y-%m'))
        WHEN status = 'warn' AND NOT coverage < trailing_coverage * (1 - $max_relative_drop)
        THEN format('{}: {:,} of {:,} applications in {} have a snapshot in {} itself (stale: '
                    'the latest used is {}; {:.1f}% on average in {} of the {} months before){}',
                    source, loans_current, loans, strftime(application_month, '%Y-%m'),
                    strftime(application_month, '%Y-%m'), coalesce(source_as_of::VARCHAR, 'none'),
                    100 * trailing_current_coverage, trailing_months, $trailing_months, feed)
        ELSE format('{}: {:,} of {:,} applications in {} have a snapshot in {} ({:.1f}%{}{}){}',
                    source, loans_covered, loans, strftime(application_month, '%Y-%m'),
                    window_label, 100 * coverage, history,
                    CASE status WHEN 'error' THEN format('; floor {:.0f}%', 100 * floor)
                                WHEN 'warn' THEN '; well below its usual level' ELSE '' END,
                    feed)
    END AS message
FROM judged
ORDER BY application_month, source
