"""`rollwise` commands. Each parses its options, calls the controller and renders the outcome."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from rollwise import audit, hostsrun, reasons
from rollwise.audit import Event
from rollwise.errors import ConfigError, ExitCode, RollwiseError, UsageError
from rollwise.events import EventBus

T = TypeVar("T")
app = typer.Typer(
    help="Deploy progressively; roll back in seconds.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _group(name: str, help: str) -> typer.Typer:
    """A command group; help text is Markdown, so a docstring's line breaks inside a
    paragraph are not printed."""
    group = typer.Typer(help=help, no_args_is_help=True, rich_markup_mode="markdown")
    app.add_typer(group, name=name)
    return group


release_app = _group("release", "Create and list releases.")
audit_app = _group("audit", "Verify, checkpoint and export the audit log.")
secrets_app = _group("secrets", "Manage encrypted secrets.")
backup_app = _group("backup", "Back up, verify and restore the app's database.")
config_app = _group("config", "Configuration schema and reference.")
agent_app = _group("agent", "The per-environment agent (router and supervisor).")
hosts_app = _group("hosts", "The hosts of a fleet environment (`target: {type: ssh}`).")
bundle_app = _group(
    "bundle",
    "Several services deployed and rolled back together in "
    "dependency order (rollwise-bundle.yaml).",
)
kube_app = _group("kube", "Kubernetes objects of a release (docs/kubernetes.md).")
incident_app = _group(
    "incident",
    "Rollbacks as incidents: timeline, evidence, root cause, fix forward (docs/incidents.md).",
)
freeze_app = _group(
    "freeze",
    "Freeze windows: times, in their own time zone, when deploys are refused (docs/freeze.md).",
)
approval_app = _group(
    "approval",
    "The two-person rule: deploy requests waiting for approval, through the team server "
    "(docs/approvals.md).",
)
token_app = _group(
    "token",
    "API tokens of the team server: one role each, optionally some environments, expiring, "
    "shown once (docs/server.md).",
)
user_app = _group(
    "user",
    "People who log in to the team server's dashboard: a password each, one role, optionally "
    "some environments (docs/server.md).",
)
notify_app = _group(
    "notify", "Notification channels: Slack, DingTalk, WeCom, Feishu, email, webhooks."
)
drill_app = _group(
    "drill",
    "Rehearse a rollback end to end on a non-production environment and measure it "
    "(docs/drills.md).",
)
PercentOpt = Annotated[
    int, typer.Option("--percent", min=0, max=100, help="Share of traffic for this version.")
]

# No console markup: names, reasons and messages print as written (a `[a-z]` in a pattern
# stays); colour comes from Text styles.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = Console(highlight=False, soft_wrap=True, markup=False)


def _complete_env(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of --env: the environments in rollwise.yaml (read, not validated)."""
    import yaml

    from rollwise.project import find_config

    try:
        path = find_config(Path(ctx.params.get("directory") or "."))
        envs = yaml.safe_load(path.read_text()).get("environments") or {}
    except Exception:  # completion must never print an error into the user's shell
        return []
    return [e for e in envs if str(e).startswith(incomplete)]


EnvOpt = Annotated[
    str, typer.Option("--env", "-e", help="Environment name.", autocompletion=_complete_env)
]
AnyEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--env", "-e", help="One environment (default: all).", autocompletion=_complete_env
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LockWait = Annotated[
    float,
    typer.Option(
        "--lock-wait",
        min=0,
        help="Seconds to wait for the environment's deploy lock (default: refuse at once).",
    ),
]
DirOpt = Annotated[Path, typer.Option("--dir", "-C", help="Project directory.")]


def _progress(ev: Event) -> None:
    if ev.action == "step":
        step = ev.data.get("step")
        if ev.outcome == "started":
            err.print(Text.assemble("  ", ("…", "dim"), f" {step}"))
        elif ev.outcome == reasons.OK:
            extra = {k: v for k, v in ev.data.items() if k not in ("deployment", "step")}
            err.print(Text.assemble("  ", ("✓", "green"), f" {step} ", (_fmt(extra), "dim")))
        else:  # the reason is printed once, with the command's error
            err.print(Text.assemble("  ", ("✗", "red"), f" {step}"))
    elif ev.action == "host" and not LIVE["on"]:  # on a terminal: the live panel
        d = dict(ev.data)
        host, what = d.pop("host", "?"), d.pop("step", "?")
        mark = ("✓", "green") if ev.outcome in (reasons.OK, "started") else ("✗", "red")
        err.print(
            Text.assemble("    ", mark, (f" {host:<14}", "bold"), f" {what} ", (_fmt(d), "dim"))
        )
    elif ev.action == "approval" and ev.outcome == "needed":
        err.print(Text.assemble("  ", ("…", "yellow"), f" waiting for approval: {ev.reason}"))
    elif ev.action == "analysis":
        mark = {"advance": ("✓", "green"), "rollback": ("✗", "red")}.get(
            ev.outcome, ("!", "yellow")
        )
        err.print(
            Text.assemble(
                "    ", mark, f" analysis {ev.data.get('step')}: {ev.outcome}: {ev.reason}"
            )
        )
    elif ev.action == "notify" and ev.outcome in ("failed", "dropped"):
        channel = ev.data.get("channel")
        err.print(Text.assemble("  ", ("!", "yellow"), f" notify {channel}: {ev.reason}"))
    elif ev.action in ("promote", "preflight") and ev.outcome != reasons.REFUSED:
        err.print(Text.assemble("    ", ("!", "yellow"), f" {ev.action}: {ev.reason}"))
    elif ev.action == "bundle":
        d = ev.data
        mark = {"started": ("▶", "bold"), reasons.OK: ("✓", "green")}.get(ev.outcome, ("✗", "red"))
        what = {
            "started": f"{d.get('previous') or '-'} -> {ev.version}",
            reasons.OK: f"at {ev.version}",
            "rolled_back": f"back to {ev.version}",
        }.get(ev.outcome, f"{ev.outcome}: {ev.reason}")
        err.print(
            Text.assemble(
                mark, (f" {d.get('service')}", "bold"), f" (bundle {d.get('bundle')}) {what}"
            )
        )
    elif ev.action in ("deploy", "rollback", "recover") and ev.outcome not in (
        "started",
        reasons.SUCCEEDED,
        reasons.NOOP,
        reasons.REFUSED,
    ):
        err.print(Text.assemble("  ", ("!", "yellow"), f" {ev.action} {ev.outcome}"))


def _fmt(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items() if v not in (None, [], {}))


PROGRESS = {"mode": "auto"}  # set by the --progress option; "ended" once a result is out
LIVE = {"on": False}  # a live panel on stderr instead of host and look lines


def _bus(quiet: bool = False) -> EventBus:
    """An event stream with the progress printers: lines (and, on a terminal, the hosts
    table), or with `--progress json` every event as one JSON line on stderr."""
    bus = EventBus()
    if PROGRESS["mode"] == "json":
        bus.subscribe(_json_line)
    elif not quiet:
        LIVE["on"] = err.is_terminal and PROGRESS["mode"] == "auto"
        bus.subscribe(_progress)
        if not LIVE["on"]:
            bus.subscribe(LookPrinter())
        if LIVE["on"]:
            from rollwise.cli.liveview import DeployView

            bus.subscribe(DeployView(err))
    return bus


def _json_line(ev: Event) -> None:
    d = {k: v for k, v in vars(ev).items() if v not in (None, {}) and k != "record"}
    sys.stderr.write(json.dumps({**d, "recorded": ev.record}, default=str) + "\n")
    sys.stderr.flush()


def _remote(quiet: bool = False) -> Any:
    """The team server this command asks (ROLLWISE_URL), or None to act here."""
    if not os.environ.get("ROLLWISE_URL"):
        return None
    from rollwise.api.remote import Remote

    return Remote(_bus(quiet))


def _local_only(what: str) -> None:
    raise UsageError(
        f"`{what}` reads this machine's state: not through a team server",
        where="ROLLWISE_URL",
        hint="unset ROLLWISE_URL to run it where the project and its agents are",
    )


def _ctx(directory: Path, quiet: bool = False) -> Any:
    from rollwise.controller.context import Context

    return Context.open(directory, _bus(quiet))


@app.callback()
def _options(
    progress: Annotated[
        str,
        typer.Option(
            "--progress",
            help="How progress is shown on stderr: auto (a live hosts table on a "
            "terminal, lines elsewhere), lines, or json (every event as one JSON object per "
            "line, for CI and scripts).",
            case_sensitive=False,
        ),
    ] = "auto",
) -> None:
    if progress.lower() not in ("auto", "lines", "json"):
        raise typer.BadParameter("auto, lines or json", param_hint="--progress")
    PROGRESS["mode"] = progress.lower()


class LookPrinter:
    """Every 10 s of a watched step, one line with the router numbers so far."""

    every_s = 10.0

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def __call__(self, ev: Event) -> None:
        if ev.action != "look":
            return
        step = str(ev.data.get("step"))
        if ev.ts - self.last.setdefault(step, ev.ts) < self.every_s:
            return
        self.last[step] = ev.ts
        parts = [
            f"{m['name']}: {m['verdict']} ({m['reason']})" for m in ev.data.get("measurements", [])
        ]
        err.print(Text(f"    … {step}: {'; '.join(parts) or 'no measurement'}", style="dim"))


