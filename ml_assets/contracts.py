"""Data contracts of the raw sources (`config/contracts.yaml`) and how a month departs from one.

The same evaluation serves the raw assets (each month as it is ingested) and
`vintage contract check` (every month of a folder, without running anything).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import cache
from pathlib import Path

import duckdb
import yaml

from ml_assets.months import folder_label
from ml_assets.settings import SettingsError, contracts_file, read_yaml
from resources.sources import DEFAULT_NULL_VALUES, Reading

TYPES = ("text", "category", "integer", "number", "date")
DATE_FORMATS = ("YYYY-MM-DD (a time and offset may follow: 2023-01-31T00:00:00.000Z), "
                "M/D/YYYY or M/D/YY")
EMPTY_MONTHS = ("outside_range", "allowed", "error")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .-]{0,100}$")
ERROR, WARN = "ERROR", "WARN"
BLOCKING_KINDS = ("missing", "retyped", "empty", "duplicate_key")


class ContractError(ValueError):
    """A source departs from its contract in a way that stops ingestion."""


@dataclass(frozen=True)
class ColumnContract:
    name: str
    type: str
    max_null_share: float
    max_unparseable_share: float
    max_violation_share: float
    values: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None

    @property
    def numeric(self) -> bool:
        return self.type in ("integer", "number")


@dataclass(frozen=True)
class SourceContract:
    name: str
    columns: tuple[ColumnContract, ...]
    key: tuple[str, ...]
    empty_months: str
    reading: Reading = field(default_factory=Reading)  # how the source's files are read

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class Finding:
    """One way a month of a source departs from its contract."""

    source: str
    month: date | None
    kind: str  # missing, retyped, empty, duplicate_key, new, nulls, values
    column: str | None
    message: str
    figures: dict = field(default_factory=dict, compare=False)

    @property
    def severity(self) -> str:
        return WARN if self.kind in ("new", "values") else ERROR

    @property
    def blocking(self) -> bool:
        return self.kind in BLOCKING_KINDS

    def describe(self, file: str | None = None) -> str:
        where = f"{file or self.source} {folder_label(self.month)}" if self.month else \
            (file or self.source)
        return f"{where}: {self.message}"


def _quoted(column: str) -> str:
    if not _COLUMN.match(column):
        raise SettingsError(f"contract column name {column!r} is not a plain column name")
    return '"' + column.replace('"', '""') + '"'


READING_SETTINGS = ("encoding", "delimiter", "decimal", "null_values")


def _reading(path: Path, name: str, source: dict, defaults: dict) -> Reading:
    """A source's reading settings: its own, else the `defaults:` ones, else Reading's."""
    for key in source:
        near = difflib.get_close_matches(key, READING_SETTINGS, n=1, cutoff=0.75)
        if near and key != near[0]:
            raise SettingsError(f"{path}: {name}: unknown setting {key!r}; did you mean "
                                f"{near[0]!r}?")
    chosen = {key: source.get(key, defaults.get(key)) for key in READING_SETTINGS}
    try:
        return Reading(**{key: value for key, value in chosen.items() if value is not None})
    except ValueError as error:
        raise SettingsError(f"{path}: {name}: {error}") from None


def load_contracts(path: Path | None = None) -> dict[str, SourceContract]:
    """The data contracts in `path` (default: VINTAGE_CONTRACTS, else config/contracts.yaml),
    by source name. Raises SettingsError naming the file, source and setting that is wrong."""
    path = Path(path or contracts_file())
    raw = read_yaml(path, f"{path} not found (set by VINTAGE_CONTRACTS, or the project's config "
                          "folder)")
    defaults = raw.get("defaults", {})
    _reading(path, "defaults", defaults, {})
    contracts = {}
    for name, source in (raw.get("sources") or {}).items():
        reading = _reading(path, name, source, defaults)
        columns = []
        for column, spec in (source.get("columns") or {}).items():
            spec = spec or {}
            kind = spec.get("type", "text")
            if kind not in TYPES:
                raise SettingsError(f"{path}: {name}.{column}: type must be one of {TYPES}")
            _quoted(column)

            def share(key, spec=spec):
                return float(spec.get(key, defaults.get(key, 0.0)))

            values = spec.get("values")
            markers = sorted({str(v) for v in values or ()} & set(reading.null_values))
            if markers:
                raise SettingsError(
                    f"{path}: {name}.{column}: allowed values {markers} are also missing-value "
                    f"markers (null_values), read as empty; drop them from one of the two")
            columns.append(ColumnContract(
                name=column, type=kind, max_null_share=share("max_null_share"),
                max_unparseable_share=share("max_unparseable_share"),
                max_violation_share=share("max_violation_share"),
                values=tuple(str(v) for v in values) if values is not None else None,
                min=spec.get("min"), max=spec.get("max"),
            ))
        empty = source.get("empty_months", defaults.get("empty_months", "outside_range"))
        if empty not in EMPTY_MONTHS:
            raise SettingsError(f"{path}: {name}.empty_months must be one of {EMPTY_MONTHS}")
        contracts[name] = SourceContract(name, tuple(columns), tuple(source.get("key") or ()),
                                         empty, reading)
    return contracts


@cache
def contracts() -> dict[str, SourceContract]:
    return load_contracts()


def _measures(column: ColumnContract, index: int, params: dict) -> list[tuple[str, str]]:
    """(name, SQL aggregate) pairs measuring one column; bound values go into `params`."""
    q = _quoted(column.name)
    # a number-typed cell is empty when NULL, blank or a placeholder; the cast first spares
    # the regular expression on every clean number
    empty = (f"({q} IS NULL OR (TRY_CAST({q} AS DOUBLE) IS NULL AND (trim({q}) = '' "
             f"OR is_placeholder({q}))))" if column.numeric else f"({q} IS NULL OR trim({q}) = '')")
    measures = [(f"nulls_{index}", f"count_if({empty})")]
    if column.type == "date":
        bad = f"NOT {empty} AND parse_source_date({q}) IS NULL"
    elif column.numeric:
        bad = f"parse_number({q}) IS NULL AND NOT {empty}"
        if column.type == "integer":
            bad = (f"coalesce(parse_number({q}) <> round(parse_number({q})), true) "
                   f"AND NOT {empty}")
    else:
        bad = None
    if bad:
        measures += [(f"bad_{index}", f"count_if({bad})"),
                     (f"bad_example_{index}", f"arg_min({q}, _row_number) FILTER ({bad})"),
                     (f"bad_row_{index}", f"min(_row_number) FILTER ({bad})")]
    violation = None
    if column.values is not None:
        params[f"values_{index}"] = list(column.values)
        violation = f"NOT {empty} AND NOT list_contains($values_{index}, trim({q}))"
    elif column.numeric and (column.min is not None or column.max is not None):
        params[f"min_{index}"] = float(column.min if column.min is not None else -1e308)
        params[f"max_{index}"] = float(column.max if column.max is not None else 1e308)
        violation = (f"NOT parse_number({q}) BETWEEN $min_{index} AND $max_{index}")
    if violation:
        measures += [(f"violations_{index}", f"count_if({violation})"),
                     (f"violation_example_{index}", f"arg_min({q}, _row_number) FILTER "
                                                    f"({violation})")]
    return measures


def evaluate(con: duckdb.DuckDBPyConnection, view: str, contract: SourceContract,
             present: list[str], months: list[date]) -> dict[date, list[Finding]]:
    """How each month of `view` (raw text rows with `_snapshot_month` and `_row_number`)
    departs from `contract`; `present` are the source's columns."""
    findings: dict[date, list[Finding]] = {month: [] for month in months}
    missing = [c for c in contract.column_names if c not in present]
    new = [c for c in present if c not in contract.column_names
           and (not c.startswith("_") or _index_hint(c))]
    for month in months:
        for column in missing:
            near = difflib.get_close_matches(column, new, n=1, cutoff=0.6)
            hint = f"; new column {near[0]}" if near else ""
            findings[month].append(Finding(contract.name, month, "missing", column,
                                           f"column {column} missing{hint}"))
        for column in new:
            findings[month].append(Finding(contract.name, month, "new", column,
                                           f"new column {column}, not in the contract"
                                           f"{_index_hint(column)}"))
    checked = [c for c in contract.columns if c.name in present]
    params: dict = {"months": months}
    measures = [m for i, c in enumerate(checked) for m in _measures(c, i, params)]
    select = ", ".join(["_snapshot_month", "count(*) AS rows"]
                       + [f"{sql} AS {name}" for name, sql in measures])
    result = con.execute(f"SELECT {select} FROM {view} WHERE list_contains($months, "
                         f"_snapshot_month) GROUP BY _snapshot_month", params)
    names = [d[0] for d in result.description]
    for row in result.fetchall():
        values = dict(zip(names, row, strict=True))
        month, rows = values["_snapshot_month"], values["rows"]
        for i, column in enumerate(checked):
            findings[month] += _column_findings(contract.name, month, column, i, rows, values,
                                                contract.reading)
    return findings


