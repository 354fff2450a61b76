"""``make bench-soak``: many long sequenced sessions through both doors, with faults mixed in.

Not a speed bar and not in CI: an integrity and leak run.  ``bidistream serve
echo`` runs as its own process behind ``bidistream gateway``; the soak opens
``--sessions`` sessions per door (HTTP/2 event stream from a raw ``h2`` client
over TLS, and the WebSocket front door from ``websockets``), each sending
``--frames`` sequenced frames (1 B – 4 KiB, each naming its session and its
sequence number, ``--window`` in flight) and checking every echo.  Meanwhile the
instance is SIGKILLed ``--kills`` times (and restarted on its port) and about
``--abort-fraction`` of the sessions are abandoned by their client halfway (h2
RST_STREAM, WS TCP abort).

Reported per door: sessions completed / ended by a kill / aborted / refused
while the instance was down; frames lost, duplicated, reordered, corrupted
(must all be 0: a session that ends early must have received an exact prefix
of what it sent, a completed one all of it); after the run, instance sessions
still open on the instance port and gateway fds above their start (must be
0); the gateway's RSS at start, peak and end.  CPU model and load average
are printed beside the figures; results go to ``benchmarks/results/soak.json``.

    python -m benchmarks.soak                       # the full run: 100 × 10,000 per door
    python -m benchmarks.soak --sessions 20 --frames 1000 --kills 2   # a short one
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from smithy_aws_event_stream.events import EventMessage
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from benchmarks import floor
from benchmarks.machine import cpu_model
from bidistream.eventstream import EventStreamDecoder, decode_message

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent / "bidistream"
STREAMS_PER_CONNECTION = 10
OPEN_RETRY_S = 0.2  # wait before a refused session (instance down) tries again
MAX_OPEN_TRIES = 100


@dataclass
class Tally:
    """One door's outcome."""

    sessions: int = 0  # opened (a killed one is followed by another for the rest)
    completed: int = 0
    ended_by_kill: int = 0
    aborted: int = 0
    refused_opens: int = 0
    frames_sent: int = 0
    frames_echoed: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    end_codes: dict[str, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)  # the first few, to look at

    def ended(self, how: str) -> None:
        self.end_codes[how] = self.end_codes.get(how, 0) + 1


class Checker:
    """What one session sent and what came back, frame by frame."""

    def __init__(self, tally: Tally, sid: int, frames: int, rng: random.Random) -> None:
        self.tally = tally
        self.sid = sid
        self.frames = frames
        self.sizes = [rng.randint(1, 4096) for _ in range(frames)]
        self.sent = 0
        self.next = 0  # next sequence number expected back

    def payload(self, seq: int) -> bytes:
        head = b"%06d:%08d:" % (self.sid, seq)
        size = max(self.sizes[seq], len(head))
        return head + bytes([65 + seq % 26]) * (size - len(head))

    def take(self) -> bytes:
        data = self.payload(self.sent)
        self.sent += 1
        self.tally.frames_sent += 1
        return data

    def echoed(self, data: bytes) -> None:
        try:
            sid_s, seq_s, _ = data.split(b":", 2)
            sid, seq = int(sid_s), int(seq_s)
        except ValueError:
            self.tally.corrupted += 1
            return
        if sid != self.sid or seq >= self.sent or data != self.payload(seq):
            self.tally.corrupted += 1
        elif seq < self.next:
            self.tally.duplicated += 1
            self.tally.anomalies.append(f"session {self.sid}: frame {seq} again after {self.next - 1}")
        elif seq > self.next:
            self.tally.reordered += 1
            self.tally.anomalies.append(f"session {self.sid}: frame {seq} arrived while {self.next} was due")
            self.next = seq + 1
        else:
            self.next += 1
            self.tally.frames_echoed += 1

    def finish(self, completed: bool) -> None:
        """A completed session must have everything back; an early end, an exact prefix."""
        if completed and self.next < self.sent:
            self.tally.lost += self.sent - self.next


# ---------------------------------------------------------------- HTTP/2 door
def _envelope(payload: bytes) -> bytes:
    inner = EventMessage(
        headers={
            ":message-type": "event",
            ":event-type": "PayloadPart",
            "DataType": "BINARY",
            "CompletionState": "COMPLETE",
            ":content-type": "application/octet-stream",
        },
        payload=payload,
    ).encode()
    return EventMessage(
        headers={":date": datetime.datetime.now(datetime.UTC), ":chunk-signature": b"\0" * 32},
        payload=inner,
    ).encode()


