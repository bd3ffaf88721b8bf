"""market.demo.ports: ports that no outgoing connection can take before a server binds them."""

from __future__ import annotations

import socket

from market.demo.ports import bindable, ephemeral_range, free_port


def test_ports_are_outside_the_ephemeral_range_and_never_repeat() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= port <= high for port in ports)
    assert all(1024 < port < 65536 for port in ports)


def test_a_listening_port_is_not_bindable() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        taken = server.getsockname()[1]
        assert not bindable(taken)
    port = free_port()
    assert bindable(port)
