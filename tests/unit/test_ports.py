import random
import socket

import pytest
from pydantic import ValidationError

from rollwise import ports
from rollwise.config.schema import TargetConfig
from rollwise.errors import RollwiseError


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    got = ports.free_ports(8)

    assert len(set(got)) == 8
    assert all(ports.LOWEST <= p < ports._ephemeral_low() for p in got)
    held = []
    try:
        for p in got:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", p))
    finally:
        for s in held:
            s.close()


def test_given_no_room_below_the_ephemeral_range_then_the_os_picks(monkeypatch):
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: ports.LOWEST)

    got = ports.free_ports(3)

    assert len(set(got)) == 3 and all(p > 0 for p in got)


HOST = "127.0.0.1"


def taken(*numbers: int) -> list[socket.socket]:
    """Listening sockets on `numbers`: another process holding those ports. When one is
    not free, the ones made so far are closed and the OSError raised."""
    socks: list[socket.socket] = []
    try:
        for p in numbers:
            socks.append(socket.socket())
            socks[-1].bind((HOST, p))
            socks[-1].listen()
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def free_block(size: int) -> range:
    """`size` consecutive ports below the ephemeral range, all free just now."""
    for base in random.Random().sample(range(ports.LOWEST, ports._ephemeral_low() - size), 500):
        try:
            for s in taken(*range(base, base + size)):
                s.close()
        except OSError:
            continue
        return range(base, base + size)
    raise AssertionError(f"no {size} free consecutive ports")


def test_given_a_range_then_every_port_comes_from_it():
    span = free_block(20)

    got = ports.free_ports(6, HOST, span)

    assert len(set(got)) == 6 and set(got) <= set(span)


def test_given_the_chosen_port_taken_between_choosing_and_binding_then_the_next_one_is_used():
    order = ports.candidates(free_block(10), random.Random(3))
    other = taken(order[0])  # after the choice, before the bind
    try:
        got = ports.claim(order, 2, HOST)
    finally:
        other[0].close()

    assert got == order[1:3]


def test_given_most_of_a_small_range_taken_then_the_rest_is_handed_out():
    span = free_block(10)
    others = taken(*span[:7])
    try:
        got = ports.free_ports(3, HOST, span)
    finally:
        for s in others:
            s.close()

    assert sorted(got) == list(span[7:])


def test_given_too_few_free_ports_in_the_range_then_refused_with_the_range_named():
    span = free_block(10)
    others = taken(*span[:8])
    try:
        with pytest.raises(RollwiseError) as e:
            ports.free_ports(3, HOST, span)
    finally:
        for s in others:
            s.close()

    assert (e.value.message, e.value.where, e.value.hint) == (
        f"1 of the 3 ports needed are not free in {span[0]}-{span[-1]} on {HOST}",
        "target.ports",
        "widen target.ports, or stop what listens in that range",
    )


def test_target_ports_is_a_range_with_both_ends_included():
    ports_cfg = TargetConfig.model_validate({"ports": {"first": 20000, "last": 20009}}).ports
    assert ports_cfg is not None and ports_cfg.span == range(20000, 20010)
    with pytest.raises(ValidationError, match=r"first \(20010\) is above last \(20009\)"):
        TargetConfig.model_validate({"ports": {"first": 20010, "last": 20009}})
    with pytest.raises(ValidationError, match="supported with `type: local` only"):
        TargetConfig.model_validate(
            {
                "type": "ssh",
                "hosts": [{"address": "10.0.0.2"}],
                "ports": {"first": 20000, "last": 20009},
            }
        )
