"""Child processes started by tests: their output goes to a log file, never to an unread pipe."""

from __future__ import annotations

import socket
import sys

from tests.conftest import _CHILD_LOGS, free_port, listening_process
from tests.support.waiting import scaled

# Writes 1 MiB to stdout and stderr before it listens: through an unread pipe it
# would block at 64 KiB and never listen.
CHATTY = """
import socket, sys
sys.stdout.write("o" * (1 << 20)); sys.stdout.flush()
sys.stderr.write("e" * (1 << 20) + "\\nlast words\\n"); sys.stderr.flush()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
while True:
    conn, _ = s.accept(); conn.sendall(b"served"); conn.close()
"""


def test_a_chatty_child_is_not_blocked_and_its_output_is_kept() -> None:
    port = free_port()
    with listening_process([sys.executable, "-c", CHATTY, str(port)], port):
        with socket.create_connection(("127.0.0.1", port), timeout=scaled(5)) as conn:
            assert conn.recv(16) == b"served"
        text = _CHILD_LOGS[-1].read_text()
        assert len(text) > 2 << 20 and text.rstrip().endswith("last words")
