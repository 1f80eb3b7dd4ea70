-- Parsing rules shared by every transform; each says which dirty input it is for.
-- Loaded into every DuckDB connection the platform opens (resources/warehouse.py).

-- A source date, in one of the formats that read one way only, chosen by the text's shape:
-- ISO `2023-01-31`, also as a timestamp (`2023-01-31 00:00:00`, `2023-01-31T00:00:00.000Z`,
-- `2023-01-31T09:30+01:00`, `2023-01-31 00:00:00 UTC`: Spark, pandas, databases), US
-- `1/31/2023`, or US with a two-digit year as spreadsheets save it, `1/31/23` (00-68 are
-- 2000-2068, 69-99 are 1969-1999), either with a time as spreadsheets add it (`1/31/2023 0:00`,
-- `1/31/2023 12:00:00 AM`). A timestamp gives the date it names, in its own offset: no
-- conversion to UTC, so `2023-03-01T00:00:00+01:00` is 2023-03-01 (as written), as a Parquet
-- timestamp gives the date in its own zone. Anything else, day-first dates such as `31/1/2023`
-- among them, is NULL: ingestion then stops and names it.
-- The optional time of day after a US date, as spreadsheets write it.
CREATE OR REPLACE MACRO us_time() AS
    '( ([01]?[0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?( ?[AaPp][Mm])?)?';
CREATE OR REPLACE MACRO parse_source_date(text) AS (
    CASE
        -- the common case first, on its own: the full patterns below cost 50% more
        WHEN regexp_full_match(text, '[0-9]{4}-[0-9]{2}-[0-9]{2}') THEN TRY_CAST(text AS DATE)
        WHEN regexp_full_match(trim(text), '[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}'
                 || '([Tt ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.,][0-9]+)?)?'
                 || '( ?(Z|z|UTC)|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?)?')
        THEN try_strptime(regexp_extract(trim(text), '^[0-9]+-[0-9]+-[0-9]+'), '%Y-%m-%d')
        WHEN regexp_full_match(trim(text), '[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}' || us_time())
        THEN try_strptime(regexp_extract(trim(text), '^[0-9]+/[0-9]+/[0-9]+'), '%m/%d/%Y')
        WHEN regexp_full_match(trim(text), '[0-9]{1,2}/[0-9]{1,2}/[0-9]{2}' || us_time())
        THEN try_strptime(regexp_extract(trim(text), '^[0-9]+/[0-9]+/[0-9]+'), '%m/%d/%y')
    END)::DATE;

-- A number as the course files write it: `52312.68_` and `40_` carry a stray trailing
-- underscore and mean 52312.68 and 40. Anything else that is not a finite number is NULL,
-- among them the placeholders `_` and `__10000__`.
-- (A clean number takes the cast alone: the regular expression runs only on the rare rest.)
CREATE OR REPLACE MACRO parse_number(text) AS (
    CASE WHEN isfinite(TRY_CAST(text AS DOUBLE)) THEN TRY_CAST(text AS DOUBLE)
         WHEN isfinite(TRY_CAST(regexp_replace(trim(text), '_+$', '') AS DOUBLE))
         THEN TRY_CAST(regexp_replace(trim(text), '_+$', '') AS DOUBLE) END);

-- The stray trailing underscore of the course files on an otherwise good number.
CREATE OR REPLACE MACRO has_trailing_underscore(text) AS
    coalesce(regexp_full_match(trim(text), '[-+]?[0-9]+(\.[0-9]*)?_+'), false);

-- A placeholder standing for "unknown": underscores alone (`_`, `_______`) or a number
-- wrapped in underscores (the sentinel `__10000__`).
CREATE OR REPLACE MACRO is_placeholder(text) AS
    coalesce(regexp_full_match(trim(text), '_+|_+[-+]?[0-9.]+_+'), false);