_PANDAS_INDEX_NAME = re.compile(r"Unnamed: [0-9]+|__index_level_[0-9]+__|index|level_[0-9]+")
# text that stands for "missing" in files from some tool; named in a hint when not configured
KNOWN_NULL_MARKERS = (*DEFAULT_NULL_VALUES, "None", "NONE", "<NA>", "NAN", "N.A.", "#NULL!",
                      "\\N", "-", "?", "missing")


def _index_hint(column: str) -> str:
    return ("; a pandas index saved as data (to_csv without index=False, then read back)?"
            if _PANDAS_INDEX_NAME.fullmatch(column) else "")


def _marker_hint(example, reading: Reading) -> str:
    if isinstance(example, str) and example.strip() in KNOWN_NULL_MARKERS \
            and example.strip() not in reading.null_values:
        return (f"; {example.strip()!r} looks like a missing-value marker: add it to "
                f"null_values for this source")
    return ""


def _column_findings(source: str, month: date, column: ColumnContract, i: int, rows: int,
                     values: dict, reading: Reading) -> list[Finding]:
    found = []
    nulls = values[f"nulls_{i}"]
    present = rows - nulls
    if rows and nulls / rows > column.max_null_share:
        found.append(Finding(
            source, month, "nulls", column.name,
            f"column {column.name}: {nulls / rows:.1%} of {rows} values empty, contract allows "
            f"{column.max_null_share:.1%}", {"null_share": nulls / rows}))
    bad = values.get(f"bad_{i}") or 0
    if present and bad / present > column.max_unparseable_share:
        found.append(Finding(
            source, month, "retyped", column.name,
            f"column {column.name}: {bad / present:.1%} of {present} values are not "
            f"{column.type} (first at data row {values[f'bad_row_{i}']}: "
            f"{values[f'bad_example_{i}']!r}); contract type {column.type}"
            f"{_marker_hint(values[f'bad_example_{i}'], reading)}",
            {"unparseable_share": bad / present}))
    violations = values.get(f"violations_{i}") or 0
    if present and violations / present > column.max_violation_share:
        allowed = (f"values {list(column.values)}" if column.values is not None
                   else f"range [{column.min}, {column.max}]")
        found.append(Finding(
            source, month, "values", column.name,
            f"column {column.name}: {violations / present:.1%} of values outside {allowed} "
            f"(e.g. {values[f'violation_example_{i}']!r})",
            {"violation_share": violations / present}))
    return found


