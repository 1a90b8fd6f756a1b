"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a real
`rollwise server` on the example app: people log in, watch a bad canary fail live under
load (chart and decision move without a reload), approve a deploy to an environment that
needs a second person, roll back with one click after reading the plan (release, schema
SQL, data dropped), and find the rollback in the audit log with the chain verified. And no
page loads anything from another origin.

Screenshots go under the test's tmp dir (`screenshots/`); docs/img/ has copies of good ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from rollwise.demo import CHANNEL_DOWN, CHANNEL_UP
from rollwise.ports import free_port
from tests.conftest import Project, require
from tests.helpers import FAST, start_load

pytestmark = pytest.mark.xdist_group("dashboard")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"
WAIT_MS = 30_000
DATABASE = {"url": "sqlite:///{shared}/orders.db"}


# Ports Chromium refuses to load from (net::ERR_UNSAFE_PORT), above 1023
UNSAFE_PORTS = frozenset(
    {1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667}
    | {6668, 6669, 6697, 10080}
)


def browser_port() -> int:
    """A free loopback port Chromium will load pages from."""
    while (port := free_port()) in UNSAFE_PORTS:
        pass
    return port


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module; a test makes its own contexts (one per person)."""
    require(
        Path(CHROMIUM).exists(),
        "chromium",
        "apt-get install chromium (the tests never download a browser)",
    )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright", "pip install -e '.[dev]'")
        raise
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Server:
    """`rollwise server` on a free port, stopped at the project's teardown."""

    def __init__(self, p: Project) -> None:
        self.port = browser_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = p.root / "server.log"
        with self.log.open("w") as log:
            listen = f"127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rollwise", "server", "--listen", listen, "-C", str(p.root)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        p.cleanups.append(self.stop)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"rollwise server did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


def user(p: Project, name: str, role: str) -> None:
    p.cli("user", "create", name, "--role", role, "--password-stdin", stdin=PASSWORD, check=True)


