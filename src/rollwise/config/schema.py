"""The `rollwise.yaml` schema. Field descriptions become docs/config.md."""

from __future__ import annotations

import itertools
import json
import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rollwise import freeze
from rollwise.domain import bundle_order
from rollwise.ports import parse_address

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildConfig(Strict):
    command: str | None = Field(
        None,
        description="Shell command run before packaging (for example `npm ci && npm run "
        "build`), in a temporary copy of the files `source` would pack: untracked and ignored "
        "files are not there, and the build cannot change the project. What it makes is "
        "packed, less `.rollwiseignore` and `exclude` (`.gitignore` only chose what it "
        "started from). A non-zero exit stops `release create`.",
    )
    exclude: list[str] = Field(
        default_factory=lambda: [".git", ".rollwise", ".venv", "__pycache__", "*.pyc"],
        description="Patterns, in `.gitignore` syntax, always left out of the artifact "
        "(whatever `.gitignore` and `.rollwiseignore` in `source` say).",
    )


class RunConfig(Strict):
    command: str = Field(
        description="Command that starts one instance, run in the unpacked release directory. "
        "`{port}` is replaced by the instance's port, which is also in `$PORT`; `{host}` by "
        "the address it should listen on (`127.0.0.1` locally, the host's `bind` on a "
        "fleet), also in `$HOST`.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for every instance."
    )


class HealthConfig(Strict):
    path: str = Field("/health", description="HTTP path that answers 2xx when ready.")
    timeout_s: float = Field(2.0, gt=0, description="Timeout of one health request.")
    interval_s: float = Field(0.2, gt=0, description="Pause between health requests.")
    ready_timeout_s: float = Field(
        30.0, gt=0, description="How long a new instance may take to become ready."
    )
    successes: int = Field(
        2, ge=1, description="Consecutive successful health requests needed to be ready."
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/', for example /health")
        return v


class StopConfig(Strict):
    drain_timeout_s: float = Field(
        15.0,
        ge=0,
        description="How long to wait for in-flight requests on the old "
        "instances leaving at once (one wait for all of them, not one each).",
    )
    grace_s: float = Field(
        10.0, ge=0, description="How long an instance may take to exit after SIGTERM."
    )


HEADER_NAME_RE = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"  # an HTTP token


class StickyConfig(Strict):
    cookie: str | None = Field(
        None,
        pattern=HEADER_NAME_RE,
        description="Cookie whose value names a client (a cart or session id): requests "
        "with the same value stay on one version while it has weight.",
    )
    header: str | None = Field(
        None,
        pattern=HEADER_NAME_RE,
        description="Or a request header whose value names a client (e.g. X-User-Id).",
    )
    max_clients: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="Clients remembered (builtin: least recently seen forgotten first; "
        "haproxy: the stick table's size). A forgotten client is placed again.",
    )

    @model_validator(mode="after")
    def _one(self) -> StickyConfig:
        if (self.cookie is None) == (self.header is None):
            raise ValueError("sticky needs exactly one of `cookie` or `header`")
        return self


class CanaryHeader(Strict):
    header: str = Field(pattern=HEADER_NAME_RE, description="Request header, e.g. X-Canary.")
    values: list[str] = Field(
        min_length=1,
        description="Exact values that send a request to the canary, e.g. `[always]`, or a "
        "staff allowlist of user ids.",
    )

    @field_validator("values")
    @classmethod
    def _plain(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not re.fullmatch(r"[!$-&(-+\-.-\[\]-~]+", x)]
        if bad:
            raise ValueError(
                f"{bad}: values are printable, without spaces, quotes, '#', ',' or backslash"
            )
        return v


class RouterLimits(Strict):
    max_head_bytes: int = Field(
        65536,
        ge=1024,
        le=1 << 20,
        description="Largest request head (431 above it).",
    )
    max_body_bytes: int = Field(
        100 << 20,
        ge=0,
        description="Largest request body (413 above it); streamed, not held in memory.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time for a request head to arrive once started (408).",
    )
    idle_timeout_s: float = Field(
        75.0,
        gt=0,
        description="A keep-alive client connection idle this long is closed.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Connecting to an instance.")
    response_timeout_s: float = Field(
        60.0,
        gt=0,
        description="From a request sent to its response head (504); a "
        "streamed body (SSE) may then take as long as it needs.",
    )


