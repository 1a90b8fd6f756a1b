"""The team server's API fuzzed from its own OpenAPI document (schemathesis): whatever the
bodies, paths and queries, as admin, no answer is a server error; without a token, every
/api route answers 401."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from rollwise.demo import prepare_example
from tests.conftest import EXAMPLE, Project
from tests.e2e.test_server import Server

pytestmark = pytest.mark.xdist_group("server")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A server on the example app (1.0.0 released), and an admin token."""
    p = Project(prepare_example(EXAMPLE, tmp_path_factory.mktemp("fuzz")))
    p.release("1.0.0")
    admin = json.loads(
        p.cli("token", "create", "fuzz", "--role", "admin", "--json", check=True).stdout
    )["token"]
    server = Server(p, {}, "fuzz")
    yield server.url, admin
    for fn in p.cleanups:
        fn()
    p.stop_agents()


def test_no_input_makes_a_server_error_nor_passes_without_a_token(
    served: tuple[str, str],
) -> None:
    url, admin = served
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {op.path for op in operations} >= {"/api/v1/environments/{env}/deploy", "/health"}
    calls: list[tuple[str, int]] = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {admin}"}, timeout=30)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            calls.append((case.path, response.status_code))
            if case.path.startswith("/api/"):
                assert case.call(timeout=30).status_code == 401, (case.method, case.formatted_path)

        fuzz()
    assert len(calls) >= 5 * len(operations)
    assert any(400 <= code < 500 for _, code in calls)  # malformed input was tried
