"""Bundle order and moves: plain data, tested by equality."""

from __future__ import annotations

import pytest

from rollwise.config.load import load_bundle
from rollwise.domain import Move, bundle_moves, bundle_order
from rollwise.errors import ConfigError

SHOP = {
    "orders": ("pricing", "inventory"),
    "pricing": ("inventory",),
    "inventory": (),
    "mailer": (),
}


def test_dependencies_come_first_and_the_rest_keep_their_written_order():
    assert bundle_order(SHOP) == ["inventory", "pricing", "orders", "mailer"]
    assert bundle_order({"a": (), "b": (), "c": ()}) == ["a", "b", "c"]
    assert bundle_order({"web": ("api",), "api": ("db",), "db": ()}) == ["db", "api", "web"]


@pytest.mark.parametrize(
    ("deps", "message"),
    [
        ({"a": ("b",), "b": ("a",)}, "depends_on goes round in a circle: a -> b -> a"),
        ({"a": ("a",)}, "depends_on goes round in a circle: a -> a"),
        ({"a": ("b",), "b": ("c",), "c": ("a",)}, "circle: a -> b -> c -> a"),
        ({"a": ("ghost",)}, "a depends on ghost, which is not a service of the bundle"),
    ],
)
def test_a_cycle_or_an_unknown_service_is_named(deps, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        bundle_order(deps)


def test_moves_are_the_named_services_not_already_there_in_dependency_order():
    order = bundle_order(SHOP)
    live = {"inventory": "1.0.0", "pricing": "2.0.0", "orders": None, "mailer": "1.0.0"}
    wanted = {"orders": "3.0.0", "inventory": "1.1.0", "pricing": "2.0.0"}
    assert bundle_moves(order, live, wanted) == [
        Move("inventory", "1.0.0", "1.1.0"),
        Move("orders", None, "3.0.0"),
    ]
    assert bundle_moves(order, live, {"pricing": "2.0.0"}) == []


def test_a_bundle_file_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "rollwise-bundle.yaml"
    path.write_text("bundle: shop\nservices:\n  api:\n    dir: api\n    depends_on: [db]\n")
    with pytest.raises(ConfigError) as e:
        load_bundle(path)
    assert f"{path}:2: services:" in str(e.value)
    assert "api depends on db, which is not a service of the bundle" in str(e.value)
    path.write_text("bundle: shop\nservices:\n  api:\n    dir: api\n    dir_typo: x\n")
    with pytest.raises(ConfigError, match="dir_typo"):
        load_bundle(path)
    path.write_text("bundle: shop\nservices:\n  api: {dir: api}\n  db: {dir: db}\n")
    cfg = load_bundle(path)
    assert (cfg.bundle, list(cfg.services)) == ("shop", ["api", "db"])


def test_every_example_loads_and_the_shop_bundle_deploys_inventory_first():
    from pathlib import Path

    from rollwise.config.load import load_config

    examples = Path(__file__).resolve().parents[2] / "examples"
    configs = sorted(examples.glob("*/rollwise.yaml")) + sorted(examples.glob("*/*/rollwise.yaml"))
    assert len(configs) >= 5
    for path in configs:
        assert load_config(path).environments, path
    shop = load_bundle(examples / "shop" / "rollwise-bundle.yaml")
    assert bundle_order({n: tuple(s.depends_on) for n, s in shop.services.items()}) == [
        "inventory",
        "order-sync",
    ]
    for s in shop.services.values():
        assert "prod" in load_config(examples / "shop" / s.dir / "rollwise.yaml").environments