class RouterConfig(Strict):
    type: Literal["builtin", "haproxy", "caddy", "kubernetes"] = Field(
        "builtin",
        description="`builtin`: rollwise's embedded router (started by rollwise). `haproxy`: "
        "an HAProxy you run, driven through its runtime API. `caddy`: a Caddy you run, driven "
        "through its admin API. `kubernetes`: the HTTPRoute's backendRefs weights (the "
        "default, and the only router, of `target: {type: kubernetes}`).",
    )
    listen: str = Field(
        "127.0.0.1:8080",
        description="Address clients use (`host:port`). The builtin router listens here.",
    )
    admin: str | None = Field(
        None,
        description="haproxy: path of the admin socket (`stats socket ... level admin`). "
        "caddy: admin API URL, for example http://127.0.0.1:2019.",
    )
    backend: str = Field(
        "rollwise", description="haproxy: backend name; caddy: `@id` of the reverse_proxy."
    )
    slots: list[str] = Field(
        default_factory=lambda: ["blue", "green"],
        description="haproxy: server names in the backend that rollwise points at instances.",
    )
    sticky: StickyConfig | None = Field(
        None,
        description="builtin, haproxy: keep each client on the version it was first sent "
        "to, so a cart does not flip mid-canary. Weights then place new clients; a client "
        "moves only when its version's weight becomes 0 or it is removed.",
    )
    canary_headers: list[CanaryHeader] = Field(
        default_factory=list,
        description="builtin, haproxy: requests with one of these header values go to the "
        "canary (the newest version with weight), whatever the weights.",
    )
    canary_map: str | None = Field(
        None,
        description="haproxy with canary_headers: path of the map file haproxy.cfg reads the "
        "canary's server from (rollwise writes it and updates it at run time).",
    )
    limits: RouterLimits = Field(
        default_factory=RouterLimits,
        description="builtin: sizes and timeouts.",
    )
    trust_forwarded: bool = Field(
        False,
        description="builtin: keep the X-Forwarded-For/-Proto/-Host a client sends (set it "
        "when a proxy you run, e.g. a TLS terminator, is in front); otherwise they are "
        "replaced with what the router sees.",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_address(v)  # ValueError says what is expected
        return v

    @model_validator(mode="after")
    def _admin(self) -> RouterConfig:
        if self.type in ("haproxy", "caddy") and not self.admin:
            raise ValueError(f"router type {self.type!r} needs `admin`")
        if self.type == "kubernetes" and (self.sticky or self.canary_headers):
            raise ValueError(
                "the kubernetes router does not support sticky or canary_headers: route "
                "by header with HTTPRoute matches of your own"
            )
        if self.type == "caddy" and (self.sticky or self.canary_headers):
            raise ValueError(
                "the caddy router does not support sticky or canary_headers: use builtin or haproxy"
            )
        if self.type == "haproxy" and self.canary_headers and not self.canary_map:
            raise ValueError(
                "haproxy with canary_headers needs `canary_map` (a map file haproxy.cfg reads)"
            )
        return self

    @property
    def host(self) -> str:
        return parse_address(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_address(self.listen)[1]


HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class HostConfig(Strict):
    address: str = Field(description="Host name or IP address the controller connects to.")
    name: str | None = Field(
        None,
        description="Short name shown in progress and status (default: `address`).",
    )
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    user: str | None = Field(None, description="SSH user (default: `ssh.user`).")
    key_file: str | None = Field(
        None,
        description="Private key for this host (default: `ssh.key_file`).",
    )
    bind: str | None = Field(
        None,
        description="Address the host's instances listen on, which the router and health "
        "checks reach (default: `address`). `{host}` in `run.command` is replaced by it.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Free-form labels (zone, rack), shown in status.",
    )

    @field_validator("address", "name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not HOST_NAME_RE.match(v):
            raise ValueError(
                f"{v!r}: use letters, digits, '.', '-' and '_' (a DNS name or an IPv4 address)"
            )
        return v

    @property
    def label(self) -> str:
        return self.name or self.address

    @property
    def listen_host(self) -> str:
        return self.bind or self.address


class SSHConfig(Strict):
    user: str = Field("root", description="SSH user for hosts that name none.")
    key_file: str | None = Field(
        None,
        description="Private key for hosts that name none (default: the SSH agent and "
        "`~/.ssh/id_*`).",
    )
    known_hosts: str = Field(
        "~/.ssh/known_hosts",
        description="Host keys the controller trusts. An unknown or changed key is refused; "
        "`rollwise hosts trust HOST` adds one on purpose.",
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Timeout of one SSH connect.")
    command_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Timeout of one command or agent call on a host.",
    )
    connect_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Attempts to connect to a host, with backoff (connecting is idempotent; "
        "commands are not retried).",
    )
    concurrency: int = Field(
        50,
        ge=1,
        le=1000,
        description="Hosts worked on at once (connects, uploads).",
    )
    jump_host: str | None = Field(
        None,
        description="`[user@]host[:port]` every connection goes through (a bastion).",
    )
    root: str = Field(
        "/srv/rollwise",
        description="Folder on each host that holds rollwise's agent, releases and logs.",
    )
    python: str = Field("python3", description="Python 3.11+ on each host, runs the agent.")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v.startswith("/") or len(v) > 60:
            raise ValueError(
                f"{v!r}: must be an absolute path of at most 60 characters "
                "(the agent's socket lives under it)"
            )
        return v.rstrip("/") or "/"


class PortsConfig(Strict):
    first: int = Field(ge=1, le=65535, description="Lowest port an instance may listen on.")
    last: int = Field(ge=1, le=65535, description="Highest port an instance may listen on.")

    @model_validator(mode="after")
    def _order(self) -> PortsConfig:
        if self.first > self.last:
            raise ValueError(f"first ({self.first}) is above last ({self.last})")
        return self

    @property
    def span(self) -> range:
        return range(self.first, self.last + 1)


class TargetConfig(Strict):
    type: Literal["local", "ssh", "container", "kubernetes"] = Field(
        "local",
        description="`local`: instances run as processes on this machine. `ssh`: instances "
        "run on `hosts`, each driven by its own rollwise agent over SSH; the router is the "
        "front that balances across them. `container`: instances run as containers of the "
        "release's image (`image`) through podman or docker on this machine. `kubernetes`: "
        "each release is a Deployment and a Service of its image in a cluster "
        "(`kubernetes` settings), traffic split by a Gateway API HTTPRoute or ingress-nginx "
        "canary Ingresses (docs/kubernetes.md).",
    )
    hosts: list[HostConfig] = Field(
        default_factory=list,
        description="ssh: the hosts of this environment; `instances` run on each.",
    )
    ssh: SSHConfig = Field(default_factory=SSHConfig, description="ssh: connection settings.")
    ports: PortsConfig | None = Field(
        None,
        description="local: the range instances listen in, both ends included, "
        "for example `{first: 20000, last: 29999}` (to fit a firewall, or to keep clear of "
        "other services). Each new instance gets a random free port of it; one another "
        "process holds is passed over. Unset: from 10000 up to the kernel's ephemeral range "
        "(`ip_local_port_range`).",
    )
    runtime: Literal["process", "container"] = Field(
        "process",
        description="ssh: how instances run on each host. `process`: started by rollwise's "
        "agent there (`rollwise hosts setup` installs it). `container`: containers of the "
        "release's image (`image`), through podman or docker on the host; no agent.",
    )

    @model_validator(mode="after")
    def _hosts(self) -> TargetConfig:
        if self.type != "local" and self.ports:
            raise ValueError("`ports` is supported with `type: local` only, so far")
        if self.type == "ssh" and not self.hosts:
            raise ValueError(
                "target type 'ssh' needs `hosts`, e.g. [{address: 10.0.0.2}, {address: 10.0.0.3}]"
            )
        if self.type != "ssh" and self.hosts:
            raise ValueError("`hosts` needs `type: ssh`")
        if self.type != "ssh" and self.runtime != "process":
            raise ValueError(
                "`runtime` is for SSH hosts (`type: ssh`); containers on this "
                "machine are `type: container`"
            )
        labels = [h.label for h in self.hosts]
        if dup := sorted({x for x in labels if labels.count(x) > 1}):
            raise ValueError(f"host {dup[0]!r} is listed twice")
        return self

    def host(self, label: str) -> HostConfig:
        for h in self.hosts:
            if label in (h.label, h.address):
                return h
        raise KeyError(label)


COMPARISONS = ("<=", ">=", "==", "!=", "<", ">")


def parse_expectation(text: str) -> tuple[str, Any]:
    """'< 60' -> ('<', 60); the right side is a JSON literal (number, true, "text", null)."""
    for op in COMPARISONS:
        if text.strip().startswith(op):
            raw = text.strip()[len(op) :].strip()
            try:
                return op, json.loads(raw)
            except ValueError:
                raise ValueError(
                    f"{text!r}: {raw!r} is not a JSON value; quote text as '== \"ok\"'"
                ) from None
    raise ValueError(f"{text!r} must start with one of {' '.join(COMPARISONS)}, e.g. '< 60'")


class CheckBase(Strict):
    name: str = Field(description="Shown in status, logs and the audit log.")
    timeout_s: float = Field(5.0, gt=0, description="A check that takes longer is inconclusive.")


class PrometheusCheck(CheckBase):
    type: Literal["prometheus"] = Field(description="A PromQL query with thresholds.")
    url: str = Field(description="Prometheus base URL, for example http://127.0.0.1:9090.")
    query: str = Field(
        description="PromQL returning one number. `{env}`, `{canary}` and `{stable}` are "
        "replaced by the environment and the two versions.",
    )
    max: float | None = Field(None, description="Fail when the value is above this.")
    min: float | None = Field(None, description="Fail when the value is below this.")

    @model_validator(mode="after")
    def _bounds(self) -> PrometheusCheck:
        if self.max is None and self.min is None:
            raise ValueError(f"check {self.name!r} needs `max` or `min`")
        return self


class HttpCheck(CheckBase):
    type: Literal["http"] = Field(description="An HTTP request with expectations.")
    url: str = Field(
        description="`{router}` is the environment's router URL, `{preview}` a new instance's "
        "own URL (blue-green preview), e.g. `{router}/health`.",
    )
    method: Literal["GET", "POST", "HEAD"] = Field("GET", description="HTTP method.")
    body: str | None = Field(None, description="Request body (POST).")
    expect_status: int = Field(200, ge=100, le=599, description="Status that passes.")
    json_fields: dict[str, str] = Field(
        default_factory=dict,
        alias="json",
        description='Dotted JSON path -> comparison, e.g. `sync.lag_s: "< 60"`, '
        '`token.valid: "== true"`.',
    )
    idempotent: bool = Field(
        True,
        description="false: the request is never repeated (a 429 or error is final).",
    )

    @field_validator("json_fields")
    @classmethod
    def _expectations(cls, v: dict[str, str]) -> dict[str, str]:
        for text in v.values():
            parse_expectation(text)
        return v


class CommandCheck(CheckBase):
    type: Literal["command"] = Field(
        description="A shell command: exit 0 passes, 75 (EX_TEMPFAIL) is inconclusive, "
        "anything else fails."
    )
    run: str = Field(description="Shell command, run in the project directory.")


Check = Annotated[PrometheusCheck | HttpCheck | CommandCheck, Field(discriminator="type")]


class CanaryStep(Strict):
    weight: int = Field(ge=1, le=100, description="Percent of requests sent to the new release.")
    pause_s: float | None = Field(
        None,
        ge=0,
        description="How long this step is watched; default `strategy.pause_s`.",
    )
    until_promote: bool = Field(
        False,
        description="Wait at this step for `rollwise promote` (analysis keeps running).",
    )


class StrategyConfig(Strict):
    type: Literal["all-at-once", "blue-green", "canary", "rolling"] = Field(
        "all-at-once",
        description="`all-at-once`: switch every request once the new instances are ready. "
        "`blue-green`: check the new release on its own address, then switch; keep the old "
        "one warm for `bake_s`. `canary`: move traffic in `steps`, analysing each. "
        "`rolling`: replace instances `batch_size` at a time (new batch started and ready "
        "before an old one leaves, so capacity never drops), analysing each batch.",
    )
    batch_size: int = Field(
        1,
        ge=1,
        le=10000,
        description="rolling: instances replaced per batch.",
    )
    batches: list[int | str] = Field(
        default_factory=list,
        description="rolling: instead of `batch_size`, how many instances run the new release "
        "after each batch, as a count or a percent of all, increasing to `100%`: "
        "`[1, '10%', '100%']` on a fleet with one instance per host is a host canary (one "
        "host, a tenth of the hosts, then all), each batch analysed before the next.",
    )
    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=w) for w in (1, 10, 50, 100)],
        description="canary: percent of traffic at each step, increasing and ending at 100. "
        "An item is a number or `{weight, pause_s, until_promote}`.",
    )
    pause_s: float = Field(60.0, ge=0, description="canary: how long each step is watched.")

    @field_validator("batches")
    @classmethod
    def _batches(cls, v: list[int | str]) -> list[int | str]:
        if not v:
            return v
        for b in v:
            if (isinstance(b, int) and b < 1) or (
                isinstance(b, str) and not (re.fullmatch(r"\d{1,3}%", b) and 0 < int(b[:-1]) <= 100)
            ):
                raise ValueError(
                    f"{b!r}: each batch is a count of instances (1 or more) or a "
                    "percent such as '10%'"
                )
        if v[-1] != "100%":
            raise ValueError(f"{v} must end with '100%' (every instance replaced)")
        pct = [int(b[:-1]) for b in v if isinstance(b, str)]
        if pct != sorted(set(pct)) or [b for b in v if isinstance(b, int)] != sorted(
            {b for b in v if isinstance(b, int)}
        ):
            raise ValueError(f"{v}: batches must increase, e.g. [1, '10%', '100%']")
        return v

    bake_s: float | None = Field(
        None,
        ge=0,
        description="After the switch, the old release stays running this long, ready to take "
        "traffic back at once, while analysis goes on. Default 0 for all-at-once and "
        "rolling, else 60.",
    )
    on_failure: Literal["rollback", "ask"] = Field(
        "rollback",
        description="`rollback`: failed analysis rolls back at once. `ask`: pause and wait for "
        "`rollwise rollback` or `rollwise promote`; after `confirm_timeout_s` it rolls back.",
    )
    confirm_timeout_s: float = Field(300.0, gt=0, description="ask: time to answer.")
    max_pause_s: float = Field(
        3600.0,
        gt=0,
        description="Longest wait at one step for a promote or for conclusive analysis; then "
        "the deployment is aborted and the old release keeps serving.",
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _short_steps(cls, v: Any) -> Any:
        return [{"weight": x} if isinstance(x, int) else x for x in v] if isinstance(v, list) else v

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.weight for s in v]
        if not weights or weights[-1] != 100:
            raise ValueError(f"steps {weights} must end at 100")
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError(f"steps {weights} must increase, e.g. [1, 10, 50, 100]")
        return v

    @property
    def bake(self) -> float:
        return (
            self.bake_s
            if self.bake_s is not None
            else (0.0 if self.type in ("all-at-once", "rolling") else 60.0)
        )


