import socket

from rollwise import ports


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
