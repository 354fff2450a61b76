"""Picking a port for a server that will bind it a moment later.

Why not simply ``bind(("127.0.0.1", 0))``: that hands out a port from the
kernel's ephemeral range, the same range every outgoing connection on the
machine takes its local port from.  Between the probe and the child's own
bind, any connection may be given that port, and the child then fails with
``Address already in use`` (seen in the V2 bench and in CI runs side by side).
Below the ephemeral range only another probe can collide, and the pick is
random over thousands of ports.
"""

from __future__ import annotations

import random
import socket

__all__ = ["free_port"]

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
LOWEST_PICK = 20000  # below: well-known services people run locally (8080, 9090, ...)
MIN_SPAN = 1000  # fewer candidates than this below the ephemeral range: let the kernel pick
TRIES = 64


def _ephemeral_low() -> int:
    try:
        with open(EPHEMERAL_RANGE_FILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range when the machine allows."""
    high = _ephemeral_low() - 1
    if high - LOWEST_PICK >= MIN_SPAN:
        for _ in range(TRIES):
            port = random.randint(LOWEST_PICK, high)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