def _run(fn: Callable[[], T], as_json: bool = False) -> T:
    """Run a command's work; a RollwiseError is printed once (and, for --json, as one
    result object on stdout) and becomes the exit code."""
    try:
        try:
            return fn()
        except ModuleNotFoundError as e:
            if (missing := _missing_driver(e)) is None:
                raise
            raise missing from e
    except RollwiseError as e:
        if PROGRESS["mode"] == "json":
            sys.stderr.write(
                json.dumps(
                    {
                        "error": e.message,
                        "where": e.where or None,
                        "hint": e.hint or None,
                        "exit_code": int(e.code),
                    }
                )
                + "\n"
            )
            PROGRESS["ended"] = "error"
        else:
            err.print(Text.assemble(("error:", "red"), " ", str(e)))
        if as_json:
            _emit_json(
                {
                    "ok": False,
                    "error": e.message,
                    "where": e.where or None,
                    "hint": e.hint or None,
                    "exit_code": int(e.code),
                }
            )
        raise typer.Exit(int(e.code)) from None
    except KeyboardInterrupt:
        err.print(
            Text.assemble(("interrupted", "yellow"), ": run `rollwise status` to see the state")
        )
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


DRIVERS = {"psycopg": "postgres", "psycopg2": "postgres", "pymysql": "mysql", "MySQLdb": "mysql"}


def _missing_driver(e: ModuleNotFoundError) -> ConfigError | None:
    """A database driver rollwise installs as an extra, as a ConfigError saying which."""
    top = (e.name or "").partition(".")[0]
    if top in ("kubernetes", "kubernetes_validate"):
        return ConfigError(
            f"the Python package {top!r} is not installed",
            hint="pip install 'rollwise[kubernetes]' kubernetes-validate "
            "(in rollwise's environment)",
        )
    extra = DRIVERS.get(top)
    if extra is None:
        return None
    return ConfigError(
        f"the database driver {e.name!r} is not installed",
        hint=f"pip install 'rollwise[{extra}]' (in rollwise's environment), "
        "or use a database URL whose driver is installed",
    )


def _public_key(path: Path) -> None:
    """A --public-key that is no readable key is the caller's mistake, not tampering."""
    from rollwise import checkpoints

    hint = "pass the path of the .pub file you keep (PEM, Ed25519)"
    if not path.is_file():
        raise UsageError("no such public key file", where=str(path), hint=hint)
    try:
        checkpoints.load_public_key(path)
    except RollwiseError as e:
        raise UsageError(e.message, where=str(path), hint=hint) from None


def _fail(e: RollwiseError) -> None:
    raise e


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def init(
    directory: DirOpt = Path("."),
    app_name: Annotated[str, typer.Option("--app", help="Application name.")] = "",
    run: Annotated[
        str, typer.Option("--run", help="Command that starts one instance; {port} is its port.")
    ] = "python3 app.py --port {port}",
) -> None:
    """Create a commented rollwise.yaml in the project directory."""
    from rollwise.config.reference import json_schema
    from rollwise.config.schema import NAME_RE
    from rollwise.config.template import SCHEMA_FILE, render

    path = directory / "rollwise.yaml"
    if path.exists():
        err.print(Text.assemble(("error:", "red"), f" {path} exists; not overwritten"))
        raise typer.Exit(int(ExitCode.USAGE))
    suggested = re.sub(r"[^a-z0-9]+", "-", (app_name or directory.resolve().name).lower())
    suggested = re.sub(r"^[^a-z]+", "", suggested).strip("-")[:40] or "app"
    name = app_name or suggested
    if not NAME_RE.match(name):
        _run(
            lambda: _fail(
                UsageError(
                    f"--app {name!r}: an app name is lowercase letters, digits and dashes, "
                    "starting with a letter, at most 40 characters",
                    hint=f"for example --app {suggested}",
                )
            )
        )
    path.write_text(render(name, run))
    (directory / SCHEMA_FILE).write_text(json.dumps(json_schema(), indent=2) + "\n")
    gi = directory / ".gitignore"
    if ".rollwise/" not in (gi.read_text() if gi.exists() else ""):
        with gi.open("a") as f:
            f.write(".rollwise/\n")
    out.print(
        f"wrote {path} and {SCHEMA_FILE} (its JSON Schema, for editors); next: "
        "`rollwise release create --version 1.0.0`"
    )


@release_app.command("create")
def release_create(
    version: Annotated[str, typer.Option("--version", "-v", help="Semantic version.")],
    changelog: Annotated[str | None, typer.Option(help="What changed.")] = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Package the app into an immutable, content-addressed release."""
    from rollwise.controller import ops

    res = _run(lambda: ops.create_release(_ctx(directory), version, changelog))
    if (remote := _remote()) is not None:  # made here (a CI runner), kept by the server
        sent = _run(lambda: _upload(remote, directory, version), as_json)
        res.data["uploaded"] = sent
        res.message += f"\nuploaded to {remote.url} (sha256 {sent['sha256'][:12]})"
    _emit_json(res.data) if as_json else out.print(res.message)


@release_app.command("list")
def release_list(
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
    all_: Annotated[bool, typer.Option("--all", help="Include pruned.")] = False,
) -> None:
    """List releases, newest last, with each environment's marks."""
    from rollwise.store import repo

    def go() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        ctx = _ctx(directory, quiet=True)
        rels = repo.list_releases(ctx.engine, include_pruned=all_)
        lives = {s["live_version"]: s["env"] for s in repo.all_env_states(ctx.engine)}
        marks: dict[str, list[str]] = {}
        for m in repo.get_marks(ctx.engine):
            marks.setdefault(m["version"], []).append(f"{m['env']}:{m['mark']}")
        return rels, {"lives": lives, "marks": marks}

    rels, extra = _run(go)
    if as_json:
        _emit_json(rels)
        return
    for r in rels:
        live = (
            (f" live in {extra['lives'][r['version']]}", "green")
            if r["version"] in extra["lives"]
            else ("", "")
        )
        pruned = (" (pruned)", "dim") if r["pruned"] else ("", "")
        commit = (r["git_commit"] or "-")[:12]
        schema = r.get("schema") or {}
        needs = f" schema {schema['version']}" if schema else ""
        floor = (
            f" (code of schema {schema['floor']} and later runs on it)"
            if schema.get("floor") not in (None, schema.get("version"))
            else ""
        )
        out.print(
            Text.assemble(
                f"{r['version']:<12} {r['sha256'][:12]} commit {commit:<12}{needs}{floor} "
                f"{' '.join(extra['marks'].get(r['version'], []))}",
                live,
                pruned,
            )
        )


ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Override a refusal that protects you (needs --reason; recorded in the audit log).",
    ),
]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (recorded in the audit log).")]
DropYesOpt = Annotated[
    bool,
    typer.Option(
        "--yes",
        "-y",
        help="Do not ask before dropping data (needed without a terminal, e.g. in CI).",
    ),
]


def _force_reason(force: bool, reason: str | None) -> str | None:
    if force and not (reason or "").strip():
        err.print("error: --force needs --reason TEXT (it is recorded)")
        raise typer.Exit(int(ExitCode.USAGE))
    return reason if force else None


BreakFreezeOpt = Annotated[
    bool,
    typer.Option(
        "--break-freeze",
        help="Deploy inside a freeze window: break glass (needs --reason; recorded in the "
        "audit log as a freeze-break event).",
    ),
]


def _zone_name() -> str | None:
    from rollwise.controller import freezes

    return getattr(freezes.here(), "key", None)


def _break_reason(break_freeze: bool, reason: str | None) -> str | None:
    if break_freeze and not (reason or "").strip():
        err.print("error: --break-freeze needs --reason TEXT (it is recorded in the audit log)")
        raise typer.Exit(int(ExitCode.USAGE))
    return reason if break_freeze else None