def duplicate_key_findings(con: duckdb.DuckDBPyConnection, view: str, contract: SourceContract,
                           present: list[str], months: list[date]) -> list[Finding]:
    """Keys held within a month by rows that differ in some other column (identical rows are
    mere duplicates, which silver drops and counts): one finding per month, naming how many
    keys, the first key, two of its data rows and the columns in which they differ."""
    if not contract.key or any(k not in present for k in contract.key):
        return []
    keys = ", ".join(_quoted(k) for k in contract.key)
    fingerprinted = (f"SELECT *, md5(list_value(*COLUMNS(lambda c: NOT starts_with(c, '_')))"
                     f"::VARCHAR) AS _fingerprint FROM {view} "
                     f"WHERE list_contains($months, _snapshot_month)")
    rows = con.execute(
        f"SELECT _snapshot_month, {keys}, count(DISTINCT _fingerprint), "
        f"list(_row_number ORDER BY _row_number)[:2] FROM ({fingerprinted}) GROUP BY ALL "
        f"HAVING count(DISTINCT _fingerprint) > 1 ORDER BY ALL", {"months": months}).fetchall()
    found: dict[date, list] = {}
    for month, *key, variants, row_numbers in rows:
        found.setdefault(month, []).append((tuple(key), variants, row_numbers))
    findings = []
    for month, hits in found.items():
        key, _, (first, second) = hits[0][0], hits[0][1], hits[0][2][:2]
        differing = _differing_columns(con, view, present, first, second)
        example = ", ".join(f"{name} {value}" for name, value in zip(contract.key, key,
                                                                     strict=True))
        counted = "1 key" if len(hits) == 1 else f"{len(hits)} keys"
        findings.append(Finding(
            contract.name, month, "duplicate_key", ", ".join(contract.key),
            f"{counted} ({', '.join(contract.key)}) {'has' if len(hits) == 1 else 'have'} more "
            f"than one row in the month with different values, e.g. {example} at data rows "
            f"{first} and {second}, differing in "
            f"{differing}; one row per key and month is expected (a daily extract with several "
            f"snapshots in a month? keep one per key and month, e.g. the month's last)",
            {"duplicate_keys": len(hits)}))
    return findings


