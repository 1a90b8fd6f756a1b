"""Plans and decisions are plain data: compared by equality."""

from typing import Any

from rollwise import domain as d
from rollwise.artifacts import prune_plan
from rollwise.traffic.caddy import handler_patch
from rollwise.traffic.haproxy import commands_point, commands_set_weights

H = "10.0.0.7"  # a host handed out by a target


def at(*ports: int) -> list[d.Endpoint]:
    return [d.Endpoint(H, p) for p in ports]


def steps(*kinds: str) -> tuple[d.Step, ...]:
    return tuple(d.Step(k) for k in kinds)


def test_given_a_live_release_when_planning_a_deploy_then_blue_green_steps_in_order():
    old = [d.InstancePlan("1.0.0-aaaaaa-0", "1.0.0", H, 9000)]
    plan = d.plan_deployment(
        env="prod",
        kind=d.DEPLOY,
        to_version="1.1.0",
        sha256="ab",
        from_version="1.0.0",
        old=old,
        endpoints=at(9100, 9101),
        suffix="bbbbbb",
        pre_hooks=False,
        post_hooks=True,
    )
    assert plan == d.Plan(
        env="prod",
        kind="deploy",
        to_version="1.1.0",
        sha256="ab",
        from_version="1.0.0",
        new=(
            d.InstancePlan("1.1.0-bbbbbb-0", "1.1.0", H, 9100),
            d.InstancePlan("1.1.0-bbbbbb-1", "1.1.0", H, 9101),
        ),
        old=tuple(old),
        steps=steps(
            "verify",
            "unpack",
            "start",
            "health",
            "switch",
            "post_hooks",
            "drain",
            "stop_old",
            "finalize",
        ),
    )
    assert d.Plan.from_dict(plan.as_dict()) == plan
    assert plan.new[1].endpoint.url("/health") == "http://10.0.0.7:9101/health"


def test_given_instances_recorded_before_endpoints_then_they_are_read_on_the_loopback():
    row = {"name": "1.0.0-aaaaaa-0", "version": "1.0.0", "port": 9000}
    assert d.InstancePlan.from_dict(row) == d.InstancePlan(
        "1.0.0-aaaaaa-0", "1.0.0", "127.0.0.1", 9000
    )


ORDER = ["1.0.0", "1.1.0", "1.2.0"]
GOOD = {"1.0.0", "1.1.0", "1.2.0"}


def test_given_marks_when_choosing_a_rollback_target_then_newest_good_deployed_before_live():
    assert d.rollback_target("1.2.0", ORDER, GOOD, set(), None) == d.RollbackChoice("1.1.0")
    assert d.rollback_target("1.2.0", ORDER, GOOD, {"1.1.0"}, None) == d.RollbackChoice("1.0.0")
    assert d.rollback_target("1.2.0", ORDER, GOOD - {"1.1.0"}, set(), None) == d.RollbackChoice(
        "1.0.0"
    )
    assert d.rollback_target("1.2.0", ORDER, GOOD, set(), "0.9.0") == d.RollbackChoice("0.9.0")


def test_given_a_rollback_to_the_oldest_when_rolling_back_again_then_refused_never_forward():
    # A -> B -> C -> rollback --to A: B is good and newer than A; nothing is older than A
    choice = d.rollback_target("1.0.0", ORDER, GOOD - {"1.2.0"}, {"1.2.0"}, None)
    assert choice == d.RollbackChoice(
        None, d.NOTHING_OLDER, "no known-good release deployed before 1.0.0"
    )


def test_given_a_newer_release_when_asked_to_roll_back_to_it_then_refused_as_a_deploy():
    choice = d.rollback_target("1.0.0", ORDER, GOOD, set(), "1.1.0")
    assert (choice.version, choice.why) == (None, d.NEWER_THAN_LIVE)
    # never deployed here: semantic versions decide
    assert d.rollback_target("1.0.0", ORDER, GOOD, set(), "2.0.0").why == d.NEWER_THAN_LIVE
    assert d.rollback_target("1.2.0", ORDER, GOOD, set(), "0.9.0").version == "0.9.0"