@app.command()
def deploy(
    version: Annotated[str, typer.Argument(help="Release version to deploy.")],
    env: EnvOpt = "dev",
    lock_wait: LockWait = 0.0,
    force: ForceOpt = False,
    break_freeze: BreakFreezeOpt = False,
    reason: ReasonOpt = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Start the release beside the live one, check it, switch traffic, stop the old one.

    Refused for a release marked bad (unless --force --reason) and for an older release
    whose schema must go back (use `rollback --to`); inside a freeze window, unless
    --break-freeze --reason (docs/freeze.md). The live version again is a restart. A
    forced deploy of a release an incident marked bad names it: --reason 'INC-7: ...'."""
    from rollwise.controller import ops

    why = _force_reason(force, reason)
    glass = _break_reason(break_freeze, reason)
    if (remote := _remote()) is not None:
        body = {"version": version, "lock_wait": lock_wait, "force_reason": why}
        if glass is not None:
            body["break_freeze"] = glass  # needs the admin role there
        if zone := _zone_name():
            body["zone"] = zone  # a freeze window's end is shown in it
        data = _run(lambda: remote.run(f"/environments/{env}/deploy", body), as_json)
        done = {k: v for k, v in data.items() if k not in ("message", "changed")}
        _emit_json(done) if as_json else out.print(data["message"])
        return
    res = _run(
        lambda: ops.deploy(
            _ctx(directory),
            env,
            version,
            lock_wait=lock_wait,
            force_reason=why,
            break_freeze=glass,
        ),
        as_json,
    )
    _emit_json({"ok": True, **res.data}) if as_json else out.print(res.message)


@app.command()
def rollback(
    to: Annotated[
        str | None,
        typer.Option("--to", help="Release to go back to (default: the last known-good one)."),
    ] = None,
    env: EnvOpt = "dev",
    lock_wait: LockWait = 0.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what changes.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Past the rollback window: run the down migrations anyway (needs --reason).",
        ),
    ] = False,
    reason: ReasonOpt = None,
    yes: DropYesOpt = False,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Put an older release back (default: the newest known-good one deployed before the
    live one); the release left is marked bad. Never moves forward."""
    why = _force_reason(force, reason)
    from rollwise.controller import ops

    def go() -> ops.Outcome:
        ctx = _ctx(directory)
        if to is None and not dry_run and ops.running(ctx, env):
            return ops.rollback(ctx, env, None, lock_wait)  # the running rollout undoes itself
        live, target = ops.rollback_plan(ctx, env, to)
        dropped = _preview(ctx, env, live, target, f"rollback of {env}", as_json)
        if dry_run:
            return ops.Outcome("dry run: nothing changed", {"dropped": dropped}, changed=False)
        if (
            dropped
            and not yes
            and not _confirm(
                f"the down migrations drop {sum(dropped.values())} values (kept in parked "
                "files first); roll back?"
            )
        ):
            return ops.Outcome("nothing changed", {"dropped": dropped}, changed=False)
        return ops.rollback(ctx, env, to, lock_wait, force_reason=why)

    if (remote := _remote()) is not None:
        res = _run(lambda: _rollback_remote(remote, env, to, lock_wait, dry_run, why, yes), as_json)
    else:
        res = _run(go, as_json)
    if as_json:
        _emit_json({"ok": True, **res.data, "message": res.message, "changed": res.changed})
    else:
        out.print(res.message)


def _upload(remote: Any, directory: Path, version: str) -> Any:
    from rollwise import artifacts
    from rollwise.store import repo

    ctx = _ctx(directory, quiet=True)
    row = repo.get_release(ctx.engine, version) or {}
    meta = {
        k: row[k]
        for k in (
            "app",
            "version",
            "sha256",
            "size",
            "git_commit",
            "built_at",
            "builder",
            "changelog",
            "config_sha256",
            "schema",
        )
    }
    return remote.upload(meta, artifacts.artifact_path(ctx.artifacts_dir(), meta["sha256"]))


def _rollback_remote(
    remote: Any, env: str, to: str | None, wait: float, dry: bool, why: str | None, yes: bool
) -> Any:
    """A rollback the server runs: its plan shown and, when data is dropped, confirmed here."""
    from rollwise.api.remote import Refused
    from rollwise.controller.ops import Outcome

    body = {"to": to, "lock_wait": wait, "force_reason": why, "yes": yes, "dry_run": dry}
    try:
        data = remote.run(f"/environments/{env}/rollback", body)
    except Refused as e:
        if "dropped" not in e.body:
            raise
        err.print(f"rollback of {env}:")
        for row in e.body.get("plan", []):
            err.print(f"  {row}")
        if not _confirm(f"{e.message}; roll back?"):
            return Outcome("nothing changed", {"dropped": e.body["dropped"]}, changed=False)
        data = remote.run(f"/environments/{env}/rollback", {**body, "yes": True})
    rest = {k: v for k, v in data.items() if k not in ("ok", "message", "changed")}
    return Outcome(str(data["message"]), rest, changed=bool(data.get("changed", True)))


def _preview(
    ctx: Any, env: str, live: Any, target: Any, title: str, as_json: bool
) -> dict[str, int]:
    """What a rollback changes (release, config, hosts, schema with its SQL), printed unless
    --json; returns the values its down migrations drop."""
    from rollwise.controller import ops

    rows, dropped = ops.describe_schema(ctx, env, live, target)
    if not as_json:
        err.print(f"{title}:")
        for row in [*ops.describe_change(live, target), *ops.describe_hosts(ctx, env), *rows]:
            err.print(f"  {row}")
    return dropped


def _confirm(question: str) -> bool:
    """Ask on a terminal; without one (CI), refuse and say to pass --yes."""
    if not sys.stdin.isatty():
        raise UsageError(
            f"{question.rstrip('?')}: no terminal to ask on",
            hint="pass --yes to confirm (what is dropped is listed above)",
        )
    return typer.confirm(question, default=False, err=True)


@app.command()
def promote(
    env: EnvOpt = "dev",
    directory: DirOpt = Path("."),
    full: Annotated[
        bool, typer.Option("--full", help="Skip every remaining pause and go to 100% now.")
    ] = False,
) -> None:
    """Continue a canary paused at a step (analysis goes on at the next steps)."""
    from rollwise.controller import ops

    if (remote := _remote()) is not None:
        out.print(
            _run(lambda: remote.run(f"/environments/{env}/promote", {"full": full}))["message"]
        )
        return
    out.print(_run(lambda: ops.promote(_ctx(directory), env, full)).message)


@app.command()
def server(
    listen: Annotated[str, typer.Option(help="host:port to listen on.")] = "127.0.0.1:9748",
    directory: DirOpt = Path("."),
) -> None:
    """Run the team server: the API (deploys and rollbacks as jobs, status, history,
    tokens) over this project's state store, with ROLLWISE_DATABASE_URL a PostgreSQL one
    shared by every server and CLI of the team (docs/server.md)."""
    from rollwise.api.server import serve as run_server
    from rollwise.ports import parse_address

    def go() -> None:
        try:
            parse_address(listen)
        except ValueError:
            raise UsageError(
                f"--listen {listen!r} is not host:port with a port from 1 to 65535",
                hint="for example --listen 127.0.0.1:9748",
            ) from None
        run_server(directory, listen)

    _run(go)


def _server() -> Any:
    if (remote := _remote(quiet=True)) is None:
        raise UsageError(
            "approvals are given through the team server",
            where="ROLLWISE_URL",
            hint="set ROLLWISE_URL and ROLLWISE_TOKEN (an approver's token)",
        )
    return remote


@approval_app.command("list")
def approval_list(
    env: AnyEnvOpt = None, directory: DirOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """Requests, newest first: pending, approved, rejected, expired or used."""
    rows = _run(lambda: _server().get("/approvals", env=env), as_json)
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        out.print(
            f"{r['id']:>4} {r['env']:<8} {r['version']:<10} {r['state']:<9} "
            f"asked by {r['requested_by']}, {len(r['approvers'])}/{r['required']} approved"
            + (f" ({', '.join(r['approvers'])})" if r["approvers"] else "")
        )


@approval_app.command("approve")
def approval_approve(
    request_id: Annotated[int, typer.Argument(metavar="ID", help="As `approval list` shows it.")],
    directory: DirOpt = Path("."),
) -> None:
    """Approve a deploy someone else asked for; the last approval needed starts it."""
    res = _run(lambda: _server().post(f"/approvals/{request_id}/approve"))
    r = res["approval"]
    started = f"; deploy started (job {res['job']['id']})" if res.get("job") else ""
    out.print(f"request {r['id']}: {len(r['approvers'])}/{r['required']} approved{started}")


@approval_app.command("reject")
def approval_reject(
    request_id: Annotated[int, typer.Argument(metavar="ID", help="As `approval list` shows it.")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")],
    directory: DirOpt = Path("."),
) -> None:
    """Reject a deploy request; it does not run."""
    _run(lambda: _server().post(f"/approvals/{request_id}/reject", {"reason": reason}))
    out.print(f"request {request_id} rejected")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what uses it (a person, a CI job).")],
    role: Annotated[
        str,
        typer.Option(help="viewer, deployer, approver or admin (each includes the ones before)."),
    ] = "viewer",
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="An environment it may act on (repeat); default: all."),
    ] = None,
    expires_days: Annotated[
        float, typer.Option(min=0, help="Days until it expires; 0: never.")
    ] = 90,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Make a token; it is printed once and only its hash is kept."""
    from rollwise.api import auth

    def go() -> Any:
        ctx = _ctx(directory, quiet=True)
        for e in env or []:
            ctx.env(e)  # an unknown environment is refused, naming the known ones
        token, row = auth.create(
            ctx.engine, name, role, env, ctx.actor, expires_days * 86400 or None
        )
        ctx.emit("token", "created", data={"id": row["id"], "role": role, "envs": env})
        return token, row

    token, row = _run(go, as_json)
    if as_json:
        _emit_json({"token": token, **row})
        return
    out.print(token)
    err.print(f"token {row['id']} ({name}, {role}): shown once; keep it in your CI's secrets")


@token_app.command("list")
def token_list(directory: DirOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Every token: id, name, role, environments, expiry, revoked (never the token)."""
    from rollwise.api import auth

    rows = _run(lambda: auth.listed(_ctx(directory, quiet=True).engine), as_json)
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        state = "revoked" if r["revoked_at"] else "active"
        out.print(
            f"{r['id']}  {r['name']:<16} {r['role']:<9} {','.join(r['envs'] or ['*']):<12} {state}"
        )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="As `token list` shows it.")],
    directory: DirOpt = Path("."),
) -> None:
    """Revoke a token at once."""
    from rollwise.api import auth

    def go() -> Any:
        ctx = _ctx(directory, quiet=True)
        row = auth.revoke(ctx.engine, token_id)
        ctx.emit("token", "revoked", data={"id": token_id})
        return row

    row = _run(go)
    out.print(f"token {row['id']} ({row['name']}) revoked")


UserName = Annotated[str, typer.Argument(metavar="NAME", help="The name they log in with.")]
PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from stdin (for scripts), not a prompt."
    ),
]


