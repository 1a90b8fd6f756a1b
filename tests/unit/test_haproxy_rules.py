"""The HAProxy lines for sticky clients and canary header rules, as plain data."""

from rollwise.config.schema import RouterConfig
from rollwise.traffic.haproxy import backend_config, commands_canary, commands_set_weights

CFG = RouterConfig.model_validate(
    {
        "type": "haproxy",
        "admin": "/run/haproxy/admin.sock",
        "backend": "app",
        "sticky": {"cookie": "cart", "max_clients": 5000},
        "canary_headers": [
            {"header": "X-Canary", "values": ["always"]},
            {"header": "X-Staff", "values": ["alice", "bob"]},
        ],
        "canary_map": "/etc/haproxy/rollwise-app.map",
    }
)


def test_given_sticky_and_header_rules_then_the_backend_has_a_stick_table_and_use_server():
    assert backend_config(CFG, "127.0.0.1:80").splitlines() == [
        "frontend rollwise",
        "  bind 127.0.0.1:80",
        "  default_backend app",
        "backend app",
        "  balance roundrobin",
        "  acl rollwise_canary req.hdr(X-Canary) -m str always",
        "  acl rollwise_canary req.hdr(X-Staff) -m str alice bob",
        "  use-server blue if rollwise_canary "
        "{ str(canary),map(/etc/haproxy/rollwise-app.map) -m str blue }",
        "  use-server green if rollwise_canary "
        "{ str(canary),map(/etc/haproxy/rollwise-app.map) -m str green }",
        "  stick-table type string len 128 size 5000",
        "  stick on req.cook(cart) if !rollwise_canary",
        "  server blue 127.0.0.1:1 weight 0",
        "  server green 127.0.0.1:1 weight 0",
    ]


def test_given_no_rules_then_only_the_server_slots():
    plain = RouterConfig.model_validate({"type": "haproxy", "admin": "/a.sock", "backend": "app"})

    assert backend_config(plain, "127.0.0.1:80").splitlines()[4:] == [
        "  balance roundrobin",
        "  server blue 127.0.0.1:1 weight 0",
        "  server green 127.0.0.1:1 weight 0",
    ]


def test_given_sticky_clients_then_a_slot_losing_its_weight_goes_to_maintenance():
    assert commands_set_weights("app", {"blue": 0, "green": 10}, evict=True) == (
        "set server app/green state ready; set server app/green weight 10; "
        "set server app/blue weight 0; set server app/blue state maint"
    )


def test_given_a_canary_slot_then_the_map_names_it():
    assert commands_canary("/m.map", "green", present=False) == "add map /m.map canary green"
    assert commands_canary("/m.map", "blue", present=True) == "set map /m.map canary blue"
