"""Plain data: plans for deployments and rollbacks, built without I/O and tested by equality."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# step names, in the order they run
VERIFY = "verify"
UNPACK = "unpack"
PRE_HOOKS = "pre_hooks"
START = "start"
HEALTH = "health"
SWITCH = "switch"
POST_HOOKS = "post_hooks"
DRAIN = "drain"
STOP_OLD = "stop_old"
FINALIZE = "finalize"

DEPLOY = "deploy"
ROLLBACK = "rollback"


@dataclass(frozen=True)
class InstancePlan:
    name: str
    version: str
    port: int


@dataclass(frozen=True)
class Plan:
    env: str
    kind: str
    to_version: str
    sha256: str
    from_version: str | None
    new: tuple[InstancePlan, ...]
    old: tuple[InstancePlan, ...]
    steps: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(
            env=d["env"], kind=d["kind"], to_version=d["to_version"], sha256=d["sha256"],
            from_version=d["from_version"],
            new=tuple(InstancePlan(**i) for i in d["new"]),
            old=tuple(InstancePlan(**i) for i in d["old"]),
            steps=tuple(d["steps"]),
        )

    def weights_new(self) -> dict[str, int]:
        return {i.name: 1 for i in self.new}

    def weights_old(self) -> dict[str, int]:
        return {i.name: 1 for i in self.old}


def plan_deployment(*, env: str, kind: str, to_version: str, sha256: str,
                    from_version: str | None, old: list[InstancePlan], ports: list[int],
                    suffix: str, pre_hooks: bool, post_hooks: bool) -> Plan:
    """Blue-green: start new beside old, check, switch all traffic, drain and stop old."""
    new = tuple(InstancePlan(f"{to_version}-{suffix}-{n}", to_version, port)
                for n, port in enumerate(ports))
    steps = [VERIFY, UNPACK, *([PRE_HOOKS] if pre_hooks else []), START, HEALTH, SWITCH,
             *([POST_HOOKS] if post_hooks else []), DRAIN, STOP_OLD, FINALIZE]
    return Plan(env, kind, to_version, sha256, from_version, new, tuple(old), tuple(steps))


def rollback_target(live: str | None, good_newest_first: list[str], bad: set[str],
                    requested: str | None) -> str | None:
    """The release a rollback goes to: the requested one, or the newest known-good release
    that is not live and not marked bad. None when there is nothing to go back to."""
    if requested is not None:
        return requested
    return next((v for v in good_newest_first if v != live and v not in bad), None)