class _H2Stream:
    def __init__(self, check: Checker, window: int, abort_at: int | None) -> None:
        self.check = check
        self.window = window
        self.abort_at = abort_at
        self.decoder = EventStreamDecoder()
        self.out = bytearray()  # event bytes waiting for the gateway's window
        self.end = False  # END_STREAM after ``out``
        self.status: str | None = None
        self.error: str | None = None
        self.done = asyncio.Event()


class H2Conn(asyncio.Protocol):
    """One TLS connection carrying several soak sessions as HTTP/2 streams."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.streams: dict[int, _H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**30)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        for st in self.streams.values():
            st.error = st.error or "connection lost"
            st.done.set()

    def flush(self) -> None:
        if self.transport is not None and (data := self.conn.data_to_send()):
            self.transport.write(data)

    def open(self, st: _H2Stream) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.streams[sid] = st
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", "/endpoints/echo/invocations-bidirectional-stream"),
                ("content-type", "application/vnd.amazon.eventstream"),
            ],
        )
        self.conn.increment_flow_control_window(2**30, sid)
        for _ in range(min(st.window, st.check.frames)):
            self._send_next(sid, st)
        self.flush()
        return sid

    def _send_next(self, sid: int, st: _H2Stream) -> None:
        st.out += _envelope(st.check.take())
        st.end = st.check.sent == st.check.frames
        self._pump(sid, st)

    def _pump(self, sid: int, st: _H2Stream) -> None:
        """Send what the gateway's flow-control window allows (a client must, and the soak checks that)."""
        conn = self.conn
        try:
            while st.out:
                n = min(len(st.out), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if n <= 0:
                    return
                conn.send_data(sid, bytes(st.out[:n]))
                del st.out[:n]
            if st.end:
                st.end = False
                conn.end_stream(sid)
        except h2.exceptions.ProtocolError:
            st.out.clear()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            if self.transport is not None:
                self.transport.abort()
            return
        for ev in events:
            if isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged) and not getattr(
                ev, "stream_id", 0
            ):
                for osid, ost in list(self.streams.items()):
                    self._pump(osid, ost)
                continue
            sid: int = getattr(ev, "stream_id", 0) or 0
            st = self.streams.get(sid)
            if st is None:
                continue
            if isinstance(ev, h2.events.ResponseReceived):
                st.status = dict(ev.headers).get(b":status", b"").decode()
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                # A refusal's body is JSON, not events; an abandoned stream's tail is not looked at.
                if st.status == "200" and not st.done.is_set():
                    self._on_events(sid, st, st.decoder.feed(ev.data))
            elif isinstance(ev, h2.events.WindowUpdated):
                self._pump(sid, st)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                if isinstance(ev, h2.events.StreamReset):
                    st.error = st.error or f"reset {ev.error_code}"
                st.done.set()
        self.flush()

    def _on_events(self, sid: int, st: _H2Stream, raws: list[bytes]) -> None:
        for raw in raws:
            msg = decode_message(raw)
            if msg.headers.get(":message-type") != "event":
                st.error = str(msg.headers.get(":exception-type") or msg.headers.get(":error-code"))
                continue
            st.check.echoed(msg.payload)
            if st.abort_at is not None and st.check.next >= st.abort_at and not st.done.is_set():
                st.error = "aborted"
                st.out.clear()
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.reset_stream(sid, 8)
                st.done.set()
                return
            if st.check.sent < st.check.frames:
                self._send_next(sid, st)


async def h2_session(conn: H2Conn, check: Checker, tally: Tally, window: int, abort_at: int | None) -> str:
    for _ in range(MAX_OPEN_TRIES):
        st = _H2Stream(check, window, abort_at)
        if conn.lost.is_set():
            raise ConnectionError("h2 connection lost")
        sid = conn.open(st)
        await st.done.wait()
        conn.streams.pop(sid, None)
        stream = conn.conn.streams.get(sid)
        if stream is not None and not stream.closed:  # ended early: our half too
            with contextlib.suppress(h2.exceptions.ProtocolError):
                conn.conn.reset_stream(sid, 8)
            conn.flush()
        if st.status == "200" or (st.status is None and st.error):
            break
        tally.refused_opens += 1  # 503 while the instance is down: try again
        tally.frames_sent -= check.sent
        check.sent = check.next = 0
        await asyncio.sleep(OPEN_RETRY_S)
    return _close_out(check, tally, st.error, st.status)


