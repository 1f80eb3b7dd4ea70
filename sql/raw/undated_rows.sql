-- Rows of a staged source whose snapshot_date is missing or not a date the platform reads:
-- they belong to no month, so ingestion stops and names them.
SELECT count(*) AS rows, min(_row_number) AS first_row, any_value(snapshot_date) AS example
FROM source
WHERE parse_source_date(snapshot_date) IS NULL
