"""Plain data: plans for deployments and rollbacks, built without I/O and tested by equality."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from semver import Version

from rollwise.errors import RollwiseError

# kinds of steps, in the order they run
VERIFY = "verify"
UNPACK = "unpack"
PRE_HOOKS = "pre_hooks"
BACKUP = "backup"
MIGRATE = "migrate"
START = "start"
HEALTH = "health"
PREVIEW = "preview"
CANARY = "canary"  # one Stage per canary step before the switch
BATCH = "rolling"  # one Batch per batch of a rolling deploy
SWITCH = "switch"
MIGRATE_DOWN = "migrate_down"
PURGE = "purge_caches"
POST_HOOKS = "post_hooks"
CHECKS = "checks"
BAKE = "bake"
DRAIN = "drain"
STOP_OLD = "stop_old"
FINALIZE = "finalize"

DEPLOY = "deploy"
ROLLBACK = "rollback"

# where instances of plans and states written before placement was recorded listen: all
# were started by the local agent on the controller's loopback
LEGACY_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Endpoint:
    """Where an instance listens, as its target handed it out."""

    host: str
    port: int

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.port}{path}"


@dataclass(frozen=True)
class InstancePlan:
    name: str
    version: str
    host: str
    port: int

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstancePlan:
        return cls(**{"host": LEGACY_HOST, **d})


@dataclass(frozen=True)
class Step:
    """A step that needs nothing but its kind."""

    kind: str

    @property
    def name(self) -> str:
        """How the journal, events, `status` and failpoints know the step."""
        return self.kind


@dataclass(frozen=True)
class Stage:
    """One canary step: `weight` percent of requests for at least `pause_s` seconds."""

    weight: int
    pause_s: float
    until_promote: bool = False
    kind: ClassVar[str] = CANARY

    @property
    def name(self) -> str:
        return f"{CANARY}:{self.weight}"


@dataclass(frozen=True)
class Batch:
    """Rolling: start batch `number` (from 1) of `Plan.batches()`, watch it, retire the old
    instances it replaces."""

    number: int
    kind: ClassVar[str] = BATCH

    @property
    def name(self) -> str:
        return f"{BATCH}:{self.number}"


AnyStep = Step | Stage | Batch
MOVES_TRAFFIC = (CANARY, BATCH, SWITCH)  # once one has started, requests may reach the new


def step_as_dict(step: AnyStep) -> dict[str, Any]:
    return {**asdict(step), "kind": step.kind}


def step_from_dict(d: dict[str, Any]) -> AnyStep:
    args = {k: v for k, v in d.items() if k != "kind"}
    return (
        Stage(**args)
        if d["kind"] == CANARY
        else Batch(**args)
        if d["kind"] == BATCH
        else Step(d["kind"])
    )


def step_from_name(name: str, stages: list[dict[str, Any]]) -> AnyStep:
    """A step of a plan written before steps were typed, which stored each by its name
    (`canary:<weight>` with its stage in the plan's `stages`, `rolling:<number>`)."""
    kind, _, arg = name.partition(":")
    if kind == CANARY:
        return next(Stage(**s) for s in stages if s["weight"] == int(arg))
    return Batch(int(arg)) if kind == BATCH else Step(name)


@dataclass(frozen=True)
class Plan:
    env: str
    kind: str
    to_version: str
    sha256: str
    from_version: str | None
    new: tuple[InstancePlan, ...]
    old: tuple[InstancePlan, ...]
    steps: tuple[AnyStep, ...] = field(default=())
    bake_s: float = 0.0
    batch_size: int = 0  # rolling deploys only
    pause_s: float = 0.0  # rolling: each batch is watched this long
    ends: tuple[int, ...] = ()  # rolling: new instances serving after each batch

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": [step_as_dict(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(
            env=d["env"],
            kind=d["kind"],
            to_version=d["to_version"],
            sha256=d["sha256"],
            from_version=d["from_version"],
            new=tuple(InstancePlan.from_dict(i) for i in d["new"]),
            old=tuple(InstancePlan.from_dict(i) for i in d["old"]),
            steps=tuple(
                step_from_name(s, d.get("stages", [])) if isinstance(s, str) else step_from_dict(s)
                for s in d["steps"]
            ),
            bake_s=float(d.get("bake_s", 0.0)),
            batch_size=int(d.get("batch_size", 0)),
            pause_s=float(d.get("pause_s", 0.0)),
            ends=tuple(int(e) for e in d.get("ends", ())),
        )

    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def traffic_moving(self, done: set[str]) -> bool:
        """True once any request may have gone to the new release (`done`: step names)."""
        return any(s.name in done for s in self.steps if s.kind in MOVES_TRAFFIC)

    def batches(self) -> list[tuple[tuple[InstancePlan, ...], tuple[InstancePlan, ...]]]:
        """Rolling: per batch, the new instances it starts and the old ones it retires
        (the last batch retires every old instance left)."""
        if not self.batch_size:
            return []
        ends = self.ends or batch_ends(len(self.new), self.batch_size, ())
        starts = (0, *ends[:-1])
        return [
            (self.new[a:b], self.old[a:b] if b < ends[-1] else self.old[a:])
            for a, b in zip(starts, ends, strict=True)
        ]