def test_given_a_history_then_releases_are_ordered_by_their_first_successful_deploy():
    history = [
        ("deploy", "1.0.0", "succeeded"),
        ("deploy", "1.1.0", "succeeded"),
        ("deploy", "1.2.0", "rolled_back"),
        ("rollback", "1.0.0", "succeeded"),
        ("deploy", "1.2.0", "succeeded"),
        ("deploy", "1.1.0", "succeeded"),
    ]
    assert d.release_order(history) == ["1.0.0", "1.1.0", "1.2.0"]
    assert d.is_newer("1.2.0", "1.1.0", d.release_order(history))
    assert not d.is_newer("1.0.0", "1.1.0", [])
    assert d.is_newer("1.10.0", "1.9.2", [])


def test_given_retention_when_pruning_then_protected_releases_survive():
    versions = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"]
    assert prune_plan(versions, 3, set()) == ["1.0.0", "1.1.0", "1.2.0"]
    assert prune_plan(versions, 3, {"1.0.0", "1.2.0"}) == ["1.1.0"]
    assert prune_plan(versions[:3], 3, set()) == []


def test_haproxy_commands_raise_weights_before_lowering_them():
    assert commands_set_weights("app", {"blue": 0, "green": 100}) == (
        "set server app/green weight 100; set server app/blue weight 0"
    )
    assert commands_point("app", "blue", "127.0.0.1", 9001) == (
        "set server app/blue addr 127.0.0.1 port 9001; set server app/blue weight 0; "
        "set server app/blue state ready"
    )


def test_caddy_patch_sets_upstreams_and_weights_together():
    h = {"handler": "reverse_proxy", "@id": "lb", "upstreams": [{"dial": "a:1"}]}
    assert handler_patch(h, {"a:1": 0, "b:2": 1}) == {
        "handler": "reverse_proxy",
        "@id": "lb",
        "upstreams": [{"dial": "a:1"}, {"dial": "b:2"}],
        "load_balancing": {
            "selection_policy": {"policy": "weighted_round_robin", "weights": [0, 1]}
        },
    }


def _plan(kind: str, strategy: str, old: bool, checks: bool = True) -> d.Plan:
    stages = (d.Stage(1, 30.0), d.Stage(10, 60.0, True), d.Stage(100, 60.0))
    return d.plan_deployment(
        env="prod",
        kind=kind,
        to_version="1.1.0",
        sha256="ab",
        from_version="1.0.0" if old else None,
        old=[d.InstancePlan("1.0.0-aaaaaa-0", "1.0.0", H, 9000)] if old else [],
        endpoints=at(9100),
        suffix="bbbbbb",
        pre_hooks=False,
        post_hooks=False,
        strategy=strategy,
        stages=stages,
        bake_s=60.0,
        checks=checks,
    )


def test_given_a_canary_strategy_when_planning_then_stages_before_switch_and_bake_after():
    plan = _plan(d.DEPLOY, "canary", old=True)
    assert plan.steps == (
        *steps("verify", "unpack", "start", "health"),
        d.Stage(1, 30.0),
        d.Stage(10, 60.0, True),
        *steps("switch", "checks", "bake", "drain", "stop_old", "finalize"),
    )
    assert plan.names()[4:6] == ("canary:1", "canary:10")
    assert d.Plan.from_dict(plan.as_dict()) == plan
    assert not plan.traffic_moving({"verify", "health"})
    assert plan.traffic_moving({"canary:1"})


def test_given_blue_green_when_planning_then_preview_before_switch():
    assert _plan(d.DEPLOY, "blue-green", old=True).names() == (
        "verify",
        "unpack",
        "start",
        "health",
        "preview",
        "switch",
        "checks",
        "bake",
        "drain",
        "stop_old",
        "finalize",
    )


