"""Plans and decisions are plain data: compared by equality."""

from rollwise import domain as d
from rollwise.artifacts import prune_plan
from rollwise.traffic.caddy import handler_patch
from rollwise.traffic.haproxy import commands_point, commands_set_weights


def test_given_a_live_release_when_planning_a_deploy_then_blue_green_steps_in_order():
    old = [d.InstancePlan("1.0.0-aaaaaa-0", "1.0.0", 9000)]
    plan = d.plan_deployment(env="prod", kind=d.DEPLOY, to_version="1.1.0", sha256="ab",
                             from_version="1.0.0", old=old, ports=[9100, 9101], suffix="bbbbbb",
                             pre_hooks=False, post_hooks=True)
    assert plan == d.Plan(
        env="prod", kind="deploy", to_version="1.1.0", sha256="ab", from_version="1.0.0",
        new=(d.InstancePlan("1.1.0-bbbbbb-0", "1.1.0", 9100),
             d.InstancePlan("1.1.0-bbbbbb-1", "1.1.0", 9101)),
        old=tuple(old),
        steps=("verify", "unpack", "start", "health", "switch", "post_hooks", "drain",
               "stop_old", "finalize"),
    )
    assert d.Plan.from_dict(plan.as_dict()) == plan


def test_given_marks_when_choosing_a_rollback_target_then_newest_good_not_live_not_bad():
    assert d.rollback_target("1.2.0", ["1.2.0", "1.1.0", "1.0.0"], set(), None) == "1.1.0"
    assert d.rollback_target("1.2.0", ["1.2.0", "1.1.0", "1.0.0"], {"1.1.0"}, None) == "1.0.0"
    assert d.rollback_target("1.0.0", ["1.0.0"], set(), None) is None
    assert d.rollback_target("1.2.0", ["1.2.0"], set(), "0.9.0") == "0.9.0"


def test_given_retention_when_pruning_then_protected_releases_survive():
    versions = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"]
    assert prune_plan(versions, 3, set()) == ["1.0.0", "1.1.0", "1.2.0"]
    assert prune_plan(versions, 3, {"1.0.0", "1.2.0"}) == ["1.1.0"]
    assert prune_plan(versions[:3], 3, set()) == []


def test_haproxy_commands_raise_weights_before_lowering_them():
    assert commands_set_weights("app", {"blue": 0, "green": 100}) == (
        "set server app/green weight 100; set server app/blue weight 0")
    assert commands_point("app", "blue", "127.0.0.1", 9001) == (
        "set server app/blue addr 127.0.0.1 port 9001; set server app/blue weight 0; "
        "set server app/blue state ready")


def test_caddy_patch_sets_upstreams_and_weights_together():
    h = {"handler": "reverse_proxy", "@id": "lb", "upstreams": [{"dial": "a:1"}]}
    assert handler_patch(h, {"a:1": 0, "b:2": 1}) == {
        "handler": "reverse_proxy", "@id": "lb",
        "upstreams": [{"dial": "a:1"}, {"dial": "b:2"}],
        "load_balancing": {"selection_policy": {"policy": "weighted_round_robin",
                                                "weights": [0, 1]}},
    }
