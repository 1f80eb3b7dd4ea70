"""`vintage` as a user runs it: real processes, exit codes, messages, the Dagster instance."""

from __future__ import annotations

import os
import pty
import re
import shutil
import socket
import subprocess
import time
import zipfile
from datetime import date
from pathlib import Path

import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ml_assets.cli import _print_summary
from ml_assets.demo.generator import generate
from ml_assets.runner import RunSummary
from ml_assets.tables import SILVER_LOAN_DAILY
from resources.lake import Lake
from tests.conftest import VINTAGE, run_vintage

CONFIG = Path(__file__).resolve().parent.parent / "config"


def vintage(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_vintage(*args, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def course_folder(tmp_path_factory) -> Path:
    """Demo data recast the way other course-format files come: parquet, a zip, US dates."""
    root = tmp_path_factory.mktemp("course")
    generate(root / "csv", scale=0.02, seed=11)
    folder = root / "mixed"
    folder.mkdir()
    lms = pacsv.read_csv(root / "csv" / "lms_loan_daily.csv")
    pq.write_table(lms, folder / "lms_loan_daily.parquet")
    with zipfile.ZipFile(folder / "feature_clickstream.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(root / "csv" / "feature_clickstream.csv", "feature_clickstream.csv")
    con = duckdb.connect()
    con.execute(
        "COPY (SELECT * REPLACE (strftime(snapshot_date::DATE, '%-m/%-d/%Y') AS snapshot_date) "
        "FROM read_csv($src, all_varchar = true)) TO $dst (HEADER)",
        {"src": str(root / "csv" / "features_attributes.csv"),
         "dst": str(folder / "features_attributes.csv")})
    (folder / "features_financials.csv").write_bytes(
        (root / "csv" / "features_financials.csv").read_bytes())
    return folder


@pytest.mark.slow
def test_run_on_course_format_files_in_other_formats(course_folder, tmp_path):
    env = {"DAGSTER_HOME": str(tmp_path / "home")}
    done = vintage("run", "--source", str(course_folder), "--warehouse", str(tmp_path / "wh"),
                   env=env)
    assert done.returncode == 0, done.stderr
    assert "succeeded for months 2023-01..2025-11" in done.stdout
    assert "stage silver" in done.stdout
    with duckdb.connect(str(tmp_path / "wh" / "catalog.duckdb"), read_only=True) as con:
        loans = con.execute("SELECT count(DISTINCT loan_id) FROM raw.lms_loan_daily").fetchone()
        features = con.execute("SELECT count(*) FROM gold.feature_store").fetchone()
        attributes = con.execute("SELECT count(*) FROM silver.attributes").fetchone()
    assert loans == features == attributes
    # the run is in the instance, for the UI
    runs = list((tmp_path / "home" / "history" / "runs").glob("*.db"))
    assert runs


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """Paths the bad arguments point at: a file, a folder, files of bad YAML or values."""
    root = tmp_path_factory.mktemp("places")
    (root / "file.txt").write_text("a file, not a folder")
    (root / "folder").mkdir()
    (root / "broken.yaml").write_text("paths: [unclosed\n")
    (root / "bad_values.yaml").write_text("label:\n  dpd: -1\n")
    return {"FILE": str(root / "file.txt"), "UNDER_FILE": str(root / "file.txt" / "wh"),
            "FOLDER": str(root / "folder"), "MISSING": str(root / "missing"),
            "MISSING_PARENT": str(root / "missing" / "draft.yaml"),
            "BROKEN_YAML": str(root / "broken.yaml"), "BAD_VALUES": str(root / "bad_values.yaml"),
            "OUT": str(root / "out")}


# (arguments, what stderr must say); every one exits 2 without a traceback. Upper-case words
# are paths from `places`.
FILE_NOT_FOLDER = "FILE is not writable: a file, not a folder"
UNDER_FILE = "UNDER_FILE is not writable: FILE is a file, not a folder"
BAD_ARGUMENTS = [
    # generate
    (["generate", "--out", "OUT", "--scale", "-1"],
     "argument --scale: expected a number greater than 0 and at most 1000, got '-1'"),
    (["generate", "--out", "OUT", "--scale", "0"], "argument --scale: expected a number greater"),
    (["generate", "--out", "OUT", "--scale", "ten"],
     "argument --scale: expected a number, got 'ten'"),
    (["generate", "--out", "OUT", "--scale", "nan"], "argument --scale: expected a number greater"),
    (["generate", "--out", "OUT", "--scale", "inf"], "argument --scale: expected a number greater"),
    (["generate", "--out", "OUT", "--scale", "5000"], "at most 1000, got '5000'"),
    (["generate", "--out", "OUT", "--seed", "-3"],
     "argument --seed: expected a whole number >= 0, got '-3'"),
    (["generate", "--out", "OUT", "--seed", "4.5"],
     "argument --seed: expected a whole number, got '4.5'"),
    (["generate", "--out", "OUT", "--shift-month", "2024-13"],
     "argument --shift-month: '2024-13' is not a month"),
    (["generate", "--out", "OUT", "--shift-month", "July"],
     "argument --shift-month: 'July' is not a month"),
    (["generate", "--out", "FILE"], f"argument --out: {FILE_NOT_FOLDER}"),
    (["generate", "--out", "UNDER_FILE"], f"argument --out: {UNDER_FILE}"),
    (["generate"], "the following arguments are required: --out"),
    # run
    (["run", "--from", "2024-13"], "argument --from: '2024-13' is not a month"),
    (["run", "--to", "May 2024"], "argument --to: 'May 2024' is not a month"),
    (["run", "--from", "2024-05", "--to", "2024-01"], "--from 2024-05 is after --to 2024-01"),
    (["run", "--from", "2019-01"], "outside the months the platform has, 2023-01.."),
    (["run", "--select", "key:gold/no_such_table"],
     "--select 'key:gold/no_such_table' matches no asset"),
    (["run", "--select", "key:(gold"], "--select 'key:(gold'"),
    (["run", "--source", "MISSING"], "argument --source: MISSING: no such folder"),
    (["run", "--source", "FILE"], "argument --source: FILE: not a folder"),
    (["run", "--warehouse", "FILE"], f"argument --warehouse: {FILE_NOT_FOLDER}"),
    (["run", "--warehouse", "UNDER_FILE"], f"argument --warehouse: {UNDER_FILE}"),
    (["run", "--config", "MISSING"], "argument --config: MISSING: no such file"),
    (["run", "--config", "FOLDER"], "argument --config: FOLDER: not a file"),
    (["run", "--config", "BROKEN_YAML"],
     "configuration file BROKEN_YAML: not a valid configuration"),
    (["run", "--config", "BAD_VALUES"], "label.dpd: expected a whole number >= 1, got -1"),
    (["run", "--verbose", "yes"], "unrecognized arguments: yes"),
    # demo
    (["demo", "--warehouse", "FILE"], f"argument --warehouse: {FILE_NOT_FOLDER}"),
    (["demo", "--config", "MISSING"], "argument --config: MISSING: no such file"),
    # contract
    (["contract", "infer", "--source", "MISSING"], "argument --source: MISSING: no such folder"),
    (["contract", "infer", "--source", "FOLDER", "--out", "FOLDER"],
     "argument --out: FOLDER: a folder, not a file"),
    (["contract", "infer", "--source", "FOLDER", "--out", "MISSING_PARENT"],
     "argument --out: MISSING_PARENT: no folder MISSING"),
    (["contract", "check", "--source", "FILE"], "argument --source: FILE: not a folder"),
    (["contract", "check", "--source", "FOLDER", "--contracts", "MISSING"],
     "argument --contracts: MISSING: no such file"),
    (["contract", "check", "--source", "FOLDER", "--contracts", "BROKEN_YAML"],
     "contract file BROKEN_YAML: not a valid contract"),
    (["contract", "check"], "the following arguments are required: --source"),
    (["contract"], "the following arguments are required: contract_command"),
    # catalog
    (["catalog", "refresh", "--warehouse", "MISSING"],
     "argument --warehouse: MISSING: no such folder"),
    (["catalog", "refresh", "--warehouse", "FILE"], "argument --warehouse: FILE: not a folder"),
    (["catalog", "rebuild"], "invalid choice: 'rebuild'"),
    # ui
    (["ui", "--port", "0"], "argument --port: expected a port from 1 to 65535, got '0'"),
    (["ui", "--port", "70000"], "argument --port: expected a port from 1 to 65535, got '70000'"),
    (["ui", "--port", "http"], "argument --port: expected a port number, got 'http'"),
    (["ui", "--host", "no-such-host.invalid"],
     "--host 'no-such-host.invalid': not a known host name or address"),
    (["ui", "--host", "192.0.2.1"], "--host 192.0.2.1 --port 3000: cannot listen there"),
    (["ui", "--source", "MISSING"], "argument --source: MISSING: no such folder"),
    (["ui", "--warehouse", "FILE"], f"argument --warehouse: {FILE_NOT_FOLDER}"),
    # the command itself
    ([], "the following arguments are required: command"),
    (["backfill"], "invalid choice: 'backfill'"),
]


@pytest.mark.parametrize("args,message", BAD_ARGUMENTS,
                         ids=[" ".join(args) or "nothing" for args, _ in BAD_ARGUMENTS])
def test_a_bad_argument_exits_2_with_a_message_naming_it(args, message, places, tmp_path):
    def fill(text: str) -> str:
        for name in sorted(places, key=len, reverse=True):
            text = text.replace(name, places[name])
        return text

    done = vintage(*[fill(a) for a in args], env={"DAGSTER_HOME": str(tmp_path / "home"),
                                                   "VINTAGE_WAREHOUSE": str(tmp_path / "wh")},
                   timeout=300)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert fill(message) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "home" / "history").exists(), "a run was started"


def test_a_port_in_use_exits_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = vintage("ui", "--port", str(port), env={"DAGSTER_HOME": str(tmp_path / "home")},
                       timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)" \
        in done.stderr


def test_an_unwritable_warehouse_exits_2(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    done = vintage("run", env={"DAGSTER_HOME": str(tmp_path / "home"),
                               "VINTAGE_WAREHOUSE": str(blocked / "wh")})
    assert done.returncode == 2
    assert f"warehouse {blocked / 'wh'} is not writable" in done.stderr


@pytest.mark.parametrize("variable", ["VINTAGE_CONTRACTS", "VINTAGE_MODELS"])
def test_a_missing_contract_or_model_file_exits_2_naming_it(variable, tmp_path):
    missing = tmp_path / "missing.yaml"
    done = vintage("run", "--from", "2023-01", "--to", "2023-01",
                   env={"DAGSTER_HOME": str(tmp_path / "home"), variable: str(missing),
                        "VINTAGE_WAREHOUSE": str(tmp_path / "wh")}, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"{missing} not found (set by {variable}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("variable", "file"), [("VINTAGE_CONTRACTS", "contracts.yaml"),
                                                ("VINTAGE_MODELS", "models.yaml"),
                                                ("VINTAGE_CONFIG", "vintage.yaml")])
def test_a_config_file_with_a_key_given_twice_exits_2_naming_file_and_line(variable, file,
                                                                           tmp_path):
    """A block pasted at the end of a copy repeats a top-level key: YAML would keep the last
    one and silently drop the first (seen: every source contract gone)."""
    copy = tmp_path / file
    text = (CONFIG / file).read_text()
    first_key = next(line.split(":")[0] for line in text.splitlines()
                     if line and line[0].isalpha() and line.rstrip().endswith(":"))
    copy.write_text(f"{text}\n{first_key}:\n  pasted: 1\n")
    done = vintage("run", "--from", "2023-01", "--to", "2023-01",
                   env={"DAGSTER_HOME": str(tmp_path / "home"), variable: str(copy),
                        "VINTAGE_WAREHOUSE": str(tmp_path / "wh")}, timeout=300)
    assert done.returncode == 2, done.stderr
    line = len(text.splitlines()) + 2
    assert f"{copy}: line {line}: `{first_key}` is given twice in the same block" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_contract_file_without_a_source_exits_2_naming_the_file(tmp_path):
    import yaml

    raw = yaml.safe_load((CONFIG / "contracts.yaml").read_text())
    del raw["sources"]["lms_loan_daily"]
    copy = tmp_path / "contracts.yaml"
    copy.write_text(yaml.safe_dump(raw))
    done = vintage("run", "--from", "2023-01", "--to", "2023-01",
                   env={"DAGSTER_HOME": str(tmp_path / "home"), "VINTAGE_CONTRACTS": str(copy),
                        "VINTAGE_WAREHOUSE": str(tmp_path / "wh")}, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"{copy} has no contract for lms_loan_daily" in done.stderr
    assert "Traceback" not in done.stderr


def test_generate_into_a_folder_it_cannot_write_exits_2(tmp_path):
    done = vintage("generate", "--out", "/proc/vintage-demo", "--scale", "0.01",
                   env={"DAGSTER_HOME": str(tmp_path / "home")})
    assert done.returncode == 2, done.stderr
    assert "--out /proc/vintage-demo: cannot write the files" in done.stderr
    assert "Traceback" not in done.stderr


def test_generate_takes_an_empty_shift_month_and_a_full_month_key(tmp_path):
    done = vintage("generate", "--out", str(tmp_path / "a"), "--scale", "0.001", "--seed", "0",
                   "--shift-month", "", env={})
    assert done.returncode == 0, done.stderr
    done = vintage("generate", "--out", str(tmp_path / "b"), "--scale", "0.001",
                   "--shift-month", "2024-03-01", env={})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b" / "lms_loan_daily.csv").stat().st_size > 0


def test_a_missing_source_file_fails_naming_it(course_folder, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for path in course_folder.iterdir():
        if not path.name.startswith("features_financials"):
            shutil.copy(path, source / path.name)
    done = vintage("run", "--source", str(source), "--warehouse", str(tmp_path / "wh"),
                   "--from", "2023-01", "--to", "2023-01", "--select", "group:raw",
                   env={"DAGSTER_HOME": str(tmp_path / "home")})
    assert done.returncode == 1
    assert "no features_financials.csv, features_financials.parquet or features_financials.zip" \
        in done.stderr


@pytest.mark.slow
def test_dagster_cli_backfills_a_range_in_one_run(tmp_path):
    """The README's backfill from the command line: `dagster asset materialize` over a
    partition range, as one run (single-run backfill policy), into the same lake."""
    generate(tmp_path / "src", scale=0.02, seed=4)
    (tmp_path / "home").mkdir()
    shutil.copy(Path(__file__).parent.parent / "config" / "dagster.yaml", tmp_path / "home")
    env = {"VINTAGE_SOURCE": str(tmp_path / "src"), "VINTAGE_WAREHOUSE": str(tmp_path / "wh"),
           "DAGSTER_HOME": str(tmp_path / "home")}
    dagster = Path(VINTAGE).parent / "dagster"
    done = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "ml_assets.definitions", "--select",
         "raw/lms_loan_daily,silver/loan_daily,silver/loan_daily_quarantine",
         "--partition-range", "2023-01-01...2023-03-01"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("RUN_SUCCESS") == 1
    lake = Lake(uri=str(tmp_path / "wh"))
    assert lake.published_months(SILVER_LOAN_DAILY) == [date(2023, 1, 1), date(2023, 2, 1),
                                                        date(2023, 3, 1)]
    assert lake.version(SILVER_LOAN_DAILY) == 0  # the range: one run, one step, one commit


# --- progress of a run -----------------------------------------------------------------------

PROGRESS_RUN = ["--from", "2023-01", "--to", "2023-02", "--select",
                "group:raw or key:silver/loan_daily"]
# five assets and the step of Dagster's column schema checks
STEP_LINE = re.compile(r"\[(\d)/6\] ([a-z_]+/[a-z_]+) 2023-01\.\.2023-02 \.\.\. (\d+\.\d) s")


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("progress") / "source"
    generate(folder, scale=0.02, seed=12)
    return folder


def test_run_progress_in_a_pipe_is_a_line_per_step_as_it_ends(small_source, tmp_path):
    """Not a terminal (CI logs, `| tee`): each step's line is written as the step runs, and the
    summary table follows as before."""
    process = subprocess.Popen(
        [VINTAGE, "run", "--source", str(small_source), "--warehouse", str(tmp_path / "wh"),
         *PROGRESS_RUN], env={**os.environ, "DAGSTER_HOME": str(tmp_path / "home")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrived = []
    for line in process.stdout:
        arrived.append((time.monotonic(), line.rstrip("\n")))
    process.wait(600)
    ended = time.monotonic()
    assert process.returncode == 0, process.stderr.read()
    lines = [line for _, line in arrived]
    steps = [STEP_LINE.fullmatch(line) for line in lines[:6]]
    assert all(steps), lines[:7]
    assert [int(m.group(1)) for m in steps] == [1, 2, 3, 4, 5, 6]
    assert {m.group(2) for m in steps} == {
        "raw/lms_loan_daily", "raw/feature_clickstream", "raw/features_attributes",
        "raw/features_financials", "silver/loan_daily", "checks/column_schema_changes"}
    assert lines[6].endswith("succeeded for months 2023-01..2023-02")
    assert lines[7].split() == ["asset", "seconds"]
    assert "\x1b" not in "\n".join(lines)
    # the first step's line came while the run was going, not with the summary at the end
    assert ended - arrived[0][0] > 1.0


def test_run_progress_on_a_terminal_is_a_bar(small_source, tmp_path):
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [VINTAGE, "run", "--source", str(small_source), "--warehouse", str(tmp_path / "wh"),
         *PROGRESS_RUN],
        env={**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "COLUMNS": "120",
             "TERM": "xterm-256color"},
        stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(primary)
        process.wait(600)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    assert "\x1b[" in text and "━" in text  # the bar, redrawn in place
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert re.search(r"raw/\w+ 2023-01\.\.2023-02 [━╸╺]+ [0-6]/6 ", plain)  # step, bar, count
    assert len(STEP_LINE.findall(plain)) == 6  # each finished step printed above the bar
    assert "succeeded for months 2023-01..2023-02" in plain


def test_the_run_summary_lists_the_errors_before_the_warnings(capsys):
    """A run with more failed checks than the summary shows: every ERROR is shown (first, in
    run order), the WARNs fill the rest, and the count says how many of each."""
    warnings = [f"WARN  ml/feature_iv iv_not_suspicious 2024-{m:02}-01: IV at least 0.5"
                for m in range(1, 13)] * 3
    errors = ["ERROR monitoring/stability score_psi 2024-10-01: PSI 0.26",
              "ERROR monitoring/performance auc_drop 2024-11-01: AUC fell 0.056"]
    summary = RunSummary("r1", True, date(2024, 1, 1), date(2024, 12, 1),
                         failed_checks=[*warnings[:30], errors[0], *warnings[30:], errors[1]])
    _print_summary(summary)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "38 check evaluation(s) failed (2 ERROR, 36 WARN):"
    assert lines[2:4] == [f"  {line}" for line in errors]
    assert lines[4:27] == [f"  {line}" for line in warnings[:23]]
    assert lines[27] == "  ... and 13 more (see the Dagster UI)"