def test_given_a_rollback_or_a_first_deploy_then_traffic_moves_at_once_without_bake():
    for plan in (_plan(d.ROLLBACK, "canary", old=True), _plan(d.DEPLOY, "canary", old=False)):
        assert plan.steps == steps(
            "verify",
            "unpack",
            "start",
            "health",
            "switch",
            "checks",
            "drain",
            "stop_old",
            "finalize",
        )
        assert plan.bake_s == 0.0


def test_canary_weights_send_the_percent_to_new_instances_in_smallest_integers():
    old = (d.InstancePlan("a", "1", H, 1), d.InstancePlan("b", "1", H, 2))
    new = (d.InstancePlan("c", "2", H, 3), d.InstancePlan("e", "2", H, 4))
    assert d.canary_weights(new, old, 1) == {"a": 99, "b": 99, "c": 1, "e": 1}
    assert d.canary_weights(new, old, 50) == {"a": 1, "b": 1, "c": 1, "e": 1}
    assert d.canary_weights(new[:1], old, 10) == {"a": 9, "b": 9, "c": 2}


def test_given_rolling_when_planning_then_one_step_per_batch_and_the_last_retires_the_rest():
    old = [d.InstancePlan(f"1.0.0-aaaaaa-{n}", "1.0.0", H, 9000 + n) for n in range(3)]
    plan = d.plan_deployment(
        env="prod",
        kind=d.DEPLOY,
        to_version="1.1.0",
        sha256="ab",
        from_version="1.0.0",
        old=old,
        endpoints=at(9100, 9101, 9102),
        suffix="bbbbbb",
        pre_hooks=False,
        post_hooks=False,
        strategy="rolling",
        batch_size=2,
        pause_s=5.0,
        bake_s=60.0,
    )
    assert plan.steps == (
        *steps("verify", "unpack"),
        d.Batch(1),
        d.Batch(2),
        *steps("switch", "drain", "stop_old", "finalize"),
    )
    assert plan.names()[2:4] == ("rolling:1", "rolling:2")
    assert [([i.name for i in n], [i.name for i in o]) for n, o in plan.batches()] == [
        (["1.1.0-bbbbbb-0", "1.1.0-bbbbbb-1"], ["1.0.0-aaaaaa-0", "1.0.0-aaaaaa-1"]),
        (["1.1.0-bbbbbb-2"], ["1.0.0-aaaaaa-2"]),
    ]
    assert plan.bake_s == 0.0 and plan.traffic_moving({"rolling:1"})
    assert d.Plan.from_dict(plan.as_dict()) == plan


def test_given_down_first_then_a_rollback_migrates_down_before_the_older_release_starts():
    kw: dict[str, Any] = {
        "env": "dev",
        "kind": d.ROLLBACK,
        "to_version": "1.0.0",
        "sha256": "s",
        "from_version": "1.1.0",
        "old": [d.InstancePlan("1.1.0-a-0", "1.1.0", H, 9000)],
        "endpoints": at(9001),
        "suffix": "b",
        "pre_hooks": False,
        "post_hooks": False,
        "migrate_down": True,
    }
    after = d.plan_deployment(**kw).names()
    first = d.plan_deployment(**kw, down_first=True).names()
    assert after == (
        d.VERIFY,
        d.UNPACK,
        d.START,
        d.HEALTH,
        d.SWITCH,
        d.MIGRATE_DOWN,
        d.DRAIN,
        d.STOP_OLD,
        d.FINALIZE,
    )
    assert first == (
        d.VERIFY,
        d.UNPACK,
        d.MIGRATE_DOWN,
        d.START,
        d.HEALTH,
        d.SWITCH,
        d.DRAIN,
        d.STOP_OLD,
        d.FINALIZE,
    )


