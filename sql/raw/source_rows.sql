-- raw.<source>: the rows of one source file whose snapshot month is being materialised, verbatim
-- as text, with lineage: the file, the ingestion time and the data row number in the file.
-- The four raw tables share this transform: raw is the file, unchanged.
-- Input: `source`, the staged text copy of the file.
SELECT
    * EXCLUDE (_row_number),
    $source_file AS _source_file,
    $ingested_at::TIMESTAMP AS _ingested_at,
    _row_number,
    date_trunc('month', parse_source_date(snapshot_date))::DATE AS _snapshot_month
FROM source
WHERE date_trunc('month', parse_source_date(snapshot_date)) BETWEEN $first_month AND $last_month