def _password(from_stdin: bool) -> str:
    """The new password: stdin's first line, or typed twice on the terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UsageError(
            "no terminal to ask for the password on",
            hint="pass it on stdin with --password-stdin",
        )
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True))


@user_app.command("create")
def user_create(
    name: UserName,
    role: Annotated[
        str,
        typer.Option(help="viewer, deployer, approver or admin (each includes the ones before)."),
    ],
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="An environment they may act on (repeat); default: all."),
    ] = None,
    password_stdin: PasswordStdin = False,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Add a user; the password (12 characters or more) is asked twice, or read from stdin."""
    from rollwise.api import users

    def go() -> Any:
        ctx = _ctx(directory, quiet=True)
        for e in env or []:
            ctx.env(e)  # an unknown environment is refused, naming the known ones
        row = users.create(ctx.engine, name, role, env, _password(password_stdin), ctx.actor)
        ctx.emit("user", "created", data={"name": name, "role": role, "envs": env})
        return row

    row = _run(go, as_json)
    if as_json:
        _emit_json(row)
        return
    out.print(f"user {name} ({role}) created; they log in at the server's /login")


@user_app.command("list")
def user_list(directory: DirOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Every user: name, role, environments, active or disabled (never the password hash)."""
    from rollwise.api import users

    rows = _run(lambda: users.listed(_ctx(directory, quiet=True).engine), as_json)
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        state = "disabled" if r["disabled_at"] else "active"
        out.print(f"{r['name']:<16} {r['role']:<9} {','.join(r['envs'] or ['*']):<12} {state}")


@user_app.command("passwd")
def user_passwd(
    name: UserName, password_stdin: PasswordStdin = False, directory: DirOpt = Path(".")
) -> None:
    """Set a user's password; their sessions end (they log in again)."""
    from rollwise.api import users

    def go() -> None:
        ctx = _ctx(directory, quiet=True)
        users.set_password(ctx.engine, name, _password(password_stdin))
        ctx.emit("user", "password-set", data={"name": name})

    _run(go)
    out.print(f"user {name}: password set; their sessions have ended")


@user_app.command("disable")
def user_disable(name: UserName, directory: DirOpt = Path(".")) -> None:
    """Stop a user logging in; their sessions end at once."""
    from rollwise.api import users

    def go() -> None:
        ctx = _ctx(directory, quiet=True)
        users.disable(ctx.engine, name)
        ctx.emit("user", "disabled", data={"name": name})

    _run(go)
    out.print(f"user {name} disabled; their sessions have ended")


@app.command()
def serve(
    listen: Annotated[str, typer.Option(help="host:port to listen on.")] = "127.0.0.1:9747",
    max_body_kib: Annotated[
        int, typer.Option(min=1, help="Largest request body accepted, in KiB (413 beyond).")
    ] = 256,
    timeout: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seconds a client has to send a request's headers, and as long for its "
            "body (408 or closed after).",
        ),
    ] = 10,
    directory: DirOpt = Path("."),
) -> None:
    """Accept alerts (Alertmanager webhook, generic JSON) that roll back an environment.

    Needs ROLLWISE_WEBHOOK_TOKEN; callers send it as `Authorization: Bearer <token>`."""
    from rollwise.api.alerts import serve as run_server
    from rollwise.api.limits import Limits
    from rollwise.ports import parse_address

    def go() -> None:
        try:
            parse_address(listen)
        except ValueError:
            raise UsageError(
                f"--listen {listen!r} is not host:port with a port from 1 to 65535",
                hint="for example --listen 127.0.0.1:9747",
            ) from None
        run_server(directory, listen, Limits(max_body_kib * 1024, timeout))

    _run(go)


@app.command()
def abort(env: EnvOpt = "dev", directory: DirOpt = Path(".")) -> None:
    """Stop the deployment in progress; the old release keeps serving."""
    from rollwise.controller import ops

    if (remote := _remote()) is not None:
        out.print(_run(lambda: remote.run(f"/environments/{env}/abort"))["message"])
        return
    out.print(_run(lambda: ops.abort(_ctx(directory), env)).message)


@app.command()
def recover(
    env: EnvOpt = "dev",
    lock_wait: LockWait = 0.0,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Finish or undo a deployment whose process died (a split canary goes back to the
    stable release) and restart a dead agent. `status` reports when this is needed."""
    from rollwise.controller import ops

    res = _run(lambda: ops.recover(_ctx(directory), env, lock_wait), as_json)
    _emit_json(
        {"ok": True, **res.data, "message": res.message, "changed": res.changed}
    ) if as_json else out.print(res.message)


@app.command()
def status(
    env: AnyEnvOpt = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Keep showing it, with each version's traffic, "
            "requests, errors and latency and the analysis decision, until Ctrl-C: a live "
            "panel on a terminal, a line per environment per refresh elsewhere.",
        ),
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.2, max=3600, help="--watch: seconds between refreshes."),
    ] = 1.0,
) -> None:
    """What serves each environment, whether it answers its health check, and what an
    interrupted deployment left to do. Only reads: `rollwise recover` acts."""
    from rollwise.controller import ops

    if watch and os.environ.get("ROLLWISE_URL"):
        _run(lambda: _local_only("status --watch"))
    if watch:
        _run(lambda: _watch_status(directory, env, interval))
        return
    if (remote := _remote(quiet=True)) is not None:
        path = f"/environments/{env}/status" if env else "/status"
        data = _run(lambda: remote.get(path), as_json)
    else:
        data = _run(lambda: ops.status(_ctx(directory), env), as_json)
    if as_json:
        _emit_json(data)
        return
    for name, s in data["environments"].items():
        _print_env(name, s)


def _watch_status(directory: Path, env: str | None, interval: float) -> None:
    import time

    from rich.console import Group
    from rich.live import Live

    from rollwise import metrics
    from rollwise.cli.liveview import board_from_status, line, render
    from rollwise.controller import ops

    ctx = _ctx(directory, quiet=True)
    live = Live(console=out, auto_refresh=False) if out.is_terminal else None

    def versions(name: str) -> dict[str, Any]:
        try:
            return dict(metrics.router_counters(ctx.environment(name)).get("versions", {}))
        except RollwiseError:  # status says why (agent not running)
            return {}

    def boards() -> list[Any]:
        data = ops.status(ctx, env)["environments"]
        return [board_from_status(name, s, versions(name)) for name, s in data.items()]

    try:
        if live is not None:
            live.start()
        while True:
            shown = boards()
            if live is not None:
                live.update(Group(*(render(b) for b in shown)), refresh=True)
            else:
                for b in shown:
                    out.print(line(b))
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()


def _print_env(name: str, s: dict[str, Any]) -> None:
    """One environment's status (`rollwise status`, and each service of `bundle status`)."""
    health = s["health"]
    verdict = (
        ("", "")
        if health is None
        else (" healthy", "green")
        if s["healthy"]
        else (" NOT HEALTHY", "red")
    )
    out.print(
        Text.assemble(
            (name, "bold"),
            f": {s['live_version'] or 'nothing deployed'} on {s['router']} (agent {s['agent']})",
            verdict,
        )
    )
    if health and not health["ok"]:
        answers = ", ".join(f"{k}: {v}" for k, v in health["instances"].items())
        out.print(f"  health {health['path']}: {answers or 'no instance takes traffic'}")
    if s["interrupted"]:
        out.print(Text.assemble("  ", ("interrupted:", "yellow"), f" {s['interrupted']}"))
    for i in s["instances"]:
        w = s["weights"].get(i["name"], 0)
        where = f"port {i['port']}" if i["host"] == "127.0.0.1" else f"on {i['host']}:{i['port']}"
        image = f" image {str(i['image'])[:19]}" if i.get("image") else ""
        out.print(
            f"  {i['name']} {where} weight {w} "
            f"{'up' if i['alive'] else 'down'} restarts {i['restarts']}{image}"
        )
    if s["lock"]:
        out.print(f"  locked by {s['lock']['holder']} (token {s['lock']['token']})")
    if s["in_progress"]:
        p = s["in_progress"]
        out.print(
            f"  in progress: {p['kind']} {p['id']} to {p['to']}, done "
            f"{', '.join(p['steps_done']) or 'nothing'}; if interrupted: "
            f"{p['on_recovery']}"
        )
    for a in s.get("analysis", [])[-5:]:
        out.print(f"  analysis {a['step']}: {a['decision']}: {a['reason']}")
    if last := s["last_deployment"]:
        out.print(
            f"  last: {last['kind']} {last['id']} {last['from_version'] or '-'} -> "
            f"{last['to_version']} {last['status']}"
            + (f" ({last['reason']})" if last["reason"] else "")
        )


@app.command()
def logs(
    env: EnvOpt = "dev",
    instance: Annotated[
        str | None,
        typer.Option("--instance", help="Only this instance (`rollwise status` names them)."),
    ] = None,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=1, max=100_000, help="Lines per instance.")
    ] = 50,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """The last lines each instance wrote, read where it runs (this machine, its SSH host,
    or its container). Only reads."""
    from rollwise.controller import ops

    rows = _run(lambda: ops.logs(_ctx(directory, quiet=True), env, instance, lines), as_json)
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        out.print(
            Text(
                f"== {r['instance']} ({r['version']}) on {r['host']}:{r['port']}"
                f"{'' if r['alive'] else ' (not running)'}",
                style="bold",
            )
        )
        out.print(r["log"].rstrip() or "(nothing written)")


@app.command()
def metrics(env: AnyEnvOpt = None, directory: DirOpt = Path(".")) -> None:
    """Print the Prometheus metrics `rollwise serve` exposes at /metrics: router counters
    and latency per version, weights, instances, deployments, analysis decisions, lock.
    Only reads."""
    from rollwise import metrics as m

    def read() -> bytes:
        ctx = _ctx(directory, quiet=True)
        return m.exposition(m.read(ctx, [env] if env else None))

    sys.stdout.write(_run(read).decode())


