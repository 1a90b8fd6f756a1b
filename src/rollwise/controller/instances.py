"""What the steps of a deployment do to instances and traffic: start instances and wait until
they are ready, move traffic (read back to verify), stop instances. The state machine and
the canary and rolling watches both use these."""

from __future__ import annotations

import time
from typing import Any

from rollwise import domain as d
from rollwise import reasons
from rollwise.controller.context import Context, Environment
from rollwise.errors import RollwiseError, Unreachable
from rollwise.traffic import Backend


def start(ctx: Context, env: Environment, instances: tuple[d.InstancePlan, ...]) -> None:
    """Start instances at their endpoints (idempotent by name)."""
    env.target.ensure()
    for i in instances:
        env.target.start(
            i.name,
            i.version,
            i.endpoint,
            ctx.config.run.command,
            ctx.instance_env(env.name, i.version),
        )


def wait_ready(ctx: Context, env: Environment, instances: tuple[d.InstancePlan, ...]) -> float:
    """Wait until each instance answers its health check; returns ms."""
    t0 = time.monotonic()
    for i in instances:
        env.target.wait_ready(i.name, i.endpoint, ctx.config.health)
    return round((time.monotonic() - t0) * 1000, 1)


def start_ready(ctx: Context, env: Environment, instances: tuple[d.InstancePlan, ...]) -> float:
    start(ctx, env, instances)
    return wait_ready(ctx, env, instances)


def drain(ctx: Context, env: Environment, instances: tuple[d.InstancePlan, ...]) -> dict[str, int]:
    """Wait until no request is in flight on the instances (already out of rotation), all
    within one `stop.drain_timeout_s`; returns what each still had when it ended."""
    deadline = time.monotonic() + ctx.config.stop.drain_timeout_s
    return {
        i.name: env.router.drain(i.name, max(0.0, deadline - time.monotonic())) for i in instances
    }


def switch(ctx: Context, env: Environment, to: tuple[d.InstancePlan, ...]) -> dict[str, Any]:
    """Send all new requests to `to`."""
    return shift(ctx, env, to, {i.name: 1 for i in to})


def shift(
    ctx: Context, env: Environment, instances: tuple[d.InstancePlan, ...], weights: dict[str, int]
) -> dict[str, Any]:
    """Apply `weights` (others get 0), then read them back to verify."""
    router = env.router
    router.register([Backend(i.name, i.version, i.host, i.port) for i in instances])
    want = {k: v for k, v in weights.items() if v > 0}
    t0 = time.perf_counter()
    router.set_weights(want)
    ms = (time.perf_counter() - t0) * 1000
    got = {k: v for k, v in router.weights().items() if v > 0}
    if got != want:
        raise RollwiseError(
            f"router did not apply the weights: want {want}, has {got}",
            where=f"router of {env.name}",
        )
    versions = {i.name: i.version for i in instances}
    ctx.emit(
        "switch",
        reasons.OK,
        env=env.name,
        version=next((versions[n] for n in want if n in versions), None),
        data={"switch_ms": round(ms, 3), "to": list(want), "weights": want},
    )
    return {"switch_ms": round(ms, 3), "weights": want}


def stop(ctx: Context, env: Environment, instances: tuple[d.InstancePlan, ...]) -> None:
    """Stop each instance; a host that does not answer does not keep the others running
    (the first such error is raised once every other instance was stopped)."""
    lost: list[Unreachable] = []
    for i in instances:
        env.router.remove(i.name)
        try:
            env.target.stop(i.name, i.endpoint, ctx.config.stop.grace_s)
        except Unreachable as e:
            lost.append(e)
    if lost:
        raise lost[0]
