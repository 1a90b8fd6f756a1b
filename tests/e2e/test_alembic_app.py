"""End to end on a real public Flask-Migrate application, I Hate Money (from PyPI), with
only a rollwise.yaml and its settings file (examples/ihatemoney): 6.1.5 deployed, then
7.2.1 (three Alembic revisions up), then rolled back to 6.1.5 (three down) on PostgreSQL,
with every project and bill kept. The app runs `upgrade` when it starts, so its rollback
runs the down revisions before 6.1.5 starts (`migrations.rollback: before_start`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, inspect, text

from rollwise.ports import free_port
from tests.component.conftest import pg_url  # noqa: F401 (fixture)
from tests.conftest import Project, require
from tests.helpers import incident_of, status

pytestmark = pytest.mark.xdist_group("ihatemoney")  # one worker installs the versions once

VERSIONS = {"6.1.5": "927ed575acbd", "7.2.1": "c941aaca38c2"}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ihatemoney"


CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rollwise-tests"


@pytest.fixture(scope="session")
def vendored() -> dict[str, Path]:
    """Each version with its dependencies, installed from PyPI into its own folder, kept
    between runs (the install takes a minute or two; a folder without its `.done` mark,
    from an install cut short, is installed again)."""
    out = {}
    for v in VERSIONS:
        target = CACHE / f"ihatemoney-{v}-py{sys.version_info.major}.{sys.version_info.minor}"
        out[v] = target
        if (target / ".done").exists():
            continue
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--target",
                str(target),
                f"ihatemoney=={v}",
                "psycopg2-binary==2.9.11",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        require(
            proc.returncode == 0,
            f"ihatemoney {v} from PyPI ({proc.stderr[-300:]})",
            "let pip reach PyPI",
        )
        (target / ".done").touch()
    return out


@pytest.fixture
def app(project_files: Project, vendored: dict[str, Path]) -> Iterator[Project]:
    """The project with a release of each version."""
    for v, folder in vendored.items():
        release_from(project_files, folder, v)
    yield project_files
    project_files.stop_agents()


def release_from(p: Project, vendor: Path, version: str) -> subprocess.CompletedProcess[str]:
    """A release of the project with `vendor` as its vendored packages."""
    shutil.rmtree(p.root / "vendor", ignore_errors=True)
    shutil.copytree(vendor, p.root / "vendor", symlinks=True)
    return p.cli("release", "create", "--version", version, check=True)


@pytest.fixture
def project_files(tmp_path: Path, pg_url: str) -> Project:  # noqa: F811
    """examples/ihatemoney as it is, but for its router port, database and interpreter."""
    p = Project(tmp_path / "ihatemoney")
    shutil.copytree(EXAMPLE, p.root)
    cfg = yaml.safe_load((p.root / "rollwise.yaml").read_text())
    for section in (cfg["run"], cfg["migrations"]):
        section["command"] = section["command"].replace("python3", sys.executable)
    cfg["environments"]["dev"] = {
        "router": {"listen": f"127.0.0.1:{free_port()}"},
        "database": {"url": pg_url},
    }
    (p.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def revision(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar())
    finally:
        engine.dispose()


def api(p: Project) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://{status(p)['router']}/api", timeout=10, auth=("trip", "secret")
    )


def add_bill(c: httpx.Client, what: str) -> None:
    r = c.post(
        "/projects/trip/bills",
        data={"date": "2026-11-01", "what": what, "payer": 1, "payed_for": [1, 2], "amount": 42},
    )
    assert r.status_code == 201, r.text


@pytest.mark.timeout(600)  # eleven commands on a real Flask app; slow on a loaded machine
def test_given_a_flask_migrate_app_when_deployed_across_revisions_and_rolled_back_then_no_row_lost(
    app,
    pg_url,  # noqa: F811
):
    app.cli("deploy", "6.1.5", check=True)
    assert revision(pg_url) == VERSIONS["6.1.5"]
    with api(app) as c:
        assert (
            c.post(
                "/projects",
                data={
                    "name": "Trip",
                    "id": "trip",
                    "password": "secret",
                    "contact_email": "a@b.example",
                },
            ).status_code
            == 201
        )
        for name in ("alice", "bob"):
            assert c.post("/projects/trip/members", data={"name": name}).status_code == 201
        add_bill(c, "dinner")

    up = app.cli("deploy", "7.2.1", check=True)
    assert revision(pg_url) == VERSIONS["7.2.1"], up.stdout
    with api(app) as c:
        add_bill(c, "train")
        assert {b["what"] for b in c.get("/projects/trip/bills").json()} == {"dinner", "train"}

    dry = app.cli("rollback", "--dry-run", check=True)
    preview = dry.stdout + dry.stderr
    assert "ALTER TABLE bill DROP COLUMN bill_type" in preview, preview
    assert "dropped: bill.bill_type: 2 values" in preview
    assert revision(pg_url) == VERSIONS["7.2.1"]  # a dry run changes nothing

    back = app.cli("rollback", "--yes", check=True)
    assert "6.1.5" in back.stdout
    assert revision(pg_url) == VERSIONS["6.1.5"]
    engine = create_engine(pg_url)
    try:
        assert "bill_type" not in {c["name"] for c in inspect(engine).get_columns("bill")}
    finally:
        engine.dispose()
    s = status(app)
    assert s["live_version"] == "6.1.5" and s["marks"]["7.2.1"] == "bad"
    with api(app) as c:  # the older release serves everything written before and after
        assert sorted(b["what"] for b in c.get("/projects/trip/bills").json()) == [
            "dinner",
            "train",
        ]

    # Forward again fails inside the app's own revision c941aaca38c2: its downgrade leaves
    # logging_preference a VARCHAR that its upgrade cannot cast back to the enum on
    # PostgreSQL. The three revisions ran in one transaction, so none of them stays, and
    # 6.1.5 keeps serving.
    why = f"{incident_of(app, '7.2.1')}: re-upgrade"
    again = app.cli("deploy", "7.2.1", "--force", "--reason", why)
    assert again.returncode != 0 and "c941aaca38c2" in again.stderr
    assert "schema is as before" in again.stderr
    assert revision(pg_url) == VERSIONS["6.1.5"]
    assert status(app)["live_version"] == "6.1.5"
    with api(app) as c:
        assert len(c.get("/projects/trip/bills").json()) == 2


def test_given_an_alembic_app_then_release_create_names_its_irreversible_revisions(
    project_files: Project, vendored: dict[str, Path]
) -> None:
    out = release_from(project_files, vendored["7.2.1"], "7.2.2")
    # 6.1.5 and later carry three revisions whose downgrade() is `pass`
    warned = out.stdout + out.stderr
    for rev in ("a67119aa3ee5", "b78f8a8bdb16", "f629c8ef4ab0"):
        assert f"{rev}_" in warned and "irreversible" in warned