class RouterAnalysisConfig(Strict):
    enabled: bool = Field(True, description="Compare the new release with the old one.")
    alpha: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="Chance of rolling back a release that is no worse (the sequential test "
        "holds this at every look).",
    )
    max_error_rate: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Guard rail: fail at once when the new release's error rate (5xx and "
        "connection errors) is above this, once it has `min_requests`.",
    )
    min_requests: int = Field(
        50,
        ge=1,
        description="Requests the new release needs before a step can pass.",
    )
    latency: bool = Field(True, description="Also test for slower responses.")
    latency_quantiles: list[float] = Field(
        default_factory=lambda: [0.5, 0.9, 0.99],
        description="A request is slow when it takes longer than this quantile of the old "
        "release's latency (fixed once the old release has served 200 requests); for each "
        "quantile a sequential test asks whether the new release has more slow requests. "
        "Several quantiles catch both a general slowdown and a worse tail.",
    )

    latency_min_ms: float = Field(
        5.0,
        ge=0,
        description="A request is never counted slow below this: differences under it (a new "
        "process's first requests, a busy host's scheduling) are not judged.",
    )

    latency_warmup_requests: int = Field(
        50,
        ge=0,
        description="The new release's first requests are not judged for latency: a new "
        "process warms its imports, caches and connections. Errors are judged from the first "
        "request.",
    )

    @field_validator("latency_quantiles")
    @classmethod
    def _quantiles(cls, v: list[float]) -> list[float]:
        if not v or not all(0.0 < q < 1.0 for q in v):
            raise ValueError(f"{v}: each quantile must be between 0 and 1, e.g. [0.5, 0.99]")
        return v