def _differing_columns(con: duckdb.DuckDBPyConnection, view: str, present: list[str],
                       first: int, second: int) -> str:
    """`column 'a' vs 'b'` for each source column in which two data rows differ."""
    columns = [c for c in present if not c.startswith("_")]
    values = con.execute(
        f"SELECT {', '.join(_quoted(c) for c in columns)} FROM {view} "
        f"WHERE _row_number IN ($first, $second) ORDER BY _row_number",
        {"first": first, "second": second}).fetchall()
    if len(values) < 2:
        return "some column"
    return ", ".join(f"{column} {a!r} vs {b!r}" for column, a, b
                     in zip(columns, values[0], values[1], strict=True) if a != b)


def validate(con: duckdb.DuckDBPyConnection, view: str, contract: SourceContract,
             present: list[str], months: list[date], file_months: tuple[date, date] | None
             ) -> dict[date, list[Finding]]:
    """Every way the months of `view` depart from `contract`: its columns and values, its
    keys, and months without rows."""
    findings = evaluate(con, view, contract, present, months)
    rows = dict(con.execute(f"SELECT _snapshot_month, count(*) FROM {view} WHERE "
                            f"list_contains($months, _snapshot_month) GROUP BY ALL",
                            {"months": months}).fetchall())
    extra = duplicate_key_findings(con, view, contract, present, months)
    extra += empty_month_findings(contract, {m: rows.get(m, 0) for m in months}, file_months)
    for finding in extra:
        findings[finding.month].append(finding)
    return findings


def empty_month_findings(contract: SourceContract, rows_by_month: dict[date, int],
                         file_months: tuple[date, date] | None) -> list[Finding]:
    """Months with no rows that the contract does not allow to be empty."""
    found = []
    for month, rows in rows_by_month.items():
        if rows or contract.empty_months == "allowed":
            continue
        inside = file_months is not None and file_months[0] <= month <= file_months[1]
        if contract.empty_months == "error" or inside:
            span = (f" (the file has {folder_label(file_months[0])}.."
                    f"{folder_label(file_months[1])})" if file_months else "")
            found.append(Finding(contract.name, month, "empty", "snapshot_date",
                                 f"no rows with snapshot_date in this month{span}; "
                                 f"set empty_months: allowed in the contract if that is expected"))
    return found