def log_in(browser: Any, url: str, name: str) -> Any:
    """A new browser context (a person) logged in as `name`; returns its first page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.on("dialog", lambda d: d.accept())
    page.goto(f"{url}/")  # any page sends people to /login?next=...
    assert "/login?next=" in page.url, page.url
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(f"{url}/")
    return page


def shot(page: Any, folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def add_environment(p: Project, name: str, **settings: Any) -> None:
    path = p.root / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["environments"][name] = {
        "router": {"listen": f"127.0.0.1:{free_port()}"},
        "database": DATABASE,
        **settings,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def with_channel_column(p: Project) -> None:
    """Releases made from now on add the column `channel` (filled on write)."""
    (p.root / "migrations" / "0002_channel.up.sql").write_text(CHANNEL_UP)
    (p.root / "migrations" / "0002_channel.down.sql").write_text(CHANNEL_DOWN)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return tmp_path / "screenshots"


def test_given_a_team_server_when_people_use_the_dashboard_then_they_see_act_and_audit(
    project: Project, browser: Any, shots: Path
) -> None:
    # Given: 1.0.1 (with a schema change) live in dev after 1.0.0, a bad 1.1.0 released,
    # a `prod` that needs one approval, a deployer and an approver, and the team server
    project.configure(database=DATABASE)
    project.release("1.0.0")
    with_channel_column(project)
    project.release("1.0.1")
    project.release("1.1.0", faults={"order_error_rate": 0.3})
    project.cli("deploy", "1.0.0", check=True)
    project.cli("deploy", "1.0.1", check=True)
    project.configure(strategy={"type": "canary", "steps": [50, 100], "pause_s": 30}, analysis=FAST)
    add_environment(project, "prod", approvals={"required": 1})
    user(project, "ana", "deployer")
    user(project, "bo", "approver")
    server = Server(project)
    ana = log_in(browser, server.url, "ana")
    ana.goto(f"{server.url}/")
    assert ana.locator("tr[data-env='dev'] .version").first.inner_text() == "1.0.1"
    shot(ana, shots, "overview")

    # When: ana deploys the bad release from the dashboard under load and watches it live
    load = start_load(project, 50)
    try:
        live = ana.context.new_page()
        live.goto(f"{server.url}/environments/dev/live")
        live.evaluate("window.notReloaded = true")
        ana.goto(f"{server.url}/environments/dev")
        ana.select_option("form.deploy select[name=version]", "1.1.0")
        ana.click("form.deploy button[type=submit]")
        live.wait_for_selector("#summary:has-text('deploy to 1.1.0 in progress')")
        live.wait_for_selector("#chart-errors polyline[data-version='1.1.0']")
        shot(live, shots, "live-canary")
        # Then: the chart and the decision move without a reload, to a rollback
        live.wait_for_selector("#decision[data-action='rollback']")
        live.wait_for_function(
            "document.querySelector(\"#chart-errors polyline[data-version='1.1.0']\")"
            ".getAttribute('data-points') >= 2"
        )
        assert live.evaluate("window.notReloaded") is True
        assert "error rate" in live.inner_text("#decision-reason")
        shot(live, shots, "live-canary-failed")
        live.wait_for_selector("#deployment .badge-rolled-back")
        live.click("#deployment a")
        assert live.locator("#reason").inner_text().startswith("Reason:")
        assert live.locator("table.decisions .badge-rollback").count() >= 1
        shot(live, shots, "deployment")

        # When: ana asks to deploy 1.0.0 to prod, and bo approves it in his inbox
        ana.goto(f"{server.url}/environments/prod")
        ana.select_option("form.deploy select[name=version]", "1.0.0")
        ana.click("form.deploy button[type=submit]")
        ana.wait_for_selector("#flash:has-text('pending')")
        bo = log_in(browser, server.url, "bo")
        bo.goto(f"{server.url}/approvals")
        row = bo.locator("#pending tr[data-request]")
        assert "ana" in row.inner_text() and "1.0.0" in row.inner_text()
        shot(bo, shots, "approvals")
        row.locator("button:has-text('Approve')").click()
        # Then: the deploy runs as his approval's job and prod serves 1.0.0
        bo.wait_for_selector("#flash.ok:has-text('traffic switched')", timeout=60_000)
        bo.goto(f"{server.url}/")
        assert bo.locator("tr[data-env='prod'] .version").first.inner_text() == "1.0.0"
        bo.goto(f"{server.url}/approvals/1")  # where notifications link
        assert "bo" in bo.inner_text("#decided tr[data-request='1'] .badge-used >> xpath=../..")

        # When: ana rolls dev back with one click, after reading the plan
        ana.goto(f"{server.url}/environments/dev")
        ana.click("#rollback")
        plan = ana.inner_text("#plan")
        assert "1.0.1 → 1.0.0" in plan
        assert "DROP COLUMN channel" in plan and "channel" in ana.inner_text("ul.dropped")
        shot(ana, shots, "rollback-plan")
        ana.click("#confirm-rollback")
        # Then: it runs, and its page says it succeeded
        ana.wait_for_url("**/environments/dev/deployments/*", timeout=60_000)
        ana.wait_for_selector("h1 .badge-succeeded")
        assert "rollback" in ana.inner_text("h1").lower()
    finally:
        load.stop()

    # and the audit log has the rollback by ana from the dashboard, the chain verified
    ana.goto(f"{server.url}/audit")
    assert ana.get_attribute("#verify", "data-ok") == "true"
    mine = ana.locator("#events tr[data-action='rollback']")
    assert "ana (dashboard)" in mine.first.inner_text()
    shot(ana, shots, "audit")
    bo_row = ana.locator("#events tr[data-action='approval'][data-outcome='approved']")
    assert "bo (dashboard)" in bo_row.first.inner_text()
    _keep_for_docs(shots)


def test_no_page_loads_anything_from_another_origin(
    project: Project, browser: Any, shots: Path
) -> None:
    project.release("1.0.0")
    project.cli("deploy", "1.0.0", check=True)
    user(project, "vi", "viewer")
    project.cli(
        "freeze",
        "add",
        "dev",
        "double-11",
        "--zone",
        "Asia/Shanghai",
        "--start",
        "11-01",
        "--end",
        "11-12",
        check=True,
    )
    server = Server(project)
    page = log_in(browser, server.url, "vi")
    seen: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    pages = [
        "/",
        "/environments/dev",
        "/environments/dev/live",
        "/environments/dev/deployments/1",
        "/environments/dev/rollback",
        "/releases",
        "/approvals",
        "/freezes",
        "/audit",
        "/incidents",
        "/report",
    ]
    for path in pages:
        response = page.goto(f"{server.url}{path}")
        assert response is not None and response.status == 200, path
        page.wait_for_load_state("networkidle")
    assert [u for u in seen if not u.startswith(server.url + "/")] == []
    assert errors == []
    # the freeze calendar shows the window in Shanghai's time and in the viewer's (UTC here)
    page.goto(f"{server.url}/freezes")
    row = page.inner_text("table.freezes tbody tr")
    assert "double-11" in row and "00:00 CST (Asia/Shanghai)" in row and "16:00:00 (UTC)" in row
    # a viewer sees no buttons that act; a wrong address says what exists
    page.goto(f"{server.url}/environments/dev")
    assert page.locator("form.deploy, #rollback, [data-post]").count() == 0
    missing = page.goto(f"{server.url}/environments/dev/deployments/42")
    assert missing is not None and missing.status == 404
    assert "#1: deploy 1.0.0" in page.inner_text("ul.known")
    shot(page, shots, "not-found")


def _keep_for_docs(shots: Path) -> None:
    """With ROLLWISE_DOCS_SCREENSHOTS=1, copy the screenshots to docs/img/."""
    if os.environ.get("ROLLWISE_DOCS_SCREENSHOTS") != "1":
        return
    docs = Path(__file__).resolve().parents[2] / "docs" / "img"
    for f in shots.glob("*.png"):
        shutil.copy(f, docs / f"dashboard-{f.name}")
    (shots / "copied.json").write_text(json.dumps(sorted(f.name for f in shots.glob("*.png"))))