def batch_ends(total: int, batch_size: int, batches: tuple[int | str, ...]) -> tuple[int, ...]:
    """How many new instances serve after each rolling batch: every `batch_size`, or as
    `batches` says (counts, percents of `total` rounded up), repeats dropped."""
    if batches:
        want = [
            min(total, b if isinstance(b, int) else math.ceil(total * int(b[:-1]) / 100))
            for b in batches
        ]
    else:
        want = [min(total, k * batch_size) for k in range(1, math.ceil(total / batch_size) + 1)]
    ends: list[int] = []
    for w in want:
        if w > (ends[-1] if ends else 0):
            ends.append(w)
    return tuple(ends)


def plan_deployment(
    *,
    env: str,
    kind: str,
    to_version: str,
    sha256: str,
    from_version: str | None,
    old: list[InstancePlan],
    endpoints: list[Endpoint],
    suffix: str,
    pre_hooks: bool,
    post_hooks: bool,
    strategy: str = "all-at-once",
    stages: tuple[Stage, ...] = (),
    bake_s: float = 0.0,
    checks: bool = False,
    batch_size: int = 1,
    pause_s: float = 0.0,
    batches: tuple[int | str, ...] = (),
    migrate: bool = False,
    migrate_down: bool = False,
    down_first: bool = False,
    purge: bool = False,
    backup: bool = False,
) -> Plan:
    """Migrate the schema up, start new beside old at the `endpoints` the target handed out
    (old stays at full capacity), check, move traffic (at once or in canary stages), verify,
    keep old warm for the bake time, drain and stop old. A rollback runs down migrations
    after traffic is back on the older release (`down_first`: before the older release
    starts, for apps that refuse a newer schema).

    Rolling: new instances start `batch_size` at a time; each batch takes its share of
    traffic and is watched before the old instances it replaces leave.

    A rollback, and the first release of an environment, move traffic at once: there is
    nothing to compare with, and a rollback must not wait."""
    new = tuple(
        InstancePlan(f"{to_version}-{suffix}-{n}", to_version, e.host, e.port)
        for n, e in enumerate(endpoints)
    )
    progressive = kind == DEPLOY and bool(old)
    stages = (
        tuple(s for s in stages if s.weight < 100) if progressive and strategy == "canary" else ()
    )
    rolling = batch_size if progressive and strategy == "rolling" else 0
    ends = batch_ends(len(new), batch_size, batches) if rolling else ()
    bake = bake_s if progressive and not rolling else 0.0
    launch: list[str | Batch] = (
        [Batch(k + 1) for k in range(len(ends))] if rolling else [START, HEALTH]
    )
    down = [MIGRATE_DOWN] if migrate_down and kind == ROLLBACK else []
    steps = [
        VERIFY,
        UNPACK,
        *([PRE_HOOKS] if pre_hooks else []),
        *([BACKUP] if backup and kind == DEPLOY else []),
        *([MIGRATE] if migrate and kind == DEPLOY else []),
        *(down if down_first else []),
        *launch,
        *([PREVIEW] if progressive and strategy == "blue-green" and checks else []),
        *stages,
        SWITCH,
        *([] if down_first else down),
        *([PURGE] if purge else []),
        *([POST_HOOKS] if post_hooks else []),
        *([CHECKS] if checks else []),
        *([BAKE] if bake > 0 else []),
        DRAIN,
        STOP_OLD,
        FINALIZE,
    ]
    return Plan(
        env,
        kind,
        to_version,
        sha256,
        from_version,
        new,
        tuple(old),
        tuple(Step(s) if isinstance(s, str) else s for s in steps),
        bake,
        rolling,
        pause_s if rolling else 0.0,
        ends,
    )


