"""free_port picks below the ephemeral range, where no outgoing connection can take it first."""

from __future__ import annotations

import socket

import pytest

from bidistream import ports


def test_picks_below_the_ephemeral_range_and_the_port_binds() -> None:
    low = ports._ephemeral_low()
    for _ in range(50):
        port = ports.free_port()
        assert ports.LOWEST_PICK <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: it binds


def test_a_taken_port_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        picks = iter([taken, taken])
        monkeypatch.setattr(ports.random, "randint", lambda a, b: next(picks, a + 7))
        assert ports.free_port() != taken


def test_a_machine_without_room_below_the_range_lets_the_kernel_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: ports.LOWEST_PICK + 10)
    port = ports.free_port()
    assert 0 < port < 65536