# -- working with a folder of files, outside any run ------------------------------------------

INFER_SHARE = 0.99  # a column reads as a type when this share of its non-empty values do
MAX_CATEGORIES = 20


def _staged_view(con: duckdb.DuckDBPyConnection, folder: Path, name: str, staging: Path,
                 reading: Reading):
    """The source as text rows with `_snapshot_month`, and the staged copy."""
    from resources.sources import locate, stage

    staged = stage(locate(folder, name), name, staging, reading)
    con.read_parquet(str(staged.staged)).create_view(f"staged_{name}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW source_{name} AS SELECT *, date_trunc('month', "
                f"parse_source_date(snapshot_date))::DATE AS _snapshot_month FROM staged_{name}")
    return staged


def check_folder(folder: Path, contract_set: dict[str, SourceContract], staging: Path
                 ) -> dict[str, list[Finding]]:
    """Every month of every source in `folder` against its contract."""
    from resources.lake import sql_text

    results = {}
    with duckdb.connect() as con:
        con.execute(sql_text("macros"))
        for name, contract in contract_set.items():
            staged = _staged_view(con, folder, name, staging, contract.reading)
            if "snapshot_date" not in staged.columns:
                results[name] = [Finding(name, None, "missing", "snapshot_date",
                                         "column snapshot_date missing")]
                continue
            rows = dict(con.execute(f"SELECT _snapshot_month, count(*) FROM source_{name} "
                                    "WHERE _snapshot_month IS NOT NULL GROUP BY ALL").fetchall())
            if not rows:
                results[name] = [Finding(name, None, "empty", None, "no dated rows")]
                continue
            first, last = min(rows), max(rows)
            from ml_assets.months import month_range

            months = list(month_range(first, last))
            findings = validate(con, f"source_{name}", contract, list(staged.columns), months,
                                (first, last))
            results[name] = [f for month in sorted(findings) for f in findings[month]]
    return results


def _reading_lines(reading: Reading, indent: str, only_changed: bool) -> list[str]:
    """YAML lines of reading settings (those that differ from the defaults if `only_changed`)."""
    values, defaults = asdict(reading), asdict(Reading())
    return [f"{indent}{key}: {json.dumps(values[key])}" for key in READING_SETTINGS
            if not only_changed or values[key] != defaults[key]]


def infer_contract(folder: Path, names: tuple[str, ...], staging: Path) -> str:
    """A draft contract (YAML, with the observed figures as comments) for a user to review,
    with the reading settings each file appears to need (encoding, delimiter, decimal mark)."""
    from resources.lake import sql_text
    from resources.sources import detect_reading, locate

    lines = ["# Drafted by `vintage contract infer` from " + str(folder),
             "# Review every line: types, bounds and allowed values are guesses from the data.",
             "", "defaults:", "  max_unparseable_share: 0.01", "  max_null_share: 0.0",
             "  max_violation_share: 0.1", "  empty_months: outside_range",
             *_reading_lines(Reading(), "  ", only_changed=False), "", "sources:"]
    with duckdb.connect() as con:
        con.execute(sql_text("macros"))
        for name in names:
            reading = detect_reading(locate(folder, name))
            staged = _staged_view(con, folder, name, staging, reading)
            key = [c for c in staged.columns if c.lower().endswith("_id")][:1]
            key += ["snapshot_date"] if "snapshot_date" in staged.columns else []
            detected = _reading_lines(reading, "    ", only_changed=True)
            lines += [f"  {name}:", f"    # {staged.rows} rows in {staged.file.name}",
                      *(["    # how the file reads (detected)"] + detected if detected else []),
                      f"    key: [{', '.join(key)}]", "    columns:"]
            for column in staged.columns:
                lines += _infer_column(con, f"staged_{name}", column, staged.rows)
            lines.append("")
    return "\n".join(lines)


