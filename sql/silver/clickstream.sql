-- silver.clickstream: one row per customer and snapshot month, fe_1 .. fe_n as integers.
-- Negative values are real data (about 15% of them) and are kept. A value that is not a whole
-- number sends the row to quarantine.
-- Input: `raw_feature_clickstream`.
WITH cleaned AS (
    SELECT
        _source_file, _row_number, _snapshot_month,
        nullif(trim(Customer_ID), '') AS customer_id,
        parse_source_date(snapshot_date) AS snapshot_date,
        clean_number(COLUMNS('^(fe_[0-9]+)$'), -1e9, 1e9, whole := true) AS 'int__\1'
    FROM raw_feature_clickstream
),
checked AS (
    SELECT
        *,
        CASE WHEN customer_id IS NULL THEN 'Customer_ID is missing' END AS problem__customer_id,
        number_problem(alias(COLUMNS('^int__.+$')), COLUMNS('^int__.+$'), true) AS 'problem__\0'
    FROM cleaned
)
SELECT
    customer_id,
    snapshot_date,
    struct_extract(COLUMNS('^int__(fe_[0-9]+)$'), 'value')::INTEGER AS '\1',
    COLUMNS('^int__.+$'),
    nullif(concat_ws('; ', *COLUMNS('^problem__')), '') AS _reject_reason,
    _source_file, _row_number, _snapshot_month
FROM checked
