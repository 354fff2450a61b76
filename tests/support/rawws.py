"""A raw WebSocket client over plain TCP: frames no library would send (unmasked, bad close codes)."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import struct

from websockets.frames import Opcode

from tests.support.waiting import scaled


class RawWs:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(
        cls, port: int, path: str, first: bytes = b"", tls: ssl.SSLContext | None = None
    ) -> tuple[RawWs, str]:
        """Upgrade (``first`` rides in the request's write); return the client and the status line."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        writer.write(head.encode() + first)
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(5))
        return cls(reader, writer), response.split(b"\r\n", 1)[0].decode()

    def send(self, opcode: Opcode, data: bytes, *, mask: bool = True, fin: bool = True) -> None:
        self.writer.write(frame(opcode, data, mask=mask, fin=fin))

    async def messages_until_close(self) -> tuple[list[tuple[int, bytes]], int]:
        """Data messages (opcode, payload; fragments joined) until the close frame, and its code."""
        out: list[tuple[int, bytes]] = []
        parts: list[bytes] = []
        first = 0
        while True:
            fin, op, payload = await self.recv_frame()
            if op == Opcode.CLOSE:
                return out, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if op in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                first = op if op != Opcode.CONT else first
                parts.append(payload)
                if fin:
                    out.append((first, b"".join(parts)))
                    parts = []

    async def recv_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), scaled(10))
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return bool(b0 & 0x80), b0 & 0x0F, await self.reader.readexactly(n)

    async def recv(self) -> tuple[int, bytes]:
        """One server frame (opcode, payload); servers never mask."""
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), scaled(10))
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def close_code(self) -> int:
        """Read until the server's close frame and return its code (1005 if it carries none)."""
        while True:
            op, payload = await self.recv()
            if op == Opcode.CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    async def eof(self) -> None:
        async with asyncio.timeout(scaled(10)):
            while await self.reader.read(65536):
                pass

    def close(self) -> None:
        self.writer.transport.abort()


def frame(opcode: int, data: bytes, *, mask: bool = True, fin: bool = True, rsv1: bool = False) -> bytes:
    """One frame exactly as asked, valid or not (no library check in the way)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(data)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, bit | n])
    elif n < 65536:
        head = bytes([b0, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + data
    key = os.urandom(4)
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big") if n else b""
    return head + key + masked


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason
