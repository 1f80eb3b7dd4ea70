-- A digest of each month's rows of a staged source file (row order aside): two versions of the
-- file hold the same rows for a month exactly when the digests are equal. The source-files
-- sensor compares them to request only the months that changed.
-- Input: `source`, a staged source file.
SELECT
    date_trunc('month', parse_source_date(snapshot_date))::DATE AS month,
    count(*)::VARCHAR || ':'
        || sum(md5_number_lower(list_value(*COLUMNS(lambda c: c <> '_row_number'))::VARCHAR))
           ::VARCHAR AS digest
FROM source
WHERE parse_source_date(snapshot_date) IS NOT NULL
GROUP BY ALL