-- Text in a numeric column that is neither a number (`number`: its parse_number) nor a known
-- placeholder.
CREATE OR REPLACE MACRO is_unknown_text(text, number) AS
    coalesce(trim(text) <> '' AND number IS NULL AND NOT is_placeholder(text), false);

-- A numeric source column, cleaned, with what each rule did to it. `value` is the number if it
-- lies in [low, high] (and is integral when `whole`), else NULL. The transforms name these
-- structs `num__<column>` (`int__<column>` for whole numbers); the silver asset counts every
-- boolean field of them as a cleaning rule.
-- The text is parsed once, bound to `n` by a lambda over a one-element list: a macro argument
-- is copied wherever it is used, and every copy is planned and run (eight parses before); on
-- the scoring service's few rows per request the cleaning runs three times faster.
CREATE OR REPLACE MACRO clean_number(text, low, high, whole := false) AS
    list_transform([parse_number(text)], lambda n: {
        'text': text,
        'value': CASE WHEN n BETWEEN low AND high AND (NOT whole OR n = round(n)) THEN n END,
        'trailing_underscore': has_trailing_underscore(text),
        'placeholder': is_placeholder(text),
        'out_of_range': coalesce(NOT n BETWEEN low AND high, false),
        'not_whole': coalesce(whole AND n <> round(n), false),
        'unknown_text': is_unknown_text(text, n)
    })[1];

-- Why a row cannot be kept because of one cleaned number (NULL if it can). Text that is not a
-- number always rejects the row; with `strict`, so does a value out of range (ledger amounts,
-- where a NULL would silently change the delinquency arithmetic). `struct_name` is the
-- cleaned struct's column name, `num__Annual_Income`, passed as alias(COLUMNS(...)).
CREATE OR REPLACE MACRO number_problem(struct_name, cleaned, strict) AS
    CASE WHEN cleaned.unknown_text
         THEN format('{} is not a number: {}', regexp_replace(struct_name, '^[a-z]+__', ''),
                     cleaned.text)
         WHEN strict AND (cleaned.out_of_range OR cleaned.not_whole)
         THEN format('{} out of range: {}', regexp_replace(struct_name, '^[a-z]+__', ''),
                     cleaned.text) END;

-- A categorical source column: a value outside `allowed` (placeholders such as `_` or
-- `!@9#%8` among them) becomes NULL. An empty `allowed` list keeps any value but placeholders.
-- The transforms name these structs `cat__<column>`.
CREATE OR REPLACE MACRO clean_category(text, allowed) AS {
    'value': CASE WHEN trim(text) = '' OR is_placeholder(text) THEN NULL
                  WHEN len(allowed) = 0 OR list_contains(allowed, trim(text)) THEN trim(text) END,
    'not_allowed': coalesce(trim(text) <> '' AND (is_placeholder(text)
                   OR (len(allowed) > 0 AND NOT list_contains(allowed, trim(text)))), false)
};

-- The delinquency bucket of a loan-month (silver.loan_daily's dpd and balance), in the order
-- risk teams read a roll-rate matrix: closed (nothing left to pay: balance <= 0), current
-- (0 dpd), 1-29, 30-59, 60-89, 90+. Used by the vintage curve and the roll rates alike.
CREATE OR REPLACE MACRO delinquency_bucket(dpd, balance) AS
    CASE WHEN balance <= 0 THEN 'closed'
         WHEN dpd <= 0 THEN 'current'
         WHEN dpd < 30 THEN '1-29'
         WHEN dpd < 60 THEN '30-59'
         WHEN dpd < 90 THEN '60-89'
         ELSE '90+' END;

-- The model line of a model version: the model's name in config/models.yaml, which a version
-- spells as `<name>-YYYY-MM` (its trained month; ml_assets/assets/models.py names them).
CREATE OR REPLACE MACRO model_line(model_version) AS
    regexp_replace(model_version, '-[0-9]{4}-[0-9]{2}$', '');