@app.command()
def sd(
    env: AnyEnvOpt = None,
    serve_at: Annotated[
        str,
        typer.Option(
            "--serve",
            help="Address of `rollwise serve`, listed as where metrics are "
            "scraped for environments without `metrics.listen`.",
        ),
    ] = "127.0.0.1:9747",
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the JSON to this file (atomically), for Prometheus' "
            "file_sd_configs, instead of printing it.",
        ),
    ] = None,
    directory: DirOpt = Path("."),
) -> None:
    """Print the Prometheus HTTP service discovery JSON `rollwise serve` answers at /sd:
    every instance with its environment, app, version and role (stable or canary). Only
    reads."""
    from rollwise import metrics as m
    from rollwise.api.alerts import metrics_targets

    def read() -> list[dict[str, Any]]:
        ctx = _ctx(directory, quiet=True)
        return m.discovery(m.read(ctx, [env] if env else None), metrics_targets(ctx, serve_at))

    text = json.dumps(_run(read), indent=2) + "\n"
    if out_file is None:
        sys.stdout.write(text)
        return
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out_file)  # Prometheus never reads half a file


@incident_app.command("list")
def incident_list(
    env: AnyEnvOpt = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only the open ones.")] = False,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Every rollback, automatic or asked for, newest first. Only reads."""
    from rollwise.controller import ops

    rows = _run(lambda: ops.incident_list(_ctx(directory, quiet=True), env), as_json)
    rows = [i for i in rows if i.status == "open" or not open_only]
    if as_json:
        _emit_json([i.as_dict() for i in rows])
        return
    for i in rows:
        when = datetime.fromtimestamp(i.opened_at).strftime("%Y-%m-%d %H:%M:%S")
        out.print(
            Text.assemble(
                (f"{i.id:<8}", "bold"),
                (f" {i.status:<6}", "red" if i.status == "open" else "green"),
                f" {when} {i.env}: {i.bad_version} -> {i.restored_version or '-'} "
                f"({i.how}, {i.acted_by})" + (f" {i.reason}" if i.reason else ""),
            )
        )
    if not rows:
        out.print("no incidents")


@incident_app.command("show")
def incident_show(
    incident_id: Annotated[str, typer.Argument(metavar="ID", help="INC-<n>.")],
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """An incident: what happened in order, the evidence behind the decision, the release
    marked bad, who acted, and how it was closed. Only reads."""
    from rollwise.controller import ops

    data = _run(lambda: ops.incident_show(_ctx(directory, quiet=True), incident_id), as_json)
    if as_json:
        _emit_json(data)
        return
    out.print(
        Text.assemble(
            (data["id"], "bold"),
            f" {data['status']}: {data['env']}: {data['bad_version']} marked bad, "
            f"{data['restored_version'] or '-'} restored ({data['how']}, by {data['acted_by']})",
        )
    )
    out.print(f"  why: {data['reason'] or 'not given (rollback --reason records one)'}")
    for row in data["timeline"]:
        at = datetime.fromtimestamp(row["at"]).strftime("%H:%M:%S.%f")[:-3]
        detail = f"  ({row['detail']})" if row["detail"] else ""
        out.print(f"  {at} deployment {row['deployment']}: {row['what']}{detail}")
    if data["evidence"]:
        for m in data["evidence"]["measurements"]:
            out.print(f"  evidence: {m.get('name')}: {m.get('verdict')}: {m.get('reason')}")
    if data["status"] == "closed":
        out.print(f"  closed by {data['closed_by']}: {data['root_cause']}; fix: {data['fix']}")


@incident_app.command("close")
def incident_close(
    incident_id: Annotated[str, typer.Argument(metavar="ID", help="INC-<n>.")],
    root_cause: Annotated[str, typer.Option("--root-cause", help="What went wrong.")],
    fix: Annotated[str, typer.Option("--fix", help="The release that fixes it forward.")],
    directory: DirOpt = Path("."),
) -> None:
    """Close an incident with its root cause and fix-forward release (audit log)."""
    from rollwise.controller import ops

    out.print(
        _run(lambda: ops.incident_close(_ctx(directory), incident_id, root_cause, fix)).message
    )


FreezeEnv = Annotated[str, typer.Argument(metavar="ENV", help="Environment.")]
FreezeName = Annotated[str, typer.Argument(metavar="NAME", help="Window name, e.g. double-11.")]


@freeze_app.command("list")
def freeze_list(
    env: Annotated[
        str | None, typer.Argument(metavar="[ENV]", help="One environment (default: all).")
    ] = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Freeze windows (from rollwise.yaml and added with `freeze add`), each with its
    current or next occurrence in its own zone and in yours (TZ). Only reads."""
    from rollwise import freeze
    from rollwise.controller import freezes

    def run() -> tuple[Any, Any]:
        ctx = _ctx(directory, quiet=True)
        if env is not None:
            ctx.env(env)  # an unknown one is a ConfigError naming the known ones
        now = freezes.clock().now
        return now, freezes.listed(ctx, env, now)

    now, rows = _run(run, as_json)
    here = freezes.here()
    if as_json:
        _emit_json(
            [
                {"env": e, **(freeze.view(o, now, here) if o else {**w.view(), "over": True})}
                for e, w, o in rows
            ]
        )
        return
    for e, w, o in rows:
        out.print(
            Text.assemble(
                (f"{e} {w.name}", "bold"),
                f" ({w.source}, {w.zone}, {w.start_text} .. {w.end_text}): ",
                *_freeze_when(o, now),
            )
        )
        if o is not None and freeze.zone(w.zone).utcoffset(o.start) != here.utcoffset(o.start):
            out.print(f"    here: {freeze.shown_span(o, here)}")
    if not rows:
        out.print(f"{env or 'no environment'}: no freeze windows (docs/freeze.md)")


def _freeze_when(o: Any, now: datetime) -> tuple[Any, ...]:
    from rollwise import freeze

    if o is None:
        return (("over", "dim"),)
    z = freeze.zone(o.window.zone)
    state = ("ACTIVE", "red") if o.covers(now) else ("next", "green")
    return (state, f" {freeze.shown_span(o, z)}")


@freeze_app.command("add")
def freeze_add(
    env: FreezeEnv,
    name: FreezeName,
    zone: Annotated[
        str, typer.Option("--zone", help="IANA time zone, e.g. Asia/Shanghai, America/New_York.")
    ],
    start: Annotated[
        str,
        typer.Option(
            "--start",
            help="First day frozen: YYYY-MM-DD[ HH:MM] (once), MM-DD[ HH:MM] (every year) or "
            "MM/<1st..4th|last><mon..sun>[+N] (e.g. 11/4thu+1).",
        ),
    ],
    end: Annotated[
        str, typer.Option("--end", help="Last day frozen (whole day unless a time is given).")
    ],
    directory: DirOpt = Path("."),
) -> None:
    """Add a freeze window to ENV, kept in the state store (not in rollwise.yaml), so CI
    can add one; adding the same window again changes nothing. Audited."""
    from rollwise.controller import freezes

    added = _run(lambda: freezes.add(_ctx(directory), env, name, zone, start, end))
    out.print(f"{env}: freeze window {name} " + ("added" if added else "is there already"))


@freeze_app.command("remove")
def freeze_remove(env: FreezeEnv, name: FreezeName, directory: DirOpt = Path(".")) -> None:
    """Remove a window added with `freeze add` (those of rollwise.yaml are removed there).
    Audited."""
    from rollwise.controller import freezes

    _run(lambda: freezes.remove(_ctx(directory), env, name))
    out.print(f"{env}: freeze window {name} removed")


@notify_app.command("test")
def notify_test(
    env: Annotated[str, typer.Argument(metavar="ENV", help="Environment whose channels to try.")],
    channel: Annotated[
        str | None, typer.Option("--channel", help="Only this channel (default: every one).")
    ] = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Send a test message to each notification channel of ENV now (past the rate limit)
    and say, per channel, whether it went out and why not. Exit 1 when one failed."""
    from rollwise import notify

    def run() -> list[notify.ChannelResult]:
        ctx = _ctx(directory, quiet=True)
        ctx.env(env)  # an unknown one is a ConfigError naming the known ones
        return notify.try_channels(ctx.config, env, ctx.url, ctx.actor, channel)

    results = _run(run, as_json)
    if as_json:
        _emit_json([vars(r) for r in results])
    for r in [] if as_json else results:
        mark = ("ok", "green") if r.ok else ("failed", "red")
        out.print(Text.assemble((f"{r.channel:<16}", "bold"), " ", mark, f" {r.reason}".rstrip()))
    if not results and not as_json:
        out.print(f"{env}: no notification channels (docs/notifications.md)")
    if any(not r.ok for r in results):
        raise typer.Exit(int(ExitCode.ERROR))


@drill_app.command("run")
def drill_run(
    env: Annotated[str, typer.Argument(help="Environment (not one marked production).")],
    scenario: Annotated[
        str,
        typer.Option("--scenario", help="bad-canary, manual-rollback, failing-migration or alert."),
    ],
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="bad-canary and alert: error-rate=0.3 (default), latency-ms=200, "
            "crash-on-start, fail-health; repeat to combine.",
        ),
    ] = None,
    load: Annotated[
        float, typer.Option("--load", min=0, max=5000, help="Requests per second (0: none).")
    ] = 50.0,
    request: Annotated[
        str, typer.Option("--request", help="What the load sends: METHOD PATH.")
    ] = "POST /orders",
    release: Annotated[
        str | None,
        typer.Option(
            "--release",
            help="Release whose code the drill deploys (default: the live one for a fault, "
            "the newest newer one for a rollback or migration).",
        ),
    ] = None,
    hold: Annotated[
        float,
        typer.Option(
            "--hold",
            min=0,
            max=600,
            help="Seconds of load before the fault, and of writes before a manual rollback.",
        ),
    ] = 2.0,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Also write the report as an HTML page here.")
    ] = None,
    force: ForceOpt = False,
    reason: ReasonOpt = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Run a drill: deploy a drill release (a fault, the next release, or a migration that
    fails), let rollwise roll it back, and measure detection, traffic back, restore, failed
    requests and data against the environment's objectives. Exits 1 when one is missed."""
    from rollwise import drill as dr
    from rollwise.controller import drills

    why = _force_reason(force, reason)
    method, _, path = request.strip().partition(" ")
    options = drills.Options(
        tuple(fault or ()), load, release, hold, (method.upper(), path.strip() or "/"), why
    )
    result = _run(
        lambda: drills.run(_ctx(directory), env, scenario, options, lambda s: err.print(s)),
        as_json,
    )
    if html_file is not None:
        html_file.write_text(dr.html_page(result))
    if as_json:
        _emit_json(result)
    else:
        for line in dr.render(result):
            out.print(line)
        if html_file is not None:
            out.print(f"wrote {html_file}")
    if not result["passed"]:
        raise typer.Exit(int(ExitCode.ERROR))


@drill_app.command("list")
def drill_list(
    env: Annotated[str | None, typer.Argument(help="Environment (default: all).")] = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Every drill, newest first, with its times and verdict. Only reads."""
    from rollwise.controller import drills

    rows = _run(lambda: drills.history(_ctx(directory, quiet=True), env), as_json)
    if as_json:
        _emit_json([{k: v for k, v in r.items() if k not in ("series", "timeline")} for r in rows])
        return
    for r in rows:
        when = datetime.fromtimestamp(r["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        out.print(
            Text.assemble(
                (f"{r['id']:<9}", "bold"),
                (f" {'passed' if r['passed'] else 'failed':<6}", "green" if r["passed"] else "red"),
                f" {when} {r['env']}: {drills.summary(r)}",
            )
        )
    if not rows:
        out.print("no drills")


@drill_app.command("show")
def drill_show(
    drill_id: Annotated[str, typer.Argument(metavar="ID", help="DRILL-<n>.")],
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Also write it as an HTML page here.")
    ] = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """A drill's report: times, requests, data, checklist, objectives. Only reads."""
    from rollwise import drill as dr
    from rollwise.controller import drills

    result = _run(lambda: drills.show(_ctx(directory, quiet=True), drill_id), as_json)
    if html_file is not None:
        html_file.write_text(dr.html_page(result))
    if as_json:
        _emit_json(result)
        return
    for line in dr.render(result):
        out.print(line)


@app.command()
def report(
    env: AnyEnvOpt = None,
    since: Annotated[
        str, typer.Option("--since", help="Period: the last 30d, 12h, 2w... up to now.")
    ] = "30d",
    html_file: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a self-contained HTML page with charts here."),
    ] = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Delivery figures per environment: deployments per day, lead time for changes,
    change failure rate and time to restore (median, p90), from rollwise's records
    (docs/report.md). Only reads."""
    import time

    from rollwise import report as rp
    from rollwise.store import repo

    def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            span = rp.parse_duration_s(since)
        except ValueError as e:
            raise UsageError(f"--since {e}", hint="for example --since 30d") from None
        ctx = _ctx(directory, quiet=True)
        if env:
            ctx.env(env)
        deps = repo.list_deployments(ctx.engine, env, 10_000_000)
        times = rp.commit_times(ctx.root, repo.list_releases(ctx.engine, include_pruned=True))
        now = time.time()
        period = rp.Period(now - span, now)
        found = rp.figures(deps, times.get, period)
        return found | {"drills": rp.drill_rows(drills.history(ctx, env), period)}, deps

    from rollwise.controller import drills

    figures, deps = _run(go, as_json)
    if html_file is not None:
        html_file.write_text(rp.html_page(figures, deps, f"rollwise delivery report, last {since}"))
    if as_json:
        _emit_json(figures)
        return
    table = rp.table(figures, f"last {since}")
    out.print(table)
    for d in figures["drills"]:
        out.print(f"drill {d['id']} on {d['env']}: " + drills.summary(d))
    if html_file is not None:
        out.print(f"wrote {html_file}")


@app.command()
def history(
    env: AnyEnvOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="How many, newest first.")] = 20,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Deployments and rollbacks, newest first."""
    from rollwise.controller import ops

    if (remote := _remote(quiet=True)) is not None:
        path = f"/environments/{env}/history" if env else "/history"
        rows = _run(lambda: remote.get(path, limit=limit), as_json)
    else:
        rows = _run(lambda: ops.history(_ctx(directory, quiet=True), env, limit))
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        out.print(
            f"{r['id']:>4} {r['env']:<8} {r['kind']:<8} {r['from_version'] or '-':>10} "
            f"-> {r['to_version']:<10} {r['status']:<11} {r['actor']} "
            f"{r['reason'] or ''}"
        )


@backup_app.command("create")
def backup_create(
    env: EnvOpt = "dev",
    directory: DirOpt = Path("."),
    reason: Annotated[str, typer.Option(help="Recorded with it.")] = "manual",
    as_json: JsonOpt = False,
) -> None:
    """Dump the environment's database with a manifest (sha256, rows and checksums)."""
    from rollwise.controller import ops

    res = _run(lambda: ops.backup_create(_ctx(directory), env, reason))
    _emit_json(res.data) if as_json else out.print(res.message)


@backup_app.command("list")
def backup_list(
    env: EnvOpt = "dev", directory: DirOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """Backups of the environment, oldest first."""
    from rollwise.controller import ops

    rows = _run(lambda: ops.backup_list(_ctx(directory, quiet=True), env))
    if as_json:
        _emit_json(rows)
        return
    for m in rows:
        rows_n = sum(t["rows"] for t in m["tables"].values())
        out.print(
            f"{m['id']}  {m['engine']:<10} {m['size']:>12} bytes  {rows_n} rows  {m['reason']}"
        )


@backup_app.command("verify")
def backup_verify(
    backup_id: Annotated[str | None, typer.Argument(help="Default: newest.")] = None,
    env: EnvOpt = "dev",
    directory: DirOpt = Path("."),
) -> None:
    """Restore into a scratch database and compare every table with the source at backup
    time; exit 6 when the file is damaged or restores to something else."""
    from rollwise.controller import ops

    out.print(_run(lambda: ops.backup_verify(_ctx(directory), env, backup_id)).message)


@backup_app.command("restore")
def backup_restore(
    backup_id: Annotated[str, typer.Argument(help="Backup id.")],
    env: EnvOpt = "dev",
    lock_wait: LockWait = 0.0,
    then: Annotated[
        str,
        typer.Option(
            "--then",
            help="After the data: `migrate` (default) brings it up to "
            "the live release's schema; `release` deploys the release the backup "
            "was taken under.",
        ),
    ] = "migrate",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Put the database back as it was at the backup, all or nothing; bring code and schema
    together again; check the live release's health. First shows the rows that would be
    lost (written since), by table, and the schema plan, and asks."""
    from rollwise.controller import ops

    if then not in ops.RESTORE_THEN:
        err.print(f"error: --then {then}: use one of {', '.join(ops.RESTORE_THEN)}")
        raise typer.Exit(int(ExitCode.USAGE))
    ctx = _run(lambda: _ctx(directory), as_json)
    plan = _run(lambda: ops.restore_plan(ctx, env, backup_id, then), as_json)
    lost = _run(lambda: ops.backup_loss(ctx, env, backup_id), as_json)
    err.print(f"restoring {backup_id} into {env}'s database loses the rows written since:")
    for table, n in lost.items():
        err.print(f"  {table}: {n} rows")
    if not lost:
        err.print("  none (by row count)")
    err.print(
        f"  backup taken under {plan['backup_release'] or '?'} (schema "
        f"{plan['backup_schema'] or '-'}); live: {plan['live'] or 'nothing'} (schema "
        f"{plan['live_schema'] or '-'}); then: {plan['then']}"
    )
    if not yes and not _run(lambda: _confirm("restore?"), as_json):
        out.print("nothing changed")
        return
    res = _run(lambda: ops.backup_restore(ctx, env, backup_id, lock_wait, then), as_json)
    _emit_json({"ok": True, **res.data}) if as_json else out.print(res.message)


@audit_app.command("verify")
def audit_verify(
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Check the checkpoints with this public key (one you keep "
            "elsewhere) instead of the one beside them.",
        ),
    ] = None,
    directory: DirOpt = Path("."),
) -> None:
    """Check the hash chain and the newest signed checkpoint; name the first changed,
    removed or reordered event, or the removed tail."""
    from rollwise import checkpoints

    def check() -> audit.VerifyResult:
        if public_key is not None:
            _public_key(public_key)
        ctx = _ctx(directory, quiet=True)
        settings = checkpoints.settings(ctx.config, ctx.state_dir, ctx.engine)
        return audit.verify_with_checkpoints(ctx.engine, settings, public_key)

    res = _run(check)
    if not res.ok:
        where = (
            ""
            if res.first_bad_seq is None
            else (f" (first bad event: {res.first_bad_seq}; {res.count} events before it ok)")
        )
        err.print(Text.assemble(("audit log tampered:", "red"), " ", res.problem + where))
        raise typer.Exit(int(ExitCode.INTEGRITY))
    out.print(f"audit log ok: {res.count} events, chain intact")
    out.print(Text(res.note))


@audit_app.command("checkpoint")
def audit_checkpoint(directory: DirOpt = Path(".")) -> None:
    """Sign a checkpoint of the log now and write it (and its copies); deploys, rollbacks
    and the other operations write one when they end."""
    from rollwise import checkpoints

    ctx = _run(lambda: _ctx(directory, quiet=True))
    settings = _run(lambda: checkpoints.settings(ctx.config, ctx.state_dir, ctx.engine))
    cp = _run(lambda: audit.checkpoint(ctx.engine, settings))
    out.print(
        Text(
            f"{cp.label()}: {cp.count} events, head {cp.head[:16]}…, key {cp.key_id}, "
            f"written to {settings.checkpoint_file}"
        )
    )


@audit_app.command("keygen")
def audit_keygen(directory: DirOpt = Path(".")) -> None:
    """Create the key that signs checkpoints (mode 0600, outside .rollwise/). The first
    checkpoint creates it too when it is missing."""
    from rollwise import checkpoints

    ctx = _run(lambda: _ctx(directory, quiet=True))
    settings = _run(lambda: checkpoints.settings(ctx.config, ctx.state_dir, ctx.engine))
    key = _run(lambda: checkpoints.create_key(settings.key_file))
    out.print(
        Text(
            f"created {settings.key_file} (mode 0600), key "
            f"{checkpoints.key_id(key.public_key())}; keep it out of the repository "
            "and out of copies of .rollwise/"
        )
    )


@audit_app.command("export")
def audit_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default: stdout).")
    ] = None,
    directory: DirOpt = Path("."),
) -> None:
    """Write every event as JSON lines."""
    engine = _run(lambda: _ctx(directory, quiet=True).engine)
    if output is None:
        audit.export(engine, sys.stdout)
        return

    def write() -> int:
        try:
            with output.open("w") as f:
                return audit.export(engine, f)
        except OSError as e:
            raise UsageError(
                f"cannot write the export: {e.strerror}",
                where=str(output),
                hint="name a file in a folder that exists",
            ) from None

    err.print(f"wrote {_run(write)} events to {output}")


@secrets_app.command("keygen")
def secrets_keygen() -> None:
    """Print a new key; export it as ROLLWISE_SECRETS_KEY (keep it out of the repo)."""
    from rollwise import secrets

    out.print(secrets.new_key())


@secrets_app.command("set")
def secrets_set(name: str, env: EnvOpt = "dev", directory: DirOpt = Path(".")) -> None:
    """Store a secret's value (read from stdin) in the environment's encrypted file."""
    from rollwise import secrets

    def go() -> Path:
        secrets.check_name(name)
        ctx = _ctx(directory, quiet=True)
        ctx.env(env)
        value = (
            sys.stdin.readline().rstrip("\n")
            if not sys.stdin.isatty()
            else typer.prompt(f"value of {name}", hide_input=True)
        )
        path = secrets.secrets_file(ctx.state_dir, env)
        secrets.write_file(path, secrets.read_file(path) | {name: secrets.Secret(value)})
        ctx.emit("secret", reasons.OK, env=env, data={"name": name})
        return path

    out.print(f"stored {name} in {_run(go)}")


@secrets_app.command("list")
def secrets_list(env: EnvOpt = "dev", directory: DirOpt = Path(".")) -> None:
    """Names of stored secrets (never values)."""
    from rollwise import secrets

    def go() -> list[str]:
        ctx = _ctx(directory, quiet=True)
        ctx.env(env)
        return sorted(secrets.read_file(secrets.secrets_file(ctx.state_dir, env)))

    for n in _run(go):
        out.print(n)


@config_app.command("schema")
def config_schema(
    bundle: Annotated[
        bool, typer.Option("--bundle", help="The schema of rollwise-bundle.yaml instead.")
    ] = False,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write it to this file (what `init` writes and the "
            "`yaml-language-server` comment names) instead of printing it.",
        ),
    ] = None,
) -> None:
    """Print the JSON Schema of rollwise.yaml, for editors (completion, hover docs,
    checks as you type)."""
    from rollwise.config.reference import json_schema

    text = json.dumps(json_schema(bundle), indent=2) + "\n"
    if out_file is None:
        sys.stdout.write(text)
    else:
        out_file.write_text(text)


@config_app.command("docs")
def config_docs() -> None:
    """Print the Markdown reference of rollwise.yaml and rollwise-bundle.yaml
    (docs/config.md)."""
    from rollwise.config.reference import markdown

    sys.stdout.write(markdown())


@config_app.command("check")
def config_check(directory: DirOpt = Path(".")) -> None:
    """Validate rollwise.yaml."""
    from rollwise.config.lint import lint
    from rollwise.config.load import load_config
    from rollwise.project import find_config

    cfg = _run(lambda: load_config(find_config(directory)))
    for w in lint(cfg):
        err.print(Text.assemble(("warning:", "yellow"), f" {w}"))
    out.print(f"ok: app {cfg.app}, environments {', '.join(cfg.environments)}")


@agent_app.command("run", hidden=True)
def agent_run(
    env_dir: Annotated[str, typer.Option()], listen: Annotated[str | None, typer.Option()] = None
) -> None:
    """Run an agent in the foreground (rollwise starts it for you)."""
    from rollwise.agent.server import main as agent_main

    agent_main(env_dir, listen)


@agent_app.command("install-service")
def agent_install_service(
    env: EnvOpt = "dev",
    to: Annotated[Path, typer.Option("--to", help="Folder the unit files are written to.")] = Path(
        "/etc/systemd/system"
    ),
    user: Annotated[
        str | None, typer.Option("--user", help="User the services run as (default: root).")
    ] = None,
    serve_listen: Annotated[
        str, typer.Option("--serve-listen", help="Address of `rollwise serve`.")
    ] = "127.0.0.1:9747",
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the units instead of writing them.")
    ] = False,
    directory: DirOpt = Path("."),
) -> None:
    """Write systemd units for the environment's agent (router and instances, back after a
    reboot) and for `rollwise serve` (docs/service.md)."""
    from rollwise.service import ServiceSpec, unit_names, units

    def go() -> ServiceSpec:
        ctx = _ctx(directory, quiet=True)
        cfg = ctx.env(env)
        if cfg.target.type == "ssh":
            raise UsageError(
                f"environment {env!r} runs on SSH hosts: their agents are started "
                "by rollwise on each host",
                where=f"environments.{env}.target",
                hint="install-service is for an environment on this machine",
            )
        return ServiceSpec(
            app=ctx.config.app,
            env=env,
            root=ctx.root.resolve(),
            env_dir=ctx.env_dir(env).resolve(),
            python=sys.executable,
            router_listen=cfg.router.listen if cfg.router.type == "builtin" else None,
            serve_listen=serve_listen,
            user=user,
        )

    spec = _run(go)
    files = units(spec)
    if print_only:
        for name, text in files.items():
            out.print(f"# {name}\n{text}")
        return
    for name, text in files.items():
        (to / name).write_text(text)
        out.print(f"wrote {to / name}")
    agent, serve_unit = unit_names(spec)
    out.print(
        f"next: put ROLLWISE_WEBHOOK_TOKEN=... in /etc/rollwise/{spec.app}.env (mode "
        f"600), then `systemctl daemon-reload && systemctl enable --now {agent} "
        f"{serve_unit}`"
    )


@agent_app.command("stop")
def agent_stop(env: EnvOpt = "dev", directory: DirOpt = Path(".")) -> None:
    """Stop the environment's agent and its instances (they come back on the next command)."""
    from rollwise.agent.client import AgentClient

    def go() -> str:
        ctx = _ctx(directory, quiet=True)
        client = AgentClient(ctx.env_dir(env), env)
        if client.alive() is None:
            return f"{env}: agent not running"
        client.call("shutdown")
        return f"{env}: agent stopping"

    out.print(_run(go))


@hosts_app.command("list")
def hosts_list(
    env: EnvOpt = "dev", directory: DirOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """The environment's hosts as configured (no connection)."""
    from rollwise.controller import hosts

    rows = _run(lambda: hosts.hosts_list(_ctx(directory, quiet=True), env), as_json)
    if as_json:
        _emit_json(rows)
        return
    for h in rows:
        labels = " ".join(f"{k}={v}" for k, v in h["labels"].items())
        out.print(
            f"{h['name']:<16} {h['user']}@{h['address']}:{h['port']}  instances on "
            f"{h['bind']}  {labels}".rstrip()
        )


@hosts_app.command("check")
def hosts_check(
    env: EnvOpt = "dev", directory: DirOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """Connect to every host (keys verified) and report its Python, whether the agent is
    installed and running, and free disk under `ssh.root`; exit 1 when a host is not
    ready. Changes nothing."""
    from rollwise.controller import hosts

    rows = _run(lambda: hosts.hosts_check(_ctx(directory, quiet=True), env), as_json)
    bad = [r for r in rows if not r["reachable"] or not r["agent_installed"]]
    if as_json:
        _emit_json(rows)
    else:
        for r in rows:
            if not r["reachable"]:
                out.print(
                    Text.assemble(
                        (f"{r['name']:<16} ", "bold"), ("NOT READY", "red"), f"  {r['error']}"
                    )
                )
                continue
            out.print(
                Text.assemble(
                    (f"{r['name']:<16} ", "bold"),
                    f"python {r['python']}  agent ",
                    ("installed", "green") if r["agent_installed"] else ("NOT installed", "red"),
                    ", running" if r["agent_running"] else ", not running",
                    f"  free {r['free_mb']} MB" if r["free_mb"] is not None else "",
                )
            )
        if bad:
            err.print(
                f"{len(bad)} host(s) not ready: run `rollwise hosts setup -e {env}` "
                "for missing agents; see the errors above for unreachable ones"
            )
    if bad:
        raise typer.Exit(int(ExitCode.ERROR))


@hosts_app.command("run")
def hosts_run(
    command: Annotated[str, typer.Argument(help="Shell command, quoted.")],
    env: EnvOpt = "dev",
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Only this host (repeat for more). Default: every host."),
    ] = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Run a command on every host of the environment at once and print each host's
    output; exit 1 when it failed on any host. The command is recorded in the audit log."""
    from rollwise.controller import hosts

    rows = _run(lambda: hosts.hosts_run(_ctx(directory, quiet=True), env, command, host), as_json)
    if as_json:
        sys.stdout.write(hostsrun.as_json(rows))
    else:
        for r in rows:
            out.print(Text.assemble(*hostsrun.segments(r)))
    if code := hostsrun.exit_code(rows):
        raise typer.Exit(code)


@hosts_app.command("trust")
def hosts_trust(
    host: Annotated[str, typer.Argument(help="Host name or address.")],
    env: EnvOpt = "dev",
    fingerprint: Annotated[
        str | None,
        typer.Option(
            "--fingerprint",
            help="The key's SHA256 fingerprint as its owner gave it; "
            "without it, asks on a terminal.",
        ),
    ] = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Record the host's SSH key in `ssh.known_hosts`, on purpose: only when it matches
    --fingerprint, or you confirm it at a terminal. A host whose key is already there with
    another key is refused."""
    from rollwise.controller import hosts

    ask = (lambda q: typer.confirm(q, default=False, err=True)) if sys.stdin.isatty() else None
    res = _run(
        lambda: hosts.hosts_trust(_ctx(directory, quiet=True), env, host, fingerprint, ask), as_json
    )
    if as_json:
        _emit_json(res)
    elif res["trusted"]:
        out.print(f"{res['host']}: trusted {res['fingerprint']} (added to {res['known_hosts']})")
    else:
        out.print(f"{res['host']}: not trusted; nothing recorded")


@hosts_app.command("setup")
def hosts_setup(
    env: EnvOpt = "dev", directory: DirOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """Install rollwise's agent on every host of the environment (its modules, under
    `ssh.root`; the host needs Python 3.11+). Idempotent: a host that has this version's
    agent is left as it is."""
    from rollwise.controller import hosts

    res = _run(lambda: hosts.hosts_setup(_ctx(directory, quiet=True), env), as_json)
    if as_json:
        _emit_json(res)
        return
    for name, what in res["hosts"].items():
        out.print(f"{name:<16} {what}")
    out.print(f"agent {res['agent']} under {res['root']} on {len(res['hosts'])} host(s)")


@app.command()
def demo(
    as_json: JsonOpt = False,
    example: Annotated[Path, typer.Option(help="Example app to deploy.")] = Path(
        "examples/order-sync"
    ),
    rate: Annotated[
        float, typer.Option(min=1, max=5000, help="Load, requests per second.")
    ] = 250.0,
) -> None:
    """Under load: deploy order-sync 1.0.0, send 1.1.0 (fails 8% of orders) out as a canary
    that analysis rolls back, then promote 1.1.1; print a report. Exits 1 if a request
    failed because of a switch, an order was lost, or the bad release was not stopped."""
    from rollwise.demo import run_demo

    report = _run(lambda: run_demo(example, rate, log=None if as_json else err.print))
    if as_json:
        _emit_json(report)
    else:
        from rollwise.demo import render

        out.print(render(report))
    if (
        report["requests_failed_by_switch"]
        or report["orders_lost"]
        or not report["rolled_back"]
        or report["live_version"] != "1.1.1"
    ):
        raise typer.Exit(int(ExitCode.ERROR))


def _bundle(directory: Path) -> Any:
    from rollwise.controller.bundle import Bundle

    return Bundle.open(directory, _bus)


@bundle_app.command("deploy")
def bundle_deploy(
    versions: Annotated[
        list[str],
        typer.Argument(help="SERVICE=VERSION, one per service to move (others stay as they are)."),
    ],
    env: EnvOpt = "dev",
    lock_wait: LockWait = 0.0,
    break_freeze: BreakFreezeOpt = False,
    reason: ReasonOpt = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Deploy the named services, each after the services it depends on, each with its own
    strategy and checks. When one fails, the services already moved go back, dependents
    first. A service inside a freeze window stops it before anything moves."""
    from rollwise.controller import bundle

    glass = _break_reason(break_freeze, reason)

    def go() -> Any:
        b = _bundle(directory)
        return bundle.deploy(b, env, bundle.parse_versions(b, versions), lock_wait, glass)

    res = _run(go, as_json)
    _emit_json({"ok": True, **res.data, "message": res.message}) if as_json else out.print(
        res.message
    )


@bundle_app.command("rollback")
def bundle_rollback(
    env: EnvOpt = "dev",
    lock_wait: LockWait = 0.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what changes.")] = False,
    yes: DropYesOpt = False,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Put back what the last bundle deploy moved, dependents first; each release left is
    marked bad. Refused when a service has been deployed by itself since."""
    from rollwise.controller import bundle, ops

    def go() -> Any:
        b = _bundle(directory)
        _, undo = bundle.rollback_plan(b, env)
        dropped_total = 0
        for m in undo:
            ctx = b.context(m["service"], env)
            live, target = ops.rollback_plan(ctx, env, m["from_version"])
            title = f"{m['service']} ({b.config.services[m['service']].dir}), {env}"
            dropped_total += sum(_preview(ctx, env, live, target, title, as_json).values())
        if dry_run:
            return ops.Outcome(
                "dry run: nothing changed", {"dropped": dropped_total}, changed=False
            )
        if (
            dropped_total
            and not yes
            and not _confirm(
                f"the down migrations drop {dropped_total} values (kept in parked files "
                "first); roll the bundle back?"
            )
        ):
            return ops.Outcome("nothing changed", {"dropped": dropped_total}, changed=False)
        return bundle.rollback(b, env, lock_wait)

    res = _run(go, as_json)
    _emit_json(
        {"ok": True, **res.data, "message": res.message, "changed": res.changed}
    ) if as_json else out.print(res.message)


@bundle_app.command("recover")
def bundle_recover(
    env: EnvOpt = "dev",
    lock_wait: LockWait = 0.0,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """After a bundle command was killed: finish or undo each service's own deployment,
    then put back what the interrupted deploy moved (an interrupted rollback is finished)."""
    from rollwise.controller import bundle

    res = _run(lambda: bundle.recover(_bundle(directory), env, lock_wait), as_json)
    _emit_json(
        {"ok": True, **res.data, "message": res.message, "changed": res.changed}
    ) if as_json else out.print(res.message)


@bundle_app.command("status")
def bundle_status(
    env: EnvOpt = "dev", directory: DirOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """Each service of the bundle on each host, in dependency order, and the last bundle
    operation. Only reads."""
    from rollwise.controller import bundle

    data = _run(lambda: bundle.status(_bundle(directory), env), as_json)
    if as_json:
        _emit_json(data)
        return
    out.print(Text(f"bundle {data['bundle']}, {env}", style="bold"))
    for s in data["services"]:
        deps = f" (needs {', '.join(s['depends_on'])})" if s["depends_on"] else ""
        out.print(Text.assemble(("service ", "dim"), (s["service"], "bold"), deps))
        _print_env(f"  {env}", s)
    if last := data["last"]:
        moves = ", ".join(
            f"{m['service']} {m['from_version'] or '-'} -> {m['to_version']} ({m['state']})"
            for m in last["moves"]
        )
        out.print(
            f"last: {last['kind']} {last['id']} {last['state']} by {last['actor']}: "
            f"{moves}" + (f"; {last['error']}" if last["error"] else "")
        )


@kube_app.command("manifests")
def kube_manifests(
    version: Annotated[str, typer.Argument(help="Release version.")],
    env: EnvOpt = "dev",
    percent: PercentOpt = 100,
    live: Annotated[
        str | None,
        typer.Option(
            "--live", help="The version serving now (default: the environment's live release)."
        ),
    ] = None,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Print the Deployment, Service and traffic objects that put VERSION in front of
    --percent of the traffic, checked against the published Kubernetes schemas."""
    import yaml

    from rollwise.controller import kubernetes

    objects = _run(
        lambda: kubernetes.manifests(_ctx(directory, quiet=True), env, version, percent, live),
        as_json,
    )
    if as_json:
        _emit_json(objects)
    else:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))


@kube_app.command("apply")
def kube_apply(
    version: Annotated[str, typer.Argument(help="Release version.")],
    env: EnvOpt = "dev",
    percent: PercentOpt = 100,
    directory: DirOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Apply those objects to the cluster KUBECONFIG names (server-side apply, field
    manager `rollwise`); needs `pip install 'rollwise[kubernetes]'`."""
    from rollwise.controller import kubernetes

    done = _run(lambda: kubernetes.apply(_ctx(directory), env, version, percent), as_json)
    _emit_json({"ok": True, "applied": done}) if as_json else out.print(
        "applied: " + ", ".join(done)
    )


def main() -> None:
    os.umask(0o077)  # every file rollwise (and the agent it starts) creates: owner only
    try:
        app()
    except SystemExit as e:
        _drain_notifications()  # before the result line, which ends a JSON progress stream
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if PROGRESS["mode"] == "json" and not PROGRESS.get("ended"):
            # the stream always ends with one result object (an error wrote its own)
            sys.stderr.write(
                json.dumps({"result": "ok" if code == 0 else "error", "exit_code": code}) + "\n"
            )
        raise


def _drain_notifications() -> None:
    """Messages still queued when a command ends go out first: a one-shot deploy tells
    people too (waits at most notify.DRAIN_S)."""
    from rollwise import notify

    notify.drain()
