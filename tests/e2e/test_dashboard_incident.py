"""The dashboard's incidents after real rollbacks of the example app, in Chromium (Playwright):
a bad canary rolled back by the router analysis under load, and a good-looking release a
person rolls back from the dashboard. The incidents page names each release marked bad, the
one restored, how and who acted; the bad release's deployment page is its timeline (steps,
the failing analysis decision, events); the releases page shows the mark.

Screenshots go under the test's tmp dir (`screenshots/`); with ROLLWISE_DOCS_SCREENSHOTS=1
the incidents page is copied to docs/img/incident.png."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.e2e import test_dashboard as dash
from tests.helpers import FAST, start_load

pytestmark = pytest.mark.xdist_group("dashboard")

browser = dash.browser  # one Chromium for the module (the dashboard tests' fixture)
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def test_given_two_rollbacks_when_a_person_opens_incidents_then_each_shows_what_and_who(
    project: Project, browser: Any, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    # Given: 1.0.0 live; 1.1.0 fails 30% of its orders and is rolled back by the analysis
    project.configure(database=dash.DATABASE)
    project.release("1.0.0", "1.0.1")
    project.release("1.1.0", faults={"order_error_rate": 0.3})
    project.cli("deploy", "1.0.0", check=True)
    project.configure(strategy={"type": "canary", "steps": [50, 100], "pause_s": 30}, analysis=FAST)
    load = start_load(project, 50)
    try:
        failed = project.cli("deploy", "1.1.0", env={"ROLLWISE_ACTOR": "ci"})
    finally:
        load.stop()
    assert failed.returncode != 0 and "error rate" in failed.stderr, failed.stderr
    # and 1.0.1 goes live, then ana rolls it back from the dashboard after reading the plan
    project.configure(strategy={"type": "all-at-once"})
    project.cli("deploy", "1.0.1", check=True)
    dash.user(project, "ana", "deployer")
    server = dash.Server(project)
    ana = dash.log_in(browser, server.url, "ana")
    ana.goto(f"{server.url}/environments/dev")
    ana.click("#rollback")
    assert "1.0.1 → 1.0.0" in ana.inner_text("#plan")
    ana.click("#confirm-rollback")
    ana.wait_for_url("**/environments/dev/deployments/*", timeout=60_000)
    ana.wait_for_selector("h1 .badge-succeeded")

    # When: she opens the incidents page
    ana.goto(f"{server.url}/incidents")
    rows = ana.locator("table.incidents tbody tr")
    assert rows.count() == 2
    # Then: newest first, the rollback she asked for and the canary the analysis stopped
    manual, auto = (cells(rows.nth(i)) for i in (0, 1))
    assert manual["bad"] == "1.0.1" and manual["restored"] == "1.0.0"
    assert (manual["how"], manual["status"]) == ("rollback", "open")
    assert "ana" in manual["by"], manual
    assert auto["bad"] == "1.1.0" and auto["restored"] == "1.0.0"
    assert (auto["how"], auto["by"], auto["status"]) == ("automatic", "analysis", "open")
    assert "router metrics: error rate" in auto["reason"], auto
    assert auto["id"].startswith("INC-") and manual["id"].startswith("INC-")
    dash.shot(ana, shots, "incident")

    # and the bad release's deployment is its timeline: the canary step failed on the
    # analysis decision to roll back, and traffic went back to 1.0.0
    rows.nth(1).locator("td.version a").first.click()
    ana.wait_for_selector("h1 .badge-rolled-back")
    assert "1.0.0 → 1.1.0" in ana.inner_text("h1")
    steps = ana.inner_text("table.steps")
    assert "canary:50" in steps and "failed" in steps, steps
    assert ana.locator("table.decisions .badge-rollback").count() >= 1
    assert "error rate" in ana.inner_text("table.decisions")
    started = ana.locator("table.events tbody tr").first.locator("td").all_inner_texts()
    assert started[2:6] == ["ci", "deploy", "started", "1.1.0"], started  # who started it
    dash.shot(ana, shots, "incident-deployment")
    # and the releases page shows 1.1.0 marked bad in dev, with why
    ana.goto(f"{server.url}/releases")
    marked = ana.locator("table tr:has(td:text-is('1.1.0'))").inner_text()
    assert "bad" in marked and "dev" in marked, marked
    _keep_for_docs(shots)


def cells(row: Any) -> dict[str, str]:
    names = ["id", "env", "opened", "bad", "restored", "how", "by", "reason", "status", "fix"]
    return dict(zip(names, (c.strip() for c in row.locator("td").all_inner_texts()), strict=True))


def _keep_for_docs(shots: Path) -> None:
    """With ROLLWISE_DOCS_SCREENSHOTS=1, copy the incidents page to docs/img/incident.png."""
    if os.environ.get("ROLLWISE_DOCS_SCREENSHOTS") == "1":
        shutil.copy(shots / "incident.png", DOCS_IMG / "incident.png")