class AnalysisConfig(Strict):
    interval_s: float = Field(1.0, gt=0, le=60, description="Time between looks.")
    checks_every_s: float = Field(
        10.0,
        gt=0,
        description="Time between runs of `checks` (and at the end of a step).",
    )
    dry_run: bool = Field(
        False,
        description="Evaluate and record every decision, never act on a failure (report what "
        "would have happened). For tuning thresholds.",
    )
    router: RouterAnalysisConfig = Field(
        default_factory=RouterAnalysisConfig,
        description="Router metrics analysis.",
    )
    checks: list[Check] = Field(
        default_factory=list,
        description="Prometheus, HTTP and command checks.",
    )


COMMAND_KEYS = ("version", "current", "up", "down")


class MigrationsConfig(Strict):
    type: Literal["sql", "alembic", "command"] = Field(
        "sql",
        description="`sql`: a folder of `<version>_<name>.up.sql` / `.down.sql` files. "
        "`alembic`: the app's own Alembic revisions, run by its `alembic` or Flask-Migrate "
        "`flask db` command. `command`: any tool (Flyway, Liquibase) through the `version`, "
        "`current`, `up` and `down` commands.",
    )
    dir: str = Field(
        "migrations",
        description="`sql`: the folder of SQL files. `alembic` with `layout: flask`: the "
        "Flask-Migrate folder (with `env.py` and `versions/`). Relative to `source`.",
    )
    layout: Literal["plain", "flask"] = Field(
        "plain",
        description="`alembic` only. `plain`: `alembic -c <config>`. `flask`: Flask-Migrate, "
        "`flask db ... -d <dir>` (set `FLASK_APP` in `env` unless the app is `app.py`).",
    )
    config: str = Field(
        "alembic.ini",
        description="`alembic`, `layout: plain`: the app's alembic.ini.",
    )
    command: str | None = Field(
        None,
        description="`alembic`: the command before `upgrade`/`downgrade`, run in the release "
        "directory with the interpreter that has the app's dependencies. Default `python3 -m "
        "alembic -c {config}` (plain) or `python3 -m flask db` (flask).",
    )
    version: str | None = Field(
        None,
        description="`command`: prints the schema version the release needs; run in the "
        "source at `release create`.",
    )
    current: str | None = Field(
        None,
        description="`command`: prints the database's current schema version.",
    )
    up: str | None = Field(
        None,
        description="`command`: migrates up to `{version}`, e.g. "
        "`flyway migrate -target={version}`.",
    )
    down: str | None = Field(
        None,
        description="`command`: migrates down to `{version}`, e.g. "
        "`flyway undo -target={version}`.",
    )
    preview: str | None = Field(
        None,
        description="`command`: prints the SQL `down` would run (`rollback --dry-run`).",
    )
    transactional: bool = Field(
        False,
        description="`command`: the tool undoes a failed run itself (Flyway on PostgreSQL). "
        "When false, a failure halfway restores the pre-deploy backup.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables for the migration commands, on top of the "
        "instances' (`run.env`, the environment's `env` and secrets) and `DATABASE_URL`.",
    )
    rollback: Literal["after_switch", "before_start"] = Field(
        "after_switch",
        description="When a rollback runs the down migrations. `after_switch`: once traffic "
        "is back on the older release (it must start on the newer schema). `before_start`: "
        "before the older release starts, for apps that refuse a newer schema at start "
        "(those that migrate on start); the newer release serves on the older schema "
        "until the switch.",
    )
    timeout_s: float = Field(600.0, gt=0, description="Longest run of one migration command.")
    table_lock_timeout_s: float = Field(
        5.0,
        gt=0,
        description="`sql`: longest wait of one migration statement for a table lock "
        "(PostgreSQL `lock_timeout`; MySQL/MariaDB `lock_wait_timeout` and "
        "`innodb_lock_wait_timeout`, in whole seconds). While an `ALTER TABLE` waits, the "
        "app's writes to that table queue behind it; past this the migration fails, naming "
        "the file and statement, and the deploy stops.",
    )
    version_table: str = Field(
        "alembic_version",
        description="`alembic`: the app's version table.",
    )

    @model_validator(mode="after")
    def _complete(self) -> MigrationsConfig:
        if self.type == "command":
            missing = [k for k in COMMAND_KEYS if not getattr(self, k)]
            if missing:
                raise ValueError(f"type command needs {', '.join(missing)}")
        return self