MAX_SESSIONS_PER_SLOT = 50


async def slot(run_one: Any, tally: Tally, index: int, frames: int, rng: random.Random) -> None:
    """One client's share: sessions back to back until ``frames`` frames came back.

    A session an instance kill ends is checked (an exact prefix) and the client
    opens the next one for the rest, as a real client reconnects; a client
    abort ends the share.
    """
    remaining = frames
    for attempt in range(MAX_SESSIONS_PER_SLOT):
        check = Checker(tally, index * 1000 + attempt, remaining, rng)
        tally.sessions += 1
        outcome = await run_one(check)
        remaining -= check.next
        if outcome != "killed" or remaining <= 0:
            return


def _close_out(check: Checker, tally: Tally, error: str | None, status: str | None) -> str:
    tally.ended(error or f"status {status}")
    if error == "aborted":
        tally.aborted += 1
        check.finish(False)
        return "aborted"
    if error is None and status in ("200", None) and check.next == check.frames:
        tally.completed += 1
        check.finish(True)
        return "completed"
    tally.ended_by_kill += 1
    check.finish(False)
    return "killed"


async def run_h2(port: int, ca: Path, sessions: int, frames: int, window: int, aborts: set[int]) -> Tally:
    tally = Tally()
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    loop = asyncio.get_running_loop()
    conns: list[H2Conn] = []
    for _ in range((sessions + STREAMS_PER_CONNECTION - 1) // STREAMS_PER_CONNECTION):
        _, proto = await loop.create_connection(H2Conn, "127.0.0.1", port, ssl=ctx)
        conns.append(proto)
    rng = random.Random(1)

    def one(i: int) -> Any:
        conn = conns[i // STREAMS_PER_CONNECTION]
        abort = i in aborts
        return lambda check: h2_session(conn, check, tally, window, check.frames // 2 if abort else None)

    await asyncio.gather(*(slot(one(i), tally, i, frames, rng) for i in range(sessions)))
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return tally


# ---------------------------------------------------------------- WebSocket door
async def ws_session(
    url: str, ctx: ssl.SSLContext, check: Checker, tally: Tally, window: int, abort: bool
) -> str:
    error: str | None = None
    for _ in range(MAX_OPEN_TRIES):
        try:
            async with connect(url, ssl=ctx, max_size=None, compression=None) as ws:
                tally.frames_sent -= check.sent  # a refused attempt's frames do not count
                check.sent = check.next = 0
                try:
                    for _ in range(min(window, check.frames)):
                        await ws.send(check.take())
                    while check.next < check.frames:
                        msg = await ws.recv()
                        check.echoed(msg if isinstance(msg, bytes) else msg.encode())
                        if abort and check.next >= check.frames // 2:
                            ws.transport.abort()
                            error = "aborted"
                            break
                        if check.sent < check.frames:
                            await ws.send(check.take())
                except ConnectionClosed as exc:
                    if error == "aborted":
                        break
                    code = exc.rcvd.code if exc.rcvd is not None else 1006
                    if code == 1013 and check.next == 0:
                        tally.refused_opens += 1
                        await asyncio.sleep(OPEN_RETRY_S)
                        continue
                    error = f"close {code}"
            break
        except ConnectionClosed:
            break  # from the close on leaving: the outcome is already known
        except (InvalidStatus, OSError):
            tally.refused_opens += 1
            await asyncio.sleep(OPEN_RETRY_S)
    return _close_out(check, tally, error, None)


async def run_ws(port: int, ca: Path, sessions: int, frames: int, window: int, aborts: set[int]) -> Tally:
    tally = Tally()
    ctx = ssl.create_default_context(cafile=str(ca))
    url = f"wss://127.0.0.1:{port}/endpoints/echo/ws"
    rng = random.Random(2)

    def one(i: int) -> Any:
        return lambda check: ws_session(url, ctx, check, tally, window, i in aborts)

    await asyncio.gather(*(slot(one(i), tally, i, frames, rng) for i in range(sessions)))
    return tally


# ---------------------------------------------------------------- faults and measurements
class Instance:
    """The echo model server, killed and restarted on the same port by the soak itself."""

    def __init__(self, tmp: Path) -> None:
        self.port = floor.free_port()
        self.tmp = tmp
        self.kills = 0
        self.proc = self._spawn()

    def _spawn(self) -> floor.Spawned:
        cmd = [str(BIN), "serve", "echo", "--port", str(self.port), "--max-sessions", "5000"]
        return floor.spawn(cmd, self.port, cpu=floor.CLIENT_CPU, log_path=self.tmp / f"echo-{self.kills}.log")

    def kill_and_restart(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.proc.wait()
        self.kills += 1
        self.proc = self._spawn()

    def established(self) -> int:
        """TCP connections the instance still holds open (each one an instance session)."""
        out = subprocess.run(
            ["ss", "-Htn", "state", "established", f"( sport = :{self.port} )"],
            capture_output=True,
            text=True,
        ).stdout
        return len([line for line in out.splitlines() if line.strip()])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "loadavg": loadavg()}


async def killer(instance: Instance, kills: int, every: float, stop: asyncio.Event) -> None:
    for _ in range(kills):
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except TimeoutError:
            pass
        await asyncio.to_thread(instance.kill_and_restart)


async def sampler(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            peak[0] = max(peak[0], rss_kib(pid))
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


async def settle(check: Any, want: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (value := check()) > want and time.monotonic() < deadline:  # noqa: ASYNC110 (another process's state)
        await asyncio.sleep(0.1)
    return int(value)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    floor.raise_nofile()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        instance = Instance(tmp)
        gw_port = floor.free_port()
        gw = floor.spawn(
            [
                str(BIN),
                "gateway",
                "--port",
                str(gw_port),
                "--data-dir",
                str(tmp / "gw"),
                "--endpoint",
                f"echo=http://127.0.0.1:{instance.port}",
                "--log-level",
                "error",
            ],
            gw_port,
            cpu=floor.SERVER_CPU,
            log_path=tmp / "gateway.log",
        )
        ca = tmp / "gw" / "ca.pem"
        out: dict[str, Any] = {"machine": machine(), "config": vars(args), "doors": {}}
        try:
            rng = random.Random(3)
            n_abort = round(args.sessions * args.abort_fraction)
            for door in args.doors.split(","):
                aborts = set(rng.sample(range(args.sessions), n_abort))
                fds_start, rss_start = fds(gw.pid), rss_kib(gw.pid)
                peak = [rss_start]
                stop = asyncio.Event()
                tasks = [
                    asyncio.create_task(killer(instance, args.kills, args.kill_every, stop)),
                    asyncio.create_task(sampler(gw.pid, peak, stop)),
                ]
                t0 = time.monotonic()
                runner = run_h2 if door == "h2" else run_ws
                kills_before = instance.kills
                tally = await runner(gw_port, ca, args.sessions, args.frames, args.window, aborts)
                seconds = time.monotonic() - t0
                stop.set()
                await asyncio.gather(*tasks)
                leaked_sessions = await settle(instance.established, 0)
                fds_end = await settle(lambda: fds(gw.pid), fds_start)
                result = asdict(tally) | {
                    "seconds": round(seconds, 1),
                    "instance_kills": instance.kills - kills_before,
                    "leaked_instance_sessions": leaked_sessions,
                    "gateway_fds_start": fds_start,
                    "gateway_fds_end": fds_end,
                    "leaked_gateway_fds": max(0, fds_end - fds_start),
                    "gateway_rss_kib": {"start": rss_start, "peak": peak[0], "end": rss_kib(gw.pid)},
                }
                result["passed"] = all(
                    result[k] == 0
                    for k in (
                        "lost",
                        "duplicated",
                        "reordered",
                        "corrupted",
                        "leaked_instance_sessions",
                        "leaked_gateway_fds",
                    )
                )
                out["doors"][door] = result
                print(f"{door}: {json.dumps(result)}", flush=True)
        finally:
            gw.stop()
            instance.proc.stop()
        out["machine"]["loadavg_end"] = loadavg()
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--window", type=int, default=16, help="frames in flight per session")
    p.add_argument("--kills", type=int, default=3, help="instance SIGKILLs per door")
    p.add_argument("--kill-every", type=float, default=20.0, help="seconds between kills")
    p.add_argument("--abort-fraction", type=float, default=0.1)
    p.add_argument("--doors", default="h2,ws")
    p.add_argument("--out", default=str(RESULTS / "soak.json"))
    args = p.parse_args()
    result = asyncio.run(soak(args))
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {"machine": result["machine"], "passed": {d: r["passed"] for d, r in result["doors"].items()}}
        )
    )


if __name__ == "__main__":
    main()