def _infer_column(con: duckdb.DuckDBPyConnection, view: str, column: str, rows: int
                  ) -> list[str]:
    q = _quoted(column)
    stats = con.execute(
        f"SELECT count_if({q} IS NULL OR trim({q}) = ''), "
        f"count_if(is_placeholder({q})), "
        f"count_if(parse_number({q}) IS NOT NULL), "
        f"count_if(coalesce(parse_number({q}) = round(parse_number({q})), false)), "
        f"count_if(parse_source_date({q}) IS NOT NULL), "
        f"approx_count_distinct({q}), "
        f"min(parse_number({q})), max(parse_number({q})), "
        f"quantile_cont(parse_number({q}), 0.01), quantile_cont(parse_number({q}), 0.99) "
        f"FROM {view}").fetchall()[0]
    empty, placeholders, numbers, wholes, dates, distinct, low, high, p01, p99 = stats
    filled = max(rows - empty - placeholders, 1)
    if dates / filled >= INFER_SHARE:
        kind = "date"
    elif wholes / filled >= INFER_SHARE:
        kind = "integer"
    elif numbers / filled >= INFER_SHARE:
        kind = "number"
    elif distinct <= MAX_CATEGORIES:
        kind = "category"
    else:
        kind = "text"
    # placeholders count as empty only in numbers; in text they are values
    nulls = empty + placeholders if kind in ("integer", "number") else empty
    null_share = nulls / rows if rows else 0.0
    spec = [f"type: {kind}"]
    # twice the observed share and two points more: a month's share varies around the file's
    bound = min(1.0, round(null_share * 2 + 0.02, 2)) if null_share else 0.0
    if bound:
        spec.append(f"max_null_share: {bound}")
    comment = f"{null_share:.1%} empty"
    if kind in ("integer", "number") and p01 is not None:
        spec += [f"min: {p01:g}", f"max: {p99:g}"]
        comment += f", observed {low:g}..{high:g} (min/max are the 1st and 99th percentiles)"
    if kind == "category":
        values = [v for (v,) in con.execute(
            f"SELECT DISTINCT {q} FROM {view} WHERE {q} IS NOT NULL AND trim({q}) <> '' "
            f"ORDER BY 1").fetchall()]
        spec.append("values: [" + ", ".join(yaml.safe_dump(v).split("\n")[0] for v in values)
                    + "]")
    return [f"      # {comment}", f"      {column}: {{{', '.join(spec)}}}"]


def validate_source(con: duckdb.DuckDBPyConnection, staged, contract: SourceContract,
                    months: list[date]) -> dict[date, list[Finding]]:
    """A staged source (resources.sources.StagedSource) against its contract for `months`:
    what the raw asset checks before it publishes, and `vintage run` before it starts."""
    from resources.lake import sql_text
    from resources.sources import SourceError, month_range

    if "snapshot_date" not in staged.columns:
        raise SourceError(f"{staged.file}: column snapshot_date missing")
    con.read_parquet(str(staged.staged)).create_view("staged_source", replace=True)
    undated, first_row, example = con.execute(
        sql_text("raw/undated_rows").replace("FROM source", "FROM staged_source")
    ).fetchall()[0]
    if undated:
        raise SourceError(
            f"{staged.file}: column snapshot_date: {undated} rows have no readable date (first "
            f"at data row {first_row}: {example!r}); expected {DATE_FORMATS} (day-first dates "
            f"read two ways and are refused)")
    con.execute("CREATE OR REPLACE TEMP VIEW source_months AS SELECT *, date_trunc('month', "
                "parse_source_date(snapshot_date))::DATE AS _snapshot_month FROM staged_source")
    file_months = month_range(staged, sql_text("macros")) if staged.rows else None
    return validate(con, "source_months", contract, list(staged.columns), months, file_months)


def blocking(findings: dict[date, list[Finding]]) -> list[Finding]:
    return [f for month in sorted(findings) for f in findings[month] if f.blocking]