def canary_weights(
    new: tuple[InstancePlan, ...], old: tuple[InstancePlan, ...], percent: int
) -> dict[str, int]:
    """Router weights that send `percent` of requests to the new instances, spread evenly
    over each side, in the smallest integers that do it."""
    w_new, w_old = percent * len(old), (100 - percent) * len(new)
    g = math.gcd(w_new, w_old)
    return {**{i.name: w_old // g for i in old}, **{i.name: w_new // g for i in new}}


def release_order(deployments_oldest_first: list[tuple[str, str, str]]) -> list[str]:
    """Versions in the order they first went live in an environment, from its deployments
    (kind, to_version, status), oldest first. Only succeeded deploys count: a rollback
    does not make a release newer, and a failed deploy never went live."""
    order: list[str] = []
    for kind, version, status in deployments_oldest_first:
        if kind == DEPLOY and status == "succeeded" and version not in order:
            order.append(version)
    return order


def parse_version(text: str) -> Version:
    """A release version as a semantic version (a leading `v` is dropped); a version that is
    not one (`latest`, `1.2`, `2024-05-01`) is refused, never compared some other way."""
    try:
        return Version.parse(text.removeprefix("v"))
    except ValueError:
        raise RollwiseError(
            f"{text!r} is not a semantic version",
            hint="use MAJOR.MINOR.PATCH, for example 1.2.3 or 1.2.3-rc.1",
        ) from None


def check_version(version: str) -> str:
    """The version a release is stored under: semantic, without a leading `v`."""
    return str(parse_version(version))


def is_newer(version: str, than: str, order: list[str]) -> bool:
    """`version` went live after `than` in the environment (or, if either never went live
    there, has the higher semantic version: 1.10.0 > 1.9.0 > 1.9.0-rc.2 > 1.9.0-rc.1;
    build metadata, `+...`, does not count)."""
    if version in order and than in order:
        return order.index(version) > order.index(than)
    return parse_version(version) > parse_version(than)


@dataclass(frozen=True)
class RollbackChoice:
    """Where a rollback goes (`version`), or why it goes nowhere (`refusal`, with the
    reason constant `why`)."""

    version: str | None
    why: str = ""
    refusal: str = ""


NOTHING_OLDER = "NothingOlder"
NEWER_THAN_LIVE = "NewerThanLive"


def rollback_target(
    live: str | None, order: list[str], good: set[str], bad: set[str], requested: str | None
) -> RollbackChoice:
    """The release a rollback goes to: the requested one if it is older than the live
    release, else the newest known-good release that went live before the live one and is
    not marked bad. A rollback never moves forward."""
    if requested is not None:
        if live is not None and requested != live and is_newer(requested, live, order):
            return RollbackChoice(
                None,
                NEWER_THAN_LIVE,
                f"{requested} is newer than the live release {live}: going "
                f"there is a deploy, not a rollback",
            )
        return RollbackChoice(requested)
    before = order[: order.index(live)] if live in order else []
    target = next((v for v in reversed(before) if v in good and v not in bad), None)
    if target is None:
        return RollbackChoice(
            None, NOTHING_OLDER, f"no known-good release deployed before {live or 'nothing'}"
        )
    return RollbackChoice(target)


@dataclass(frozen=True)
class Move:
    """One service of a bundle going from one release to another (`from_version` None: its
    first deploy)."""

    service: str
    from_version: str | None
    to_version: str


def bundle_order(depends_on: dict[str, tuple[str, ...]]) -> list[str]:
    """Services in deploy order: each after every service it depends on, otherwise in the
    order given. A rollback goes through it backwards. Raises ValueError naming an unknown
    service or a cycle."""
    for name, deps in depends_on.items():
        if unknown := [x for x in deps if x not in depends_on]:
            raise ValueError(
                f"{name} depends on {', '.join(unknown)}, which is not a service of the bundle"
            )
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            raise ValueError(f"depends_on goes round in a circle: {' -> '.join(cycle)}")
        visiting.append(name)
        for dep in depends_on[name]:
            visit(dep)
        visiting.pop()
        order.append(name)

    for name in depends_on:
        visit(name)
    return order


def bundle_moves(
    order: list[str], live: dict[str, str | None], wanted: dict[str, str]
) -> list[Move]:
    """The services a bundle deploy moves, in dependency order: those named in `wanted`
    whose live release differs from it."""
    return [
        Move(s, live.get(s), wanted[s]) for s in order if s in wanted and live.get(s) != wanted[s]
    ]
