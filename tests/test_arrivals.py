"""The whole graph on data whose feeds arrive as real feeds do, generated with the project's own
generator (`vintage generate --stops-covering/--ends`): a feed that stops covering new
applicants, a feed that ends before the loans do, months with a handful of loans. Every run
exits 0, the coverage checks name the source and months, monitoring reports missing data as an
outage, and predictions are flagged (referred) or blocked as configured."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from ml_assets.settings import CONFIG_DIR
from tests.conftest import run_vintage

pytestmark = pytest.mark.slow
# the tests of one generated warehouse run on one xdist worker, which builds it once
OUTAGE_GROUP = pytest.mark.xdist_group("arrivals-outage")
LATE_GROUP = pytest.mark.xdist_group("arrivals-late")

OUTAGES = {"feature_clickstream": "2024-07", "features_attributes": "2024-10"}


def run_id(stdout: str) -> str:
    return re.search(r"^run (\S+) succeeded", stdout, re.MULTILINE).group(1)


def failed_checks(home: Path, run: str) -> dict[tuple[str, str], dict[str, tuple[str, str]]]:
    """(asset, check) -> {month: (severity, description)} of the run's failed evaluations."""
    found: dict = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_records_for_run(
            run, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        for record in records:
            check = record.event_log_entry.dagster_event.event_specific_data
            if not check.passed:
                found.setdefault((check.asset_key.to_user_string(), check.check_name), {})[
                    check.partition[:7]] = (check.severity.value, check.description or "")
    return found


def query(warehouse: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse / "catalog.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def months_between(first: str, last: str) -> list[str]:
    months, year, month = [], int(first[:4]), int(first[5:])
    while f"{year}-{month:02d}" <= last:
        months.append(f"{year}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    """Clickstream stops covering new applicants from 2024-07 (the shape of a widely shared
    copy of the course data), attributes from 2024-10; every month, whole graph."""
    root = tmp_path_factory.mktemp("outage")
    flags = [f"--stops-covering={source}@{month}" for source, month in OUTAGES.items()]
    assert run_vintage("generate", "--out", str(root / "src"), "--scale", "0.2", "--seed", "7",
                       *flags).returncode == 0
    env = {"DAGSTER_HOME": str(root / "home")}
    result = run_vintage("run", "--source", str(root / "src"), "--warehouse", str(root / "wh"),
                         env=env, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, result, failed_checks(root / "home", run_id(result.stdout))


@OUTAGE_GROUP
def test_coverage_checks_name_the_source_and_every_month_of_its_outage(outage):
    root, _, checks = outage
    clickstream = checks[("gold/source_coverage", "feature_clickstream_coverage")]
    assert sorted(clickstream) == months_between("2024-07", "2025-01")
    severity, description = clickstream["2024-07"]
    assert severity == "ERROR"
    assert re.fullmatch(
        r"feature_clickstream: 0 of 100 applications in 2024-07 have a snapshot in "
        r"2024-05\.\.2024-07 \(0\.0%; \d+\.\d% on average in 6 of the 6 months before, \d+\.\d% in "
        r"2024-06; floor 50%\); the source has [\d,]+ rows dated 2024-07, none for these "
        r"applicants", description)
    attributes = checks[("gold/source_coverage", "features_attributes_coverage")]
    assert sorted(attributes) == months_between("2024-10", "2025-01")
    assert ("gold/source_coverage", "features_financials_coverage") not in checks
    rows = query(root / "wh", "SELECT source, min(application_month), max(application_month), "
                              "max(coverage) FROM gold.source_coverage WHERE status = 'error' "
                              "GROUP BY ALL ORDER BY 1")
    assert rows == [("feature_clickstream", date(2024, 7, 1), date(2025, 1, 1), 0.0),
                    ("features_attributes", date(2024, 10, 1), date(2025, 1, 1), 0.0)]


@OUTAGE_GROUP
def test_predictions_of_an_outage_are_flagged_and_referred_never_silently_approved(outage):
    root, _, checks = outage
    decisions = dict(((str(m)[:7], d), n) for m, d, n in query(
        root / "wh", "SELECT application_month, decision, count(*) FROM gold.predictions "
                     "GROUP BY ALL"))
    statuses = dict(query(root / "wh", "SELECT DISTINCT strftime(application_month, '%Y-%m'), "
                                       "coverage_status FROM gold.predictions"))
    for month in months_between("2024-01", "2025-01"):
        if month >= "2024-07":
            assert decisions.get((month, "refer")) == 100  # every applicant lacks a failing feed
            assert statuses[month] == "error"
        else:
            assert (month, "refer") not in decisions
            assert statuses[month] == "ok"
    covered = checks[("gold/predictions", "sources_covered")]
    assert sorted(covered) == months_between("2024-07", "2025-01")
    assert covered["2024-07"][0] == "ERROR"
    assert covered["2024-07"][1].endswith("; flagged: 100 applications referred")


@OUTAGE_GROUP
def test_monitoring_reports_the_outage_as_missing_data_not_drift(outage):
    root, _, checks = outage
    missing = checks[("monitoring/stability", "features_missing")]
    assert sorted(missing) == months_between("2024-07", "2025-01")
    assert missing["2024-07"][0] == "ERROR"
    assert missing["2024-07"][1].startswith(
        "data outage, not drift: feature_clickstream: 41 feature(s) missing in up to 100% of "
        "100 loans")
    assert "features_attributes: 2 feature(s)" in missing["2024-10"][1]
    outage_bands = query(root / "wh", "SELECT DISTINCT variable FROM monitoring.stability "
                                      "WHERE band = 'outage' AND month = DATE '2024-07-01'")
    assert {v for (v,) in outage_bands} >= {"clickstream_months", "fe_1_latest", "fe_20_mean"}
    recommendations = dict(query(root / "wh", "SELECT strftime(month, '%Y-%m'), recommendation "
                                              "FROM monitoring.recommendation"))
    assert {recommendations[m] for m in months_between("2024-07", "2025-01")} == {"data_outage"}
    assert "data_outage" not in {recommendations[m] for m in months_between("2024-01", "2024-06")}
    not_tested = query(root / "wh", "SELECT count(*) FROM monitoring.drift WHERE month = DATE "
                                    "'2024-07-01' AND note LIKE 'not tested: no value in the%'")
    assert not_tested[0][0] > 0
    summary = dict(query(root / "wh", "SELECT strftime(month, '%Y-%m'), features_outage FROM "
                                      "monitoring.summary WHERE month >= DATE '2024-01-01' "
                                      "AND month <= DATE '2025-01-01'"))
    assert summary["2024-06"] == 0 and summary["2024-07"] == 41 and summary["2024-10"] == 43


@OUTAGE_GROUP
def test_blocked_predictions_publish_nothing_for_an_outage_month(outage, tmp_path):
    root, _, _ = outage
    config = yaml.safe_load((CONFIG_DIR / "vintage.yaml").read_text())
    config["coverage"]["on_failure"] = "block"
    (tmp_path / "vintage.yaml").write_text(yaml.safe_dump(config))
    env = {"DAGSTER_HOME": str(root / "home")}
    result = run_vintage("run", "--config", str(tmp_path / "vintage.yaml"), "--source",
                         str(root / "src"), "--warehouse", str(root / "wh"), "--from", "2024-05",
                         "--to", "2024-08", "--select", "key:gold/predictions", env=env, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(query(root / "wh", "SELECT strftime(application_month, '%Y-%m'), count(*) "
                                     "FROM gold.predictions WHERE application_month BETWEEN "
                                     "DATE '2024-05-01' AND DATE '2024-08-01' GROUP BY ALL"))
    assert counts == {"2024-05": 100, "2024-06": 100}
    checks = failed_checks(root / "home", run_id(result.stdout))
    blocked = checks[("gold/predictions", "sources_covered")]
    assert sorted(blocked) == ["2024-07", "2024-08"]
    assert blocked["2024-07"][1].endswith("; blocked: no predictions published")


@pytest.fixture(scope="module")
def late_feeds(tmp_path_factory):
    """At the close of 2023-07 the clickstream extract still ends at 2023-06, and the
    financials extract too, while the loans already have 2023-07."""
    root = tmp_path_factory.mktemp("late")
    assert run_vintage("generate", "--out", str(root / "src"), "--scale", "0.2", "--seed", "7",
                       "--ends", "feature_clickstream@2023-06",
                       "--ends", "features_financials@2023-06").returncode == 0
    result = run_vintage("run", "--source", str(root / "src"), "--warehouse", str(root / "wh"),
                         "--from", "2023-01", "--to", "2023-07", "--select",
                         "group:raw or group:silver or key:gold/feature_store or "
                         "key:gold/source_coverage",
                         env={"DAGSTER_HOME": str(root / "home")}, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, failed_checks(root / "home", run_id(result.stdout))


@LATE_GROUP
def test_a_late_feed_is_named_per_source_with_its_own_as_of_date(late_feeds):
    root, checks = late_feeds
    severity, description = checks[("gold/source_coverage", "feature_clickstream_coverage")][
        "2023-07"]
    assert severity == "WARN"
    assert description.startswith("feature_clickstream: 0 of 100 applications in 2023-07 have a "
                                  "snapshot in 2023-07 itself (stale: the latest used is 2023-06")
    assert description.endswith("; the source has no rows dated 2023-07")
    severity, description = checks[("gold/source_coverage", "features_financials_coverage")][
        "2023-07"]
    assert severity == "ERROR"
    assert description.endswith("; the source has no rows dated 2023-07")
    assert ("gold/source_coverage", "features_attributes_coverage") not in checks
    as_of = query(root / "wh", "SELECT max(attributes_as_of), max(financials_as_of), "
                               "max(clickstream_as_of), max(features_as_of) FROM "
                               "gold.feature_store WHERE application_month = DATE '2023-07-01'")
    attributes, financials, clickstream, features = as_of[0]
    assert attributes.month == 7 and financials is None and clickstream.month == 6
    assert features == attributes


def test_a_handful_of_loans_a_month_runs_the_whole_graph(tmp_path):
    """Five loans a month: one-class label months, tiny training sets; every check that cannot
    judge says so as a WARN, and the run succeeds."""
    assert run_vintage("generate", "--out", str(tmp_path / "src"), "--scale", "0.01", "--seed",
                       "3").returncode == 0
    result = run_vintage("run", "--source", str(tmp_path / "src"), "--warehouse",
                         str(tmp_path / "wh"), env={"DAGSTER_HOME": str(tmp_path / "home")},
                         cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = failed_checks(tmp_path / "home", run_id(result.stdout))
    performance = checks[("monitoring/performance", "auc_floor")]
    assert performance and {severity for severity, _ in performance.values()} == {"WARN"}
    assert all("too few to judge" in text or "one class only" in text
               for _, text in performance.values())
    assert query(tmp_path / "wh", "SELECT count(*) FROM monitoring.summary")[0][0] > 0