class UrlOrSecret(Strict):
    """A service address given inline (`url`) or, when it holds a password, as a secret."""

    url: str | None = Field(None, description="The URL.")
    url_secret: str | None = Field(
        None,
        description="Name of a secret holding the URL (it is never printed).",
    )

    @model_validator(mode="after")
    def _one_url(self) -> UrlOrSecret:
        if (self.url is None) == (self.url_secret is None):
            raise ValueError("set exactly one of `url` and `url_secret`")
        return self


class DatabaseConfig(UrlOrSecret):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the app's database: `sqlite:///{shared}/app.db`, "
        "`postgresql+psycopg://user@host/db`, `mysql+pymysql://user@host/db`. `{shared}` is "
        "the environment's shared directory. Put passwords in `url_secret` instead.",
    )
    lock_timeout_s: float = Field(
        10.0,
        ge=0,
        description="How long to wait for another migration's lock.",
    )
    app_scheme: str = Field(
        "plain",
        description="The URL scheme the app gets in `DATABASE_URL`: `plain` (`postgresql://`, "
        "`mysql://`, `sqlite://`: no driver, the form most frameworks parse), `as-is` (the "
        "URL exactly as configured here), or a scheme such as `postgresql+psycopg2` or "
        "`postgres`. rollwise itself always connects with its own driver.",
        pattern=r"^(plain|as-is|[a-z][a-z0-9+]*)$",
    )
    backup: Literal["migrations", "always", "never"] = Field(
        "migrations",
        description="Back up before a deploy: `migrations` (when it carries migrations), "
        "`always`, or `never`. Backups live in `.rollwise/envs/<env>/backups/` with a "
        "manifest (sha256, row counts and checksums per table).",
    )
    keep_backups: int = Field(10, ge=1, description="Newest backups kept per environment.")


class RedisCache(UrlOrSecret):
    url: str | None = Field(None, description="redis://host:port/db")
    patterns: list[str] = Field(
        description="Key patterns to delete (SCAN MATCH + UNLINK; never KEYS or FLUSHALL), "
        "e.g. `order-sync:price:*`. `*` alone is refused: the instance may be shared.",
        min_length=1,
    )

    @field_validator("patterns")
    @classmethod
    def _not_everything(cls, v: list[str]) -> list[str]:
        for p in v:
            if p.strip("*?[]") == "":
                raise ValueError(
                    f"pattern {p!r} matches every key; name a prefix, e.g. 'order-sync:*'"
                )
        return v


class CdnPurge(Strict):
    url: str = Field(
        description="Purge webhook; rollwise POSTs JSON {app, env, version, previous} to it."
    )
    token_secret: str | None = Field(
        None,
        description="Secret sent as `Authorization: Bearer <value>`.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one call.")


class CachesConfig(Strict):
    redis: list[RedisCache] = Field(default_factory=list, description="Redis key patterns.")
    cdn: list[CdnPurge] = Field(default_factory=list, description="CDN purge webhooks.")
    static_dir: str | None = Field(
        None,
        description="Folder of static assets in the release (relative to `source`); "
        "`release create` warns about files whose names carry no content hash.",
    )


class KubernetesConfig(Strict):
    """Deploys on `target: {type: kubernetes}` and `rollwise kube manifests|apply`
    (docs/kubernetes.md)."""

    namespace: str = Field(
        "default",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Namespace of the objects.",
    )
    traffic: Literal["gateway-api", "ingress-nginx"] = Field(
        "gateway-api",
        description="How traffic is split between versions: an HTTPRoute's "
        "backendRefs weights (Gateway API), or ingress-nginx canary annotations.",
    )
    gateway: str = Field("", description="gateway-api: the Gateway the HTTPRoute attaches to.")
    hostnames: list[str] = Field(
        default_factory=list, description="Host names the route or Ingress serves."
    )
    port: int = Field(8000, ge=1, le=65535, description="Port the app listens on in its pod.")
    context: str | None = Field(None, description="kubeconfig context (default: current).")
    schema_version: str = Field(
        "1.37.0",
        description="Kubernetes version whose published schemas the manifests are checked against.",
    )


