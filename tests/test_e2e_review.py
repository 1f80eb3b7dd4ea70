"""What a risk team reviews, in a real browser: the whole graph run by `vintage run` on small
generated data, then `vintage ui` over the same Dagster instance (as `make demo` then `make dev`
do). The vintage chart and the calibration plot open from the assets' metadata, a candidate's
validation report opens from the model registry's link, and `vintage dashboard` shows the
monitoring dashboard with its panels filled.

Debian's chromium through Playwright, skipped where it is absent (tests/test_e2e.py).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pytest
import requests

from tests.conftest import run_vintage, vintage_dashboard
from tests.test_e2e import chromium, free_port, running_ui, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("webserver-review")]


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    """A warehouse with every month of the graph, and `vintage ui` over its instance."""
    chromium()  # skip before the run where the browser is missing
    root = tmp_path_factory.mktemp("review")
    env = {"DAGSTER_HOME": str(root / "home"), "VINTAGE_SOURCE": str(root / "source"),
           "VINTAGE_WAREHOUSE": str(root / "warehouse")}
    assert run_vintage("generate", "--out", str(root / "source"), "--scale", "0.1",
                       "--seed", "5").returncode == 0
    done = run_vintage("run", env=env, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    with running_ui(root, env) as server:
        server.env = env
        yield server


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(), headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield browser.new_page(viewport={"width": 1600, "height": 1000})
        browser.close()


def catalog_rows(server, sql: str) -> list[tuple]:
    with duckdb.connect(str(server.root / "warehouse" / "catalog.duckdb"),
                        read_only=True) as con:
        return con.execute(sql).fetchall()


def skip_welcome(page) -> None:
    """A new instance greets its first page with a community dialog, which can arrive after
    the page's content: skip it when it comes within a few seconds."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=5_000)
    except PlaywrightTimeout:
        return
    skip.click()
    skip.wait_for(state="hidden", timeout=10_000)


def open_markdown_image(page, key: str) -> dict:
    """Open the metadata entry `key`'s Markdown (the UI's "[Show Markdown]") and return its
    image's alt text and drawn size, once the image has loaded."""
    row = page.locator("tr", has_text=key).filter(has_text="[Show Markdown]").first
    row.wait_for(state="visible", timeout=90_000)
    skip_welcome(page)
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator("img").first
    image.wait_for(state="visible", timeout=30_000)
    page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=image.element_handle())
    return image.evaluate("i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight})")


def test_the_vintage_curve_chart_opens_on_its_asset_page(reviewed, page, tmp_path):
    [(last,)] = catalog_rows(reviewed, "SELECT max(month) FROM analytics.vintage_curve")
    page.goto(f"{reviewed.url}/assets/analytics/vintage_curve", wait_until="domcontentloaded")
    image = open_markdown_image(page, "vintage_curve")
    assert image["alt"] == ("Ever 30+ dpd rate by months on book, one line per cohort "
                            f"(as of {last:%Y-%m})")
    assert image["width"] > 300 and image["height"] > 200
    screenshot(page, tmp_path, "vintage-curve.png")


def test_the_calibration_plot_of_a_matured_month_opens(reviewed, page, tmp_path):
    month, version = catalog_rows(
        reviewed, "SELECT month, min(model_version) FROM monitoring.calibration "
                  "GROUP BY month ORDER BY month LIMIT 1")[0]
    assert month >= date(2023, 7, 1)  # a label month: its predictions matured
    page.goto(f"{reviewed.url}/assets/monitoring/calibration?view=partitions"
              f"&partition={month.isoformat()}", wait_until="domcontentloaded")
    image = open_markdown_image(page, "calibration_plot")
    assert image["alt"] == f"{version}: calibration by grade, label month {month:%Y-%m}"
    assert image["width"] > 300 and image["height"] > 200
    screenshot(page, tmp_path, "calibration-plot.png")


def test_a_validation_report_opens_from_the_model_registry(reviewed, page, tmp_path):
    [(version, name, trained, uri)] = catalog_rows(
        reviewed, "SELECT model_version, model_name, trained_month, report_uri "
                  "FROM ml.validation_reports WHERE sign_off = 'approved' "
                  "ORDER BY trained_month DESC LIMIT 1")
    page.goto(f"{reviewed.url}/assets/ml/model_registry?view=partitions"
              f"&partition={trained.isoformat()}", wait_until="domcontentloaded")
    row = page.locator("tr", has_text=f"{name}_validation_report").first
    row.wait_for(state="visible", timeout=90_000)
    skip_welcome(page)
    link = row.locator('a[href^="file://"]').first
    link.wait_for(state="visible", timeout=30_000)
    href = link.get_attribute("href")
    assert href == Path(uri).as_uri(), (href, uri)
    page.goto(href)  # a browser opens a file:// link of a web page only in a tab of its own
    page.locator("#calibration-table").wait_for(state="visible", timeout=30_000)
    body = page.inner_text("body")
    assert version in body and "approved" in body
    for section in ("metrics", "feature-table", "calibration-table", "cutoff-table"):
        assert page.locator(f"#{section} tr").count() > 1, section
    screenshot(page, tmp_path, "validation-report.png")


@pytest.fixture(scope="module")
def dashboard(reviewed):
    """`vintage dashboard` over the warehouse's evidently workspace, on a free port."""
    with vintage_dashboard(port=free_port(), env=reviewed.env) as base:
        yield base


def test_the_monitoring_dashboard_opens_with_its_panels_filled(dashboard, page, tmp_path):
    projects = {p["name"]: p["id"] for p in requests.get(f"{dashboard}/api/projects",
                                                         timeout=10).json()}
    outside = []
    page.on("request", lambda request: outside.append(request.url)
            if not request.url.startswith((dashboard, "data:")) else None)
    page.goto(f"{dashboard}/projects/{projects['champion']}", wait_until="domcontentloaded")
    for title in ("Score PSI", "AUC, Gini, KS: target (30dpd_6mob)",
                  "Grade A: predicted PD vs observed rate", "Approval and bad rates"):
        page.get_by_text(title, exact=True).first.wait_for(state="visible", timeout=60_000)
    page.get_by_text("score PSI", exact=True).first.wait_for(state="visible", timeout=30_000)
    assert page.locator("svg path").count() > 20  # the lines of the filled panels
    assert not outside, f"the dashboard fetched from elsewhere: {outside}"
    screenshot(page, tmp_path, "monitoring-dashboard.png")
