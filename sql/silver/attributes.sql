-- silver.attributes: one typed, cleaned row per customer application.
--   Age: `28_` is 28; outside 18-100 (the file's -500, 8678) is NULL
--   Occupation: the placeholder `_______` is NULL
--   Name and SSN are personal data and stop here; ssn_valid says whether the SSN was well formed
-- Input: `raw_features_attributes`.
WITH cleaned AS (
    SELECT
        _source_file, _row_number, _snapshot_month,
        nullif(trim(Customer_ID), '') AS customer_id,
        parse_source_date(snapshot_date) AS snapshot_date,
        clean_number(Age, 18, 100, whole := true) AS int__Age,
        clean_category(Occupation, []) AS cat__Occupation,
        coalesce(regexp_full_match(trim(SSN), '[0-9]{3}-[0-9]{2}-[0-9]{4}'), false) AS ssn_valid
    FROM raw_features_attributes
),
checked AS (
    SELECT
        *,
        CASE WHEN customer_id IS NULL THEN 'Customer_ID is missing' END AS problem__customer_id,
        number_problem(alias(COLUMNS('^int__.+$')), COLUMNS('^int__.+$'), false) AS 'problem__\0'
    FROM cleaned
)
SELECT
    customer_id,
    snapshot_date,
    int__Age.value::INTEGER AS age,
    cat__Occupation.value AS occupation,
    ssn_valid,
    COLUMNS('^(num|int|cat)__.+$'),
    nullif(concat_ws('; ', *COLUMNS('^problem__')), '') AS _reject_reason,
    _source_file, _row_number, _snapshot_month
FROM checked
