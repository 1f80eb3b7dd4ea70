-- gold.feature_store: exactly one row per loan started in the application month, with what was
-- known at application and nothing later:
--   the customer's attributes and financials: the latest snapshot of the application month
--     dated on or before the loan's start date (personal data is dropped upstream);
--   clickstream: for each fe_k, the latest value (fe_k_latest) and the mean (fe_k_mean) over the
--     snapshots dated on or before the loan's start date, within the application month's
--     lookback window (`clickstream_window`: the application month and the months before it,
--     from the partition mapping); later snapshots are never used;
--   attributes_as_of, financials_as_of, clickstream_as_of: each source's own snapshot date used
--     (the latest one for clickstream); NULL when the source had none for the loan. A source
--     that lags shows here, not hidden behind another source's date;
--   features_as_of: the latest of them, never after the application month;
--   has_attributes, has_financials: whether the application snapshots were found.
-- Inputs: `silver_loan_daily`, `silver_attributes`, `silver_financials` (application months),
-- `silver_clickstream` (each application month's lookback window) and `clickstream_window`
-- (month, upstream_month): the window's months for each application month.
WITH loans AS (
    SELECT DISTINCT ON (loan_id)
        loan_id,
        customer_id,
        loan_start_date,
        date_trunc('month', loan_start_date)::DATE AS application_month
    FROM silver_loan_daily
    WHERE date_trunc('month', loan_start_date) = date_trunc('month', snapshot_date)
    ORDER BY loan_id, snapshot_date
),
attributes AS (
    SELECT DISTINCT ON (loans.loan_id) loans.loan_id, attributes.*
    FROM loans
    JOIN silver_attributes AS attributes
      ON attributes.customer_id = loans.customer_id
     AND attributes.snapshot_date BETWEEN loans.application_month AND loans.loan_start_date
    ORDER BY loans.loan_id, attributes.snapshot_date DESC
),
financials AS (
    SELECT DISTINCT ON (loans.loan_id) loans.loan_id, financials.*
    FROM loans
    JOIN silver_financials AS financials
      ON financials.customer_id = loans.customer_id
     AND financials.snapshot_date BETWEEN loans.application_month AND loans.loan_start_date
    ORDER BY loans.loan_id, financials.snapshot_date DESC
),
clickstream AS (
    SELECT
        loans.loan_id,
        count(*)::INTEGER AS clickstream_months,
        max(click.snapshot_date) AS clickstream_as_of,
        arg_max(COLUMNS('^fe_[0-9]+$'), click.snapshot_date) AS '\0_latest',
        -- in date order: a floating-point sum depends on its order (and the scan's order
        -- on the threads), the published mean must not
        avg(COLUMNS('^fe_[0-9]+$') ORDER BY click.snapshot_date) AS '\0_mean'
    FROM loans
    JOIN clickstream_window AS lookback ON lookback.month = loans.application_month
    JOIN silver_clickstream AS click
      ON click.customer_id = loans.customer_id
     AND date_trunc('month', click.snapshot_date) = lookback.upstream_month
     AND click.snapshot_date <= loans.loan_start_date
    GROUP BY loans.loan_id
)
SELECT
    loans.loan_id,
    loans.customer_id,
    loans.application_month,
    greatest(attributes.snapshot_date, financials.snapshot_date, clickstream.clickstream_as_of)
        AS features_as_of,
    attributes.snapshot_date AS attributes_as_of,
    financials.snapshot_date AS financials_as_of,
    clickstream.clickstream_as_of,
    attributes.loan_id IS NOT NULL AS has_attributes,
    financials.loan_id IS NOT NULL AS has_financials,
    attributes.age,
    attributes.occupation,
    financials.* EXCLUDE (loan_id, customer_id, snapshot_date),
    coalesce(clickstream.clickstream_months, 0) AS clickstream_months,
    clickstream.* EXCLUDE (loan_id, clickstream_months, clickstream_as_of)
FROM loans
LEFT JOIN attributes ON attributes.loan_id = loans.loan_id
LEFT JOIN financials ON financials.loan_id = loans.loan_id
LEFT JOIN clickstream
  ON clickstream.loan_id = loans.loan_id