class MetricsConfig(Strict):
    listen: str | None = Field(
        None,
        description="Address (`host:port`) where `rollwise serve` also serves this "
        "environment's own `/metrics` and `/sd`. Unset: they are served at `serve`'s address "
        "only (`/metrics?env=NAME`, `/sd?env=NAME`).",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_address(v)  # ValueError says what is expected
        return v


class ApprovalsConfig(Strict):
    """The two-person rule (docs/approvals.md)."""

    required: int = Field(
        1, ge=1, le=5, description="Approvals from people other than the requester a deploy needs."
    )
    expire_h: float = Field(
        24.0, gt=0, le=720, description="Hours a request (and an approval) stays valid."
    )


class FreezeWindowConfig(Strict):
    """A time when deploys here are refused (docs/freeze.md); rollbacks stay allowed."""

    name: str = Field(
        description="Window name, shown when a deploy is refused (e.g. `double-11`).",
        pattern=NAME_RE.pattern,
    )
    zone: str = Field(
        description="IANA time zone `start` and `end` are in, e.g. `Asia/Shanghai`, "
        "`America/New_York`, `UTC`.",
    )
    start: str = Field(
        description="First day (and time) frozen: `YYYY-MM-DD[ HH:MM]` once, `MM-DD[ HH:MM]` "
        "every year, or a weekday of a month: `11/4thu+1` is the day after the fourth "
        "Thursday of November (`1st`..`4th` or `last`, `mon`..`sun`, `+N`/`-N` days).",
    )
    end: str = Field(
        description="Last day frozen, in the same forms: a day alone includes all of it; "
        "with a time the window ends at that minute. An end before the start in the year "
        "is the next year's (`12-20` .. `01-05`).",
    )

    @field_validator("start", "end", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> Any:
        """An unquoted `2026-11-01` reads as a YAML date: taken as written."""
        if isinstance(v, datetime):
            return v.strftime("%Y-%m-%d %H:%M")
        return v.isoformat() if isinstance(v, date) else v

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        freeze.zone(v)  # ValueError names close zones
        return v

    @field_validator("start", "end")
    @classmethod
    def _point(cls, v: str) -> str:
        freeze.parse_point(v)  # ValueError says which forms there are
        return v

    @model_validator(mode="after")
    def _window(self) -> FreezeWindowConfig:
        freeze.window(self.name, self.zone, self.start, self.end)
        return self


NotifyEvent = Literal[
    "deploy-started",
    "deploy-succeeded",
    "canary-failed",
    "rolled-back",
    "deploy-failed",
    "approval-needed",
    "freeze-break",
]


class NotificationConfig(Strict):
    """One channel people are told through (docs/notifications.md): Apprise URLs, the kinds
    of events it hears about, and how often."""

    name: str = Field(
        description="Channel name, shown in results and failures (never its URLs).",
        pattern=NAME_RE.pattern,
    )
    urls: list[str] = Field(
        default_factory=list,
        description="Apprise URLs, e.g. `slack://T/B/C/#ops`, `dingtalk://TOKEN/`, "
        "`wecombot://KEY`, `feishu://TOKEN`, `lark://TOKEN`, `mailtos://user:pass@host?to=a@b`, "
        "`jsons://host/path`. Tokens in a URL are secrets: prefer `url_secret`.",
    )
    url_secret: str | None = Field(
        None,
        description="Name of a secret holding the channel's URLs (whitespace between "
        "several); never printed.",
    )
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(get_args(NotifyEvent)),
        description="Kinds of event sent here: deploy-started, deploy-succeeded, "
        "canary-failed, rolled-back, deploy-failed, approval-needed, freeze-break (default: "
        "all).",
        min_length=1,
    )
    min_interval_s: float = Field(
        300.0,
        ge=0,
        description="The same kind of event for the same environment and version is sent "
        "once per this many seconds; repeats in between are counted into the next message.",
    )
    timeout_s: float = Field(
        5.0, gt=0, le=60, description="Connect and read timeout of one delivery."
    )

    @model_validator(mode="after")
    def _one_source(self) -> NotificationConfig:
        if bool(self.urls) == (self.url_secret is not None):
            raise ValueError(f"channel {self.name!r}: set exactly one of `urls` and `url_secret`")
        return self


class ObjectivesConfig(Strict):
    """What a rehearsed rollback must achieve here (`rollwise drill`, docs/drills.md)."""

    restore_s: float = Field(
        300.0, gt=0, description="Most seconds from the fault to the service restored."
    )
    detect_s: float | None = Field(
        None, gt=0, description="Most seconds from the fault to its first bad signal."
    )
    traffic_back_s: float | None = Field(
        None, gt=0, description="Most seconds from the fault to traffic back on the good release."
    )


class EnvironmentConfig(Strict):
    target: TargetConfig = Field(default_factory=TargetConfig, description="Where code runs.")
    router: RouterConfig = Field(
        default_factory=RouterConfig, description="Who sends requests to instances."
    )
    instances: int = Field(1, ge=1, le=64, description="Instances of the app per release.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for this environment."
    )
    secrets: list[str] = Field(
        default_factory=list,
        description="Names of secrets injected as environment variables; values come from "
        "`ROLLWISE_SECRET_<NAME>` or the environment's encrypted secrets file.",
    )
    strategy: StrategyConfig = Field(
        default_factory=StrategyConfig,
        description="How traffic moves to a new release.",
    )
    analysis: AnalysisConfig = Field(
        default_factory=AnalysisConfig,
        description="How a new release is judged.",
    )
    caches: CachesConfig = Field(
        default_factory=CachesConfig,
        description="Purged after every switch of a deploy or rollback (and after an "
        "automatic rollback), so no entry computed by the other release is served.",
    )
    database: DatabaseConfig | None = Field(
        None,
        description="The app's database, migrated with each release (`migrations`).",
    )
    rollback_window_h: float = Field(
        24.0,
        gt=0,
        description="How long after a release went live rolling it back may run down "
        "migrations (which drop what was written to the new schema since). After it, such "
        "a rollback needs `--force --reason TEXT`, recorded in the audit log; fix forward "
        "is the default.",
    )
    kubernetes: KubernetesConfig | None = Field(
        None,
        description="Kubernetes objects for this environment's releases (`rollwise kube`).",
    )
    production: bool = Field(
        False,
        description="Serves real users: `rollwise drill` refuses to rehearse here without "
        "`--force --reason TEXT` (recorded in the audit log).",
    )
    objectives: ObjectivesConfig = Field(
        default_factory=ObjectivesConfig,
        description="What a drill's rollback must achieve (`rollwise drill`).",
    )
    approvals: ApprovalsConfig | None = Field(
        None,
        description="Deploys here need approvals from other people, given through the team "
        "server (`rollwise approval approve`); rollbacks never do.",
    )
    freeze: list[FreezeWindowConfig] = Field(
        default_factory=list,
        description="Freeze windows: deploys inside one are refused unless glass is broken "
        "(`--break-freeze --reason TEXT`, audited); rollbacks are always allowed "
        "(docs/freeze.md). `rollwise freeze add` keeps more in the state store.",
    )
    notifications: list[NotificationConfig] = Field(
        default_factory=list,
        description="Channels told about deploys, failed canaries, rollbacks, approvals "
        "and freeze breaks here (docs/notifications.md).",
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig,
        description="Prometheus metrics and service discovery (`rollwise metrics`, `sd`).",
    )
    verify: list[Check] = Field(
        default_factory=list,
        description="Checklist run after every deploy and rollback (e.g. order sync lag, "
        "marketplace token); a failure after a deploy rolls it back.",
    )

    @field_validator("freeze")
    @classmethod
    def _freeze_names(cls, v: list[FreezeWindowConfig]) -> list[FreezeWindowConfig]:
        names = [w.name for w in v]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"freeze window {twice[0]!r} is named twice")
        return v

    @field_validator("notifications")
    @classmethod
    def _channel_names(cls, v: list[NotificationConfig]) -> list[NotificationConfig]:
        names = [c.name for c in v]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"notification channel {twice[0]!r} is named twice")
        return v

    @model_validator(mode="before")
    @classmethod
    def _cluster_routes(cls, data: Any) -> Any:
        """On Kubernetes the cluster routes: the router is the HTTPRoute, and the requests
        analysis counts are Prometheus's, not rollwise's router's."""
        target = data.get("target") if isinstance(data, dict) else None
        if getattr(target, "type", None) != "kubernetes" and not (
            isinstance(target, dict) and target.get("type") == "kubernetes"
        ):
            return data
        if not isinstance(data.get("router") or {}, dict):
            return data  # built in code, not read from a file
        router = {**(data.get("router") or {})}
        if router.setdefault("type", "kubernetes") != "kubernetes":
            raise ValueError(
                f"router type {router['type']!r} with `target: {{type: kubernetes}}`: the "
                "cluster routes (an HTTPRoute); remove `router.type`"
            )
        analysis = data.get("analysis") or {}
        if not isinstance(analysis, dict) or not isinstance(analysis.get("router") or {}, dict):
            return {**data, "router": router}
        counts = {**(analysis.get("router") or {})}
        if counts.setdefault("enabled", False):
            raise ValueError(
                "analysis.router.enabled with `target: {type: kubernetes}`: rollwise's "
                "router does not see the cluster's requests; judge canaries with "
                "`analysis.checks` of type prometheus (docs/kubernetes.md)"
            )
        return {**data, "router": router, "analysis": {**analysis, "router": counts}}

    @model_validator(mode="after")
    def _cluster_settings(self) -> EnvironmentConfig:
        kube = self.target.type == "kubernetes"
        if kube and self.kubernetes is None:
            raise ValueError(
                "`target: {type: kubernetes}` needs `kubernetes` settings, e.g. "
                "{namespace: shop, gateway: public}"
            )
        if self.router.type == "kubernetes" and not kube:
            raise ValueError("router type 'kubernetes' needs `target: {type: kubernetes}`")
        return self


