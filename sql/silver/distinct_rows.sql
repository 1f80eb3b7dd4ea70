-- The raw rows of the months being cleaned with exact duplicates dropped: rows whose every
-- source column is equal to an earlier row's (lineage columns aside) count once, the first kept.
-- Input: `raw_rows`, the raw table's months.
WITH fingerprinted AS (
    SELECT
        *,
        md5(list_value(*COLUMNS(lambda c: NOT starts_with(c, '_')))::VARCHAR) AS _fingerprint
    FROM raw_rows
)
SELECT * EXCLUDE (_fingerprint)
FROM fingerprinted
QUALIFY row_number() OVER (PARTITION BY _snapshot_month, _fingerprint ORDER BY _row_number) = 1