def test_given_a_plan_stored_by_the_previous_version_then_it_reads_as_typed_steps():
    """Plans written before steps were typed name each step as text (`canary:10` with its
    stage in `stages`, `rolling:2`) and give instances no host; a deployment interrupted
    then must still recover."""
    stored: dict[str, Any] = {
        "env": "prod",
        "kind": "deploy",
        "to_version": "1.1.0",
        "sha256": "ab",
        "from_version": "1.0.0",
        "new": [{"name": "1.1.0-bbbbbb-0", "version": "1.1.0", "port": 9100}],
        "old": [{"name": "1.0.0-aaaaaa-0", "version": "1.0.0", "port": 9000}],
        "steps": [
            "verify",
            "unpack",
            "start",
            "health",
            "canary:1",
            "canary:10",
            "switch",
            "checks",
            "bake",
            "drain",
            "stop_old",
            "finalize",
        ],
        "stages": [
            {"weight": 1, "pause_s": 30.0, "until_promote": False},
            {"weight": 10, "pause_s": 60.0, "until_promote": True},
        ],
        "bake_s": 60.0,
        "batch_size": 0,
        "pause_s": 0.0,
    }
    plan = d.Plan.from_dict(stored)
    assert plan.steps[4:6] == (d.Stage(1, 30.0), d.Stage(10, 60.0, True))
    assert plan.names() == tuple(stored["steps"])
    assert plan.new[0].endpoint == d.Endpoint("127.0.0.1", 9100)
    assert plan.traffic_moving({"verify", "unpack", "start", "health", "canary:1"})
    assert not plan.traffic_moving({"verify", "unpack", "start", "health"})
    rolling = d.Plan.from_dict(
        {
            **stored,
            "steps": ["verify", "unpack", "rolling:1", "rolling:2", "switch", "finalize"],
            "stages": [],
            "batch_size": 1,
            "pause_s": 5.0,
        }
    )
    assert rolling.steps[2:4] == (d.Batch(1), d.Batch(2))


def test_given_a_plan_then_it_is_stored_with_each_step_and_its_settings():
    stored = _plan(d.DEPLOY, "canary", old=True).as_dict()
    assert stored["steps"][3:6] == [
        {"kind": "health"},
        {"kind": "canary", "weight": 1, "pause_s": 30.0, "until_promote": False},
        {"kind": "canary", "weight": 10, "pause_s": 60.0, "until_promote": True},
    ]
    assert "stages" not in stored


def test_rolling_batches_as_counts_and_percents_become_increasing_ends():
    assert d.batch_ends(5, 2, ()) == (2, 4, 5)
    assert d.batch_ends(10, 1, (1, "10%", "100%")) == (1, 10)  # 10% of 10 is the first host
    assert d.batch_ends(50, 1, (1, "10%", "100%")) == (1, 5, 50)
    assert d.batch_ends(3, 1, (5, "100%")) == (3,)
    assert d.batch_ends(7, 1, ("50%", "100%")) == (4, 7)  # rounded up


def test_given_rolling_batches_when_planning_then_each_batch_retires_what_it_replaces():
    old = [d.InstancePlan(f"1.0.0-a-{k}", "1.0.0", f"10.0.0.{k}", 9000) for k in range(5)]
    plan = d.plan_deployment(
        env="prod",
        kind=d.DEPLOY,
        to_version="1.1.0",
        sha256="x",
        from_version="1.0.0",
        old=old,
        endpoints=[d.Endpoint(f"10.0.0.{k}", 9100) for k in range(5)],
        suffix="b",
        pre_hooks=False,
        post_hooks=False,
        strategy="rolling",
        pause_s=1.0,
        batches=(1, "40%", "100%"),
    )
    assert plan.names()[2:5] == ("rolling:1", "rolling:2", "rolling:3")
    assert [([i.host for i in new], [i.host for i in gone]) for new, gone in plan.batches()] == [
        (["10.0.0.0"], ["10.0.0.0"]),
        (["10.0.0.1"], ["10.0.0.1"]),
        (["10.0.0.2", "10.0.0.3", "10.0.0.4"], ["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
    ]
    assert d.Plan.from_dict(plan.as_dict()) == plan