class HooksConfig(Strict):
    pre_deploy: list[str] = Field(
        default_factory=list,
        description="Shell commands run in the release directory before the new instances "
        "start. A failure stops the deploy; nothing is switched.",
    )
    post_deploy: list[str] = Field(
        default_factory=list,
        description="Shell commands run after traffic is switched. A failure switches traffic "
        "back to the previous release.",
    )


class AuditConfig(Strict):
    """Signed checkpoints of the audit log, kept outside the state store (docs/audit.md)."""

    key_file: str | None = Field(
        None,
        description="Ed25519 private key that signs checkpoints; `~` and paths relative to "
        "this file work. Default: `$ROLLWISE_AUDIT_KEY_FILE`, else "
        "`$XDG_CONFIG_HOME/rollwise/audit-<app>.key` (`~/.config/...`). Created 0600 by "
        "`rollwise audit keygen` or by the first checkpoint. Keep it out of `.rollwise/`, "
        "the repository and backups of the state store.",
    )
    checkpoint_file: str | None = Field(
        None,
        description="Append-only JSON-lines file of signed checkpoints; the public key is "
        "written beside it as `<file>.pub`. Default: `$ROLLWISE_AUDIT_CHECKPOINT_FILE`, else "
        "`$XDG_STATE_HOME/rollwise/audit-<app>-<store>.jsonl` (`~/.local/state/...`), "
        "`<store>` naming the state store. Paths inside `.rollwise/` are refused.",
    )
    syslog: bool = Field(False, description="Also send every checkpoint to syslog.")
    syslog_address: str = Field(
        "/dev/log",
        description="Where syslog listens: a Unix socket path, or `host:port` (UDP).",
        pattern=r"^(/.*|[^/:\s]+:\d{1,5})$",
    )
    webhook_url: str | None = Field(
        None,
        description="Also POST every checkpoint as JSON to this URL.",
    )
    webhook_token_env: str | None = Field(
        None,
        description="Name of the environment variable holding the webhook's bearer token "
        "(sent as `Authorization: Bearer <value>`, never printed).",
    )


