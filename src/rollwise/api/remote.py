"""The CLI against a team server: with ROLLWISE_URL (and ROLLWISE_TOKEN) set, `deploy`,
`rollback`, `promote`, `abort`, `status` and `history` ask the server, which runs them on
its state store, lock and audit log. Progress streams from the server's job as the events
it emits, into the same printers as a local run; a failure is the same error, with the
same exit code."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from rollwise.audit import Event
from rollwise.errors import ExitCode, RollwiseError, Unreachable, UsageError
from rollwise.events import EventBus

URL_ENV, TOKEN_ENV = "ROLLWISE_URL", "ROLLWISE_TOKEN"
FIELDS = {"action", "outcome", "actor", "env", "version", "git_commit", "reason", "data", "ts"}


class Refused(RollwiseError):
    """What the server said no to, with the exit code the local command would have had."""

    def __init__(self, body: dict[str, Any], status: int) -> None:
        super().__init__(
            str(body.get("error") or f"HTTP {status}"),
            where=str(body.get("where") or ""),
            hint=str(body.get("hint") or ""),
        )
        self.code = ExitCode(int(body.get("exit_code") or 1))
        self.body = body
        self.status = status


def configured() -> bool:
    return bool(os.environ.get(URL_ENV))


class Remote:
    def __init__(self, bus: EventBus, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get(URL_ENV, "")).rstrip("/")
        token = token or os.environ.get(TOKEN_ENV, "")
        if not token:
            raise UsageError(
                f"{URL_ENV} is set but {TOKEN_ENV} is not",
                hint="ask an admin for a token (`rollwise token create`) and export it",
            )
        self.bus = bus
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, read=None),
        )

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self.http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise Unreachable(
                f"the rollwise server at {self.url} does not answer: {e}",
                where=URL_ENV,
                hint="check the URL and that `rollwise server` runs there",
            ) from None
        data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code >= 400:
            raise Refused(data if isinstance(data, dict) else {}, r.status_code)
        return data

    def get(self, path: str, **params: Any) -> Any:
        query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
        return self._send("GET", f"/api/v1{path}" + (f"?{query}" if query else ""))

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._send("POST", f"/api/v1{path}", body or {})

    def run(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST an operation; a job (202) is followed to its end. The result as the CLI's
        --json prints it; a failed one raises Refused."""
        data = self._send("POST", f"/api/v1{path}", body or {})
        if "approval" in data and "id" not in data:  # the two-person rule: wait for it
            data = self.await_approval(data["approval"])
        if "state" in data and "id" in data:  # a job
            data = self.follow(str(data["id"]))
        if not data.get("ok", True):
            raise Refused(data, 200)
        return dict(data)

    def upload(self, meta: dict[str, Any], artifact: Path) -> dict[str, Any]:
        """Send a release made here (its artifact and record) to the server."""
        with artifact.open("rb") as body:
            try:
                r = self.http.put(
                    f"/api/v1/releases/{meta['version']}",
                    content=body,
                    headers={"X-Rollwise-Release": json.dumps(meta)},
                )
            except httpx.HTTPError as e:
                raise Unreachable(
                    f"the rollwise server at {self.url} does not answer: {e}", where=URL_ENV
                ) from None
        if r.status_code >= 400:
            raise Refused(r.json(), r.status_code)
        return dict(r.json())

    def await_approval(self, asked: dict[str, Any], every_s: float = 1.0) -> dict[str, Any]:
        """Wait while the request is pending; the job its last approval started."""
        rid = asked["id"]
        self.bus.emit(
            Event(
                "approval",
                "needed",
                asked["requested_by"],
                env=asked["env"],
                version=asked["version"],
                reason=f"request {rid} needs {asked['required']} approval(s) from someone "
                f"else: `rollwise approval approve {rid}`",
                record=False,
            )
        )
        while True:
            r = self.get(f"/approvals/{rid}")
            if r["state"] in ("rejected", "expired"):
                by = f" by {r['decided_by']}" if r.get("decided_by") else ""
                raise Refused(
                    {
                        "error": f"approval request {rid} was {r['state']}{by}"
                        + (f": {r['reason']}" if r.get("reason") else ""),
                        "hint": "nothing was deployed",
                        "exit_code": 1,
                    },
                    200,
                )
            if r.get("job"):
                return {"id": r["job"], "state": "running"}
            if r["state"] == "used":  # started by another server: watch the environment
                return self.settled(r["env"], r["version"], every_s)
            time.sleep(every_s)

    def settled(self, env: str, version: str, every_s: float) -> dict[str, Any]:
        while (self.get(f"/environments/{env}/status"))["environments"][env]["in_progress"]:
            time.sleep(every_s)
        last = self.get(f"/environments/{env}/history", limit=1)[0]
        ok = last["status"] == "succeeded" and last["to_version"] == version
        note = f"{env}: deployment {last['id']} to {last['to_version']} {last['status']}"
        return {"ok": ok, "message": note, "error": note, "exit_code": 0 if ok else 1}

    def follow(self, job_id: str) -> dict[str, Any]:
        with self.http.stream("GET", f"/api/v1/jobs/{job_id}/events") as r:
            if r.status_code >= 400:
                r.read()
                raise Refused(r.json(), r.status_code)
            for kind, payload in sse(r.iter_lines()):
                if kind == "end":
                    return dict(payload)
                event = {k: v for k, v in payload.items() if k in FIELDS}
                self.bus.emit(Event(**event, record=False))
        raise Unreachable(
            f"the server ended job {job_id}'s stream before its result",
            where=self.url,
            hint=f"`curl {self.url}/api/v1/jobs/{job_id}` shows how it ended",
        )


def sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) of a server-sent event stream."""
    kind, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", list[str]()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
