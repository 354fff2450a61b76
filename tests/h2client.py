"""A raw HTTP/2 test client for the gateway: what no official client would send.

It stands in for broken or malicious clients (bad CRCs, truncated preludes,
abrupt disconnects) and for slow ones (``granting = False`` stops its
WINDOW_UPDATEs while it keeps reading the socket, which is what a client does
when its application stops consuming).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from bidistream.eventstream import EventStreamDecoder, decode_message
from tests.support.waiting import scaled

T = scaled(15.0)


class H2TestClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(validate_outbound_headers=False, normalize_outbound_headers=False)
        )
        self.responses: dict[int, dict[str, str]] = {}
        self.data: dict[int, bytearray] = {}
        self.ended: dict[int, asyncio.Event] = {}
        self.headers_seen: dict[int, asyncio.Event] = {}
        self.granting = True
        self.unacked: dict[int, int] = {}
        self.window_opened = asyncio.Event()
        # Set when the server's GOAWAY arrives (its event kept) and when the socket reaches EOF.
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.terminated = asyncio.Event()
        self.eof = asyncio.Event()
        self.resets: dict[int, int] = {}  # stream id -> RST_STREAM error code from the server
        self._pongs: dict[bytes, asyncio.Event] = {}
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, ca: Path) -> H2TestClient:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        self = cls(reader, writer)
        self.conn.initiate_connection()
        self._flush()
        return self

    def _flush(self) -> None:
        if data := self.conn.data_to_send():
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            await self._read_frames()
        except (ConnectionError, h2.exceptions.ProtocolError, ssl.SSLError):
            pass
        finally:
            self.eof.set()
            for ended in self.ended.values():
                ended.set()

    async def _read_frames(self) -> None:
        while data := await self.reader.read(65536):
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    self.responses[ev.stream_id] = {k.decode(): v.decode() for k, v in ev.headers}
                    self.headers_seen[ev.stream_id].set()
                elif isinstance(ev, h2.events.DataReceived):
                    self.data[ev.stream_id] += ev.data
                    sid = ev.stream_id
                    self.unacked[sid] = self.unacked.get(sid, 0) + ev.flow_controlled_length
                    if self.granting:
                        self.grant()
                elif isinstance(ev, h2.events.WindowUpdated):
                    self.window_opened.set()
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    if isinstance(ev, h2.events.StreamReset):
                        self.resets[ev.stream_id] = int(ev.error_code)
                    self.ended[ev.stream_id].set()
                elif isinstance(ev, h2.events.PingAckReceived):
                    if (pong := self._pongs.pop(ev.ping_data, None)) is not None:
                        pong.set()
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway = ev
                    self.terminated.set()
            self._flush()

    def grant(self) -> None:
        """Acknowledge everything received so far (opens the gateway's send window)."""
        for sid, n in self.unacked.items():
            if n:
                self.conn.acknowledge_received_data(n, sid)
        self.unacked.clear()
        self._flush()

    def open(self, endpoint: str = "echo", extra: list[tuple[str, str]] | None = None) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.data[sid] = bytearray()
        self.ended[sid] = asyncio.Event()
        self.headers_seen[sid] = asyncio.Event()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", f"/endpoints/{endpoint}/invocations-bidirectional-stream?"),
                ("content-type", "application/vnd.amazon.eventstream"),
                *(extra or []),
            ],
        )
        self._flush()
        return sid

    def request(self, headers: list[tuple[str, str]], end: bool = False) -> int:
        """Open a stream with exactly these headers (pseudo-headers included, unvalidated)."""
        sid: int = self.conn.get_next_available_stream_id()
        self.data[sid] = bytearray()
        self.ended[sid] = asyncio.Event()
        self.headers_seen[sid] = asyncio.Event()
        self.conn.send_headers(sid, headers, end_stream=end)
        self._flush()
        return sid

    async def ping(self) -> None:
        """A PING round trip: everything the server wrote before its ACK has been read."""
        payload = os.urandom(8)
        pong = self._pongs[payload] = asyncio.Event()
        self.conn.ping(payload)
        self._flush()
        await asyncio.wait_for(pong.wait(), T)

    def raw(self, data: bytes) -> None:
        """Write bytes straight to the TLS socket, past the client's h2 state machine."""
        self.writer.write(data)

    async def wait_goaway(self) -> h2.events.ConnectionTerminated:
        await asyncio.wait_for(self.terminated.wait(), T)
        assert self.goaway is not None
        return self.goaway

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        self.conn.send_data(sid, data, end_stream=end)
        self._flush()

    async def send_within_window(self, sid: int, data: bytes) -> None:
        """Send ``data`` as the server's window allows (waiting on WINDOW_UPDATE)."""
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.window_opened.clear()
                await self.window_opened.wait()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            self._flush()
            view = view[window:]
            await self.writer.drain()

    async def headers(self, sid: int) -> dict[str, str]:
        await asyncio.wait_for(self.headers_seen[sid].wait(), T)
        return self.responses[sid]

    def decoded(self, sid: int) -> list[dict[str, Any]]:
        """The response events received so far on ``sid``, headers and payload."""
        return [
            {**(m := decode_message(raw)).headers, "payload": m.payload}
            for raw in EventStreamDecoder().feed(bytes(self.data[sid]))
        ]

    async def events(self, sid: int, min_count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(T):
            while len(got := self.decoded(sid)) < min_count:  # noqa: ASYNC110 (polling what arrived)
                await asyncio.sleep(0.01)
        return got

    async def wait_end(self, sid: int) -> None:
        await asyncio.wait_for(self.ended[sid].wait(), T)

    def close(self) -> None:
        self.task.cancel()
        self.writer.transport.abort()