def _env_names(v: dict[str, EnvironmentConfig]) -> dict[str, EnvironmentConfig]:
    for name in v:
        if not NAME_RE.match(name):
            raise ValueError(f"environment name {name!r} must match {NAME_RE.pattern}")
    if not v:
        raise ValueError("needs at least one environment, e.g. `dev: {}`")
    return v


class ImageConfig(Strict):
    """Releases as container images (docs/containers.md)."""

    build: str | None = Field(
        None,
        description="Containerfile or Dockerfile (relative to `source`) that "
        "`release create` builds; the release records the image's ID.",
    )
    ref: str | None = Field(
        None,
        description="Instead of building: an existing image (`name:tag` or "
        "`name@sha256:...`), pulled when absent; the release records the ID it has then, so "
        "a tag that moves later changes nothing.",
    )
    cli: Literal["auto", "podman", "docker"] = Field(
        "auto", description="Container CLI; `auto`: podman if installed, else docker."
    )
    push: str | None = Field(
        None,
        description="Registry repository (`registry.example.com/shop/stock`) that "
        "`release create` pushes the image to, as `<push>:<version>`; the release records "
        "the pushed digest, and a machine without the image pulls it by that digest.",
    )
    tls_verify: bool = Field(
        True,
        description="Verify the registry's TLS certificate "
        "(false only for a registry on loopback).",
    )
    memory: str | None = Field(
        None, pattern=r"^\d+[bkmg]?$", description="Memory limit per container, e.g. 256m."
    )
    cpus: float | None = Field(None, gt=0, description="CPU limit per container, e.g. 0.5.")
    stop_timeout_s: float = Field(
        10.0, ge=0, description="Seconds between SIGTERM and SIGKILL when a container stops."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ImageConfig:
        if (self.build is None) == (self.ref is None):
            raise ValueError(
                "name exactly one of `build` (a Containerfile) and `ref` (an existing image)"
            )
        return self


class ProjectConfig(Strict):
    app: Annotated[str, Field(pattern=NAME_RE.pattern)] = Field(
        description="Application name: lower case letters, digits and '-'."
    )
    source: str = Field(".", description="Directory packaged into releases, relative to the file.")
    build: BuildConfig = Field(default_factory=BuildConfig, description="How to build.")
    run: RunConfig = Field(description="How to run one instance.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Readiness check.")
    stop: StopConfig = Field(default_factory=StopConfig, description="Draining and stopping.")
    keep_releases: int = Field(
        5,
        ge=3,
        description="Releases kept on disk (at least 3). Older ones are removed, never the "
        "live release, a rollback target or the last known-good release of any environment.",
    )
    hooks: HooksConfig = Field(default_factory=HooksConfig, description="Deploy hooks.")
    migrations: MigrationsConfig | None = Field(
        None,
        description="Database migrations shipped in each release.",
    )
    image: ImageConfig | None = Field(
        None,
        description="Build (or take) a container image with each release; "
        "environments with `target: {type: container}` (or `runtime: container` on SSH "
        "hosts) run it.",
    )
    audit: AuditConfig = Field(
        default_factory=AuditConfig,
        description="Where the audit log's signed checkpoints and their key live, and "
        "where copies go (syslog, webhook).",
    )
    dashboard_url: str | None = Field(
        None,
        description="Base URL of the dashboard; notifications link to "
        "`{dashboard_url}/environments/ENV/deployments/ID`.",
        pattern=r"^https?://",
    )
    environments: dict[str, EnvironmentConfig] = Field(
        default_factory=lambda: {"dev": EnvironmentConfig()},
        description="Environments by name (dev, staging, prod...), each isolated.",
    )

    _check_envs = field_validator("environments")(_env_names)

    @model_validator(mode="after")
    def _image_for_containers(self) -> ProjectConfig:
        if self.image is None and (
            names := [
                n
                for n, e in self.environments.items()
                if e.target.type in ("container", "kubernetes") or e.target.runtime == "container"
            ]
        ):
            raise ValueError(
                f"environment {names[0]!r} runs containers: add `image: {{build: "
                "Containerfile}}` (or `ref:`) so releases carry an image"
            )
        return self

    @model_validator(mode="after")
    def _distinct_listen(self) -> ProjectConfig:
        seen: dict[str, str] = {}
        for name, env in self.environments.items():
            if env.router.type == "kubernetes":
                continue
            other = seen.setdefault(env.router.listen, name)
            if other != name:
                raise ValueError(
                    f"environments {other!r} and {name!r} both listen on {env.router.listen}; "
                    "environments are isolated and need their own router address"
                )
        return self


class ServiceConfig(Strict):
    dir: str = Field(
        description="The service's project directory (its rollwise.yaml), "
        "relative to the bundle file."
    )
    depends_on: list[str] = Field(
        default_factory=list,
        description="Services of the bundle this one needs: deployed before it, rolled "
        "back after it.",
    )


def _service_order(v: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
    for name in v:
        if not NAME_RE.match(name):
            raise ValueError(f"service name {name!r} must match {NAME_RE.pattern}")
    if not v:
        raise ValueError("needs at least one service, e.g. `api: {dir: api}`")
    bundle_order({name: tuple(s.depends_on) for name, s in v.items()})  # ValueError: a cycle
    return v


class BundleConfig(Strict):
    """`rollwise-bundle.yaml`: services that are deployed and rolled back together, in the
    order their dependencies give (docs/bundles.md)."""

    bundle: Annotated[str, Field(pattern=NAME_RE.pattern)] = Field(
        description="Bundle name: lower case letters, digits and '-'."
    )
    services: dict[str, ServiceConfig] = Field(
        description="Services by name, each a rollwise project with the same environments."
    )

    _check_services = field_validator("services")(_service_order)
