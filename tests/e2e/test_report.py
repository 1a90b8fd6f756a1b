"""`rollwise report` on a real history of the example app: two deployments and a rollback."""

from __future__ import annotations

import json

from rollwise.errors import ExitCode


def test_given_deploys_and_a_rollback_then_the_report_counts_them(project):
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    project.cli("deploy", "1.1.0", check=True)
    project.cli("rollback", "--yes", check=True)
    page = project.root / "report.html"
    data = json.loads(
        project.cli("report", "--since", "1d", "--json", "--html", str(page), check=True).stdout
    )
    dev = data["environments"]["dev"]
    assert (dev["deployments"], dev["changes"], dev["change_failures"], dev["rollbacks"]) == (
        2,
        2,
        1,
        1,
    )
    assert dev["change_failure_rate"] == 0.5 and dev["per_day"] == 2.0
    assert dev["lead_time_s"]["count"] == 2 and dev["lead_time_s"]["median"] >= 0
    assert dev["restore_s"]["count"] == 1 and dev["restore_s"]["median"] > 0
    html = page.read_text()
    assert html.count('<img alt="" src="data:image/png;base64,') == 2
    assert "<td>dev</td><td>2</td><td>2.0</td>" in html
    text = project.cli("report", "--since", "1d", check=True).stdout
    assert "50.0%" in text and "dev" in text
    bad = project.cli("report", "--since", "soon")
    assert bad.returncode == ExitCode.USAGE and "--since 'soon' is not a duration" in bad.stderr
