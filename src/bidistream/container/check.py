"""``bidistream check URL``: does a container honour the bidirectional-streaming contract?

The checker talks to any container (ours or not) the way SageMaker's sidecar
does and reports eight numbered checks, one line each, with what it measured:

1. ``GET /ping`` answers 200 within 2 s.
2. ``POST /invocations`` is routed: any HTTP answer except 404/405/501 within
   60 s.  A model may reject the checker's tiny body (400, 415, even 500 when
   it fails on it), which still proves the route exists and the model was
   reached; a missing route or a connection failure does not.
3. WebSocket accept time over 20 sequential connects (TCP connect + upgrade),
   p99 at most 250 ms.
4. A ping with a random payload comes back as a pong with the same payload.
5. A text frame round-trips as text, byte for byte (echo-like models only).
6. A binary frame that is not valid UTF-8 round-trips as binary (echo-like only).
7. A custom invocation path and query string reach the container.  The upgrade
   goes to ``/<path>?<query>`` (``--path``, ``--query``; by default the
   standard path and a random ``bidistream-check=<nonce>`` parameter, so the
   query is always exercised).  It passes when that upgrade is accepted and, for
   an echo-like model, a text probe comes back on it.  A pure echo cannot show
   what query it received, so two extra facts are reported, not required: a
   reply that contains the raw query (a model that reflects its session, as a
   diagnostic model may) is reported as "query reflected", and an upgrade to a
   random unknown path is tried, whose refusal shows the container routes on
   the path (SageMaker only sends declared paths, so accepting every path is
   legal).
8. Ten sessions open at once; for echo-like models each gets its own frame back.

Measuring (sockets, aiohttp) and judging (plain functions over the measured
values) are separate, so every verdict is testable without a network.  The
checker never raises for a misbehaving container: every failure becomes a FAIL
line with the reason.  Exit status: 0 all checks passed (skips allowed), 1 at
least one failed, 2 the command line itself was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import aiohttp
from yarl import URL

from bidistream import contract
from bidistream.errors import InputValidationError

__all__ = [
    "ACCEPT_BAR",
    "ACCEPT_CONNECTS",
    "CONCURRENT_SESSIONS",
    "CheckConfig",
    "CheckResult",
    "Report",
    "Status",
    "add_arguments",
    "exit_code",
    "parse_target",
    "render_json",
    "render_text",
    "run",
    "run_checks",
]

DEFAULT_PATH = "invocations-bidirectional-stream"

# ---------------------------------------------------------------- named limits
# The contract's numbers; the checker never relaxes them.
PING_DEADLINE = 2.0  # /ping must answer within 2 s
INVOKE_DEADLINE = 60.0  # /invocations must answer within 60 s
ACCEPT_BAR = 0.250  # WebSocket accept within 250 ms
ACCEPT_CONNECTS = 20  # sample size for the accept percentiles
CONCURRENT_SESSIONS = 10
# How long to wait for a pong or an echoed frame before calling it missing.
# A healthy container answers in milliseconds; the CLI can raise it.
DEFAULT_STEP_TIMEOUT = 5.0
# Closing handshakes of a misbehaving container must not stretch the run.
CLOSE_TIMEOUT = 1.0
# Large enough for any probe the checker sends; a container's reply may be bigger.
MAX_REPLY = 4 * 1024 * 1024

# ModelInvocationPath / ModelQueryString follow SageMaker's patterns (bidistream.contract):
# a value the real runtime API would reject is not worth checking a container with.

# Status codes meaning "no such route" rather than "the model answered".
_NOT_ROUTED = frozenset({404, 405, 501})


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


Value = float | int | str | bool | None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One numbered line of the report; ``values`` carries the raw measurements."""

    number: int
    name: str
    status: Status
    summary: str
    values: dict[str, Value] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Report:
    url: str
    echo: bool
    results: tuple[CheckResult, ...]
    # Set when nothing listens at the URL: the other checks are not run, and one line says so.
    unreachable: str = ""

    @property
    def failed(self) -> list[int]:
        return [r.number for r in self.results if r.status is Status.FAIL]

    @property
    def passed(self) -> bool:
        return not self.failed


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """What to check and how patiently.  ``http_base``/``ws_base`` have no trailing slash."""

    http_base: str
    ws_base: str
    echo: bool = True
    path: str = DEFAULT_PATH
    query: str = ""
    step_timeout: float = DEFAULT_STEP_TIMEOUT
    wait: float = 0.0
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))


# ================================================================ pure helpers
def parse_target(url: str) -> tuple[str, str]:
    """``http(s)://`` or ``ws(s)://`` (or bare ``host:port``) → (HTTP base, WS base)."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parsed = URL(text)
    except ValueError as exc:
        raise InputValidationError(f"not a URL: {url!r}") from exc
    schemes = {
        "http": ("http", "ws"),
        "ws": ("http", "ws"),
        "https": ("https", "wss"),
        "wss": ("https", "wss"),
    }
    if parsed.scheme not in schemes or not parsed.host:
        raise InputValidationError(f"expected http://HOST:PORT or ws://HOST:PORT, got {url!r}")
    if parsed.query_string or parsed.fragment:
        raise InputValidationError(f"give the container's base URL without query or fragment: {url!r}")
    http_scheme, ws_scheme = schemes[parsed.scheme]
    netloc = parsed.raw_authority
    prefix = parsed.raw_path.rstrip("/")
    return f"{http_scheme}://{netloc}{prefix}", f"{ws_scheme}://{netloc}{prefix}"


def validate_path(path: str) -> str:
    """A ModelInvocationPath as SageMaker accepts it; a leading ``/`` is forgiven."""
    clean = path.strip().lstrip("/")
    if not contract.is_invocation_path(clean):
        raise InputValidationError(
            f"--path {path!r} is not a valid ModelInvocationPath "
            f"(letters, digits, - . _ in /-separated segments, at most {contract.MAX_INVOCATION_PATH} chars)"
        )
    return clean


def validate_query(query: str) -> str:
    """A ModelQueryString as SageMaker accepts it (so no ``+``, no empty values)."""
    clean = query.strip().lstrip("?")
    if not clean:
        return ""
    if not contract.is_query(clean):
        raise InputValidationError(
            f"--query {query!r} is not a valid ModelQueryString: key=value pairs joined by &, "
            "values of unreserved characters or %XX (SageMaker rejects '+', spaces and empty values)"
        )
    return clean


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: with 20 samples p99 is the slowest one, as it should be."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:.1f} ms"


def _r(seconds: float | None) -> float | None:
    """Seconds → milliseconds rounded for the JSON report."""
    if seconds is None or math.isnan(seconds):
        return None
    return round(seconds * 1000, 3)


# ================================================================ observations
@dataclass(frozen=True, slots=True)
class HttpObservation:
    status: int | None = None
    elapsed: float | None = None
    body: bytes = b""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PongObservation:
    sent: bytes
    received: bytes | None = None
    elapsed: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FrameObservation:
    sent: bytes
    sent_text: bool
    received: bytes | None = None
    received_text: bool | None = None
    elapsed: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PathObservation:
    url_path: str
    accepted: bool
    refusal: str | None = None
    reply: bytes | None = None
    reply_error: str | None = None
    control_refused: bool | None = None
    control_detail: str = ""


@dataclass(frozen=True, slots=True)
class ConcurrentObservation:
    wanted: int
    opened: int
    echoed: int
    elapsed: float | None
    errors: tuple[str, ...] = ()


# ================================================================ judges (pure)
def judge_ping(obs: HttpObservation) -> CheckResult:
    values: dict[str, Value] = {"status": obs.status, "elapsed_ms": _r(obs.elapsed), "bar_ms": 2000}
    if obs.status is None or obs.elapsed is None:
        return CheckResult(1, "ping", Status.FAIL, f"GET /ping failed: {obs.error}", values)
    head = f"GET /ping -> {obs.status} in {_ms(obs.elapsed)}"
    if obs.status != 200:
        return CheckResult(1, "ping", Status.FAIL, f"{head}; want 200 (model not loaded?)", values)
    if obs.elapsed > PING_DEADLINE:
        return CheckResult(1, "ping", Status.FAIL, f"{head}; over the 2 s limit", values)
    note = f" (body {len(obs.body)} B; the contract wants it empty)" if obs.body else ""
    values["body_bytes"] = len(obs.body)
    return CheckResult(1, "ping", Status.PASS, head + note, values)


def judge_invocations(obs: HttpObservation) -> CheckResult:
    values: dict[str, Value] = {"status": obs.status, "elapsed_ms": _r(obs.elapsed)}
    if obs.status is None or obs.elapsed is None:
        return CheckResult(2, "invocations", Status.FAIL, f"POST /invocations failed: {obs.error}", values)
    head = f"POST /invocations -> {obs.status} in {_ms(obs.elapsed)}"
    if obs.status in _NOT_ROUTED:
        return CheckResult(2, "invocations", Status.FAIL, f"{head}; route missing", values)
    if obs.elapsed > INVOKE_DEADLINE:
        return CheckResult(2, "invocations", Status.FAIL, f"{head}; over the 60 s limit", values)
    return CheckResult(2, "invocations", Status.PASS, head, values)


def judge_accept(samples: Sequence[float], errors: Sequence[str], wanted: int) -> CheckResult:
    p50, p99 = percentile(samples, 0.50), percentile(samples, 0.99)
    values: dict[str, Value] = {
        "connects": len(samples),
        "wanted": wanted,
        "p50_ms": _r(p50),
        "p99_ms": _r(p99),
        "max_ms": _r(max(samples) if samples else None),
        "bar_ms": ACCEPT_BAR * 1000,
    }
    head = f"{len(samples)}/{wanted} connects: p50 {_ms(p50)}, p99 {_ms(p99)} (bar 250 ms)"
    if errors:
        return CheckResult(3, "accept", Status.FAIL, f"{head}; {len(errors)} failed: {errors[0]}", values)
    if len(samples) < wanted or not p99 <= ACCEPT_BAR:
        return CheckResult(3, "accept", Status.FAIL, f"{head}; too slow", values)
    return CheckResult(3, "accept", Status.PASS, head, values)


def judge_pong(obs: PongObservation) -> CheckResult:
    values: dict[str, Value] = {"payload_bytes": len(obs.sent), "elapsed_ms": _r(obs.elapsed)}
    if obs.received is None:
        return CheckResult(4, "pong", Status.FAIL, f"no pong: {obs.error}", values)
    if obs.received != obs.sent:
        return CheckResult(
            4,
            "pong",
            Status.FAIL,
            f"pong payload differs ({len(obs.received)} B, sent {len(obs.sent)} B)",
            values,
        )
    return CheckResult(
        4, "pong", Status.PASS, f"pong with the same {len(obs.sent)} B in {_ms(obs.elapsed)}", values
    )


def judge_round_trip(number: int, obs: FrameObservation | None) -> CheckResult:
    name = "text" if number == 5 else "binary"
    if obs is None:
        return CheckResult(number, name, Status.SKIP, "skipped (--no-echo)")
    kind = "text" if obs.sent_text else "binary"
    values: dict[str, Value] = {"bytes": len(obs.sent), "elapsed_ms": _r(obs.elapsed)}
    if obs.received is None:
        return CheckResult(number, name, Status.FAIL, f"no {kind} frame back: {obs.error}", values)
    got_kind = "text" if obs.received_text else "binary"
    if obs.received_text != obs.sent_text:
        return CheckResult(number, name, Status.FAIL, f"sent {kind}, got {got_kind} back", values)
    if obs.received != obs.sent:
        return CheckResult(
            number,
            name,
            Status.FAIL,
            f"{kind} frame changed: sent {_preview(obs.sent, obs.sent_text)}, "
            f"got {_preview(obs.received, obs.received_text)} (not an echo model? add --no-echo)",
            values,
        )
    return CheckResult(
        number,
        name,
        Status.PASS,
        f"{len(obs.sent)} B {kind} frame back unchanged in {_ms(obs.elapsed)}",
        values,
    )


PREVIEW_BYTES = 40  # how much of a frame a failure line quotes


def _preview(data: bytes, as_text: bool) -> str:
    """A frame as a failure line quotes it: its size and its first bytes, text as text."""
    head = data[:PREVIEW_BYTES]
    shown = repr(head.decode("utf-8", "replace")) if as_text else head.hex(" ")
    more = " …" if len(data) > PREVIEW_BYTES else ""
    return f"{len(data)} B {shown}{more}"


def judge_path_query(obs: PathObservation, *, echo: bool, query: str, probe: bytes) -> CheckResult:
    reflected = bool(query) and obs.reply is not None and query.encode() in obs.reply
    values: dict[str, Value] = {
        "url_path": obs.url_path,
        "accepted": obs.accepted,
        "query_reflected": reflected,
        "unknown_path_refused": obs.control_refused,
    }
    if not obs.accepted:
        return CheckResult(
            7, "path+query", Status.FAIL, f"upgrade at {obs.url_path} refused: {obs.refusal}", values
        )
    notes = []
    if reflected:
        notes.append("query reflected")
    if obs.control_refused:
        notes.append(f"unknown path refused with {obs.control_detail}")
    elif obs.control_refused is False:
        notes.append("unknown path also accepted: routing by path not shown")
    tail = f" ({'; '.join(notes)})" if notes else ""
    if echo and not reflected:
        if obs.reply is None:
            return CheckResult(
                7,
                "path+query",
                Status.FAIL,
                f"upgrade at {obs.url_path} ok, no echo: {obs.reply_error}",
                values,
            )
        if obs.reply != probe:
            return CheckResult(
                7, "path+query", Status.FAIL, f"upgrade at {obs.url_path} ok, reply is not the probe", values
            )
    return CheckResult(7, "path+query", Status.PASS, f"upgrade at {obs.url_path} accepted{tail}", values)


def judge_concurrent(obs: ConcurrentObservation, *, echo: bool) -> CheckResult:
    values: dict[str, Value] = {
        "wanted": obs.wanted,
        "opened": obs.opened,
        "echoed": obs.echoed if echo else None,
        "elapsed_ms": _r(obs.elapsed),
    }
    head = f"{obs.opened}/{obs.wanted} sessions open at once"
    if echo:
        head += f", {obs.echoed}/{obs.wanted} echoed their own frame"
    if obs.opened < obs.wanted or (echo and obs.echoed < obs.wanted):
        why = f": {obs.errors[0]}" if obs.errors else ""
        return CheckResult(8, "concurrent", Status.FAIL, head + why, values)
    return CheckResult(8, "concurrent", Status.PASS, f"{head} in {_ms(obs.elapsed)}", values)


# ================================================================ rendering
def render_text(report: Report) -> str:
    if report.unreachable:
        return f"bidistream check {report.url}: FAIL: {report.unreachable}"
    mode = "echo-like model" if report.echo else "non-echo model"
    lines = [f"bidistream check {report.url} ({mode})"]
    for r in report.results:
        lines.append(f"{r.number:>2} {r.status.value.upper():<4} {r.name:<12} {r.summary}")
    counts = {s: sum(1 for r in report.results if r.status is s) for s in Status}
    verdict = "PASS" if report.passed else f"FAIL (checks {', '.join(map(str, report.failed))})"
    passed, failed, skipped = counts[Status.PASS], counts[Status.FAIL], counts[Status.SKIP]
    lines.append(f"{verdict}: {passed} passed, {failed} failed, {skipped} skipped")
    return "\n".join(lines)


def render_json(report: Report) -> str:
    return json.dumps(
        {
            "url": report.url,
            "echo": report.echo,
            "passed": report.passed,
            "failed": report.failed,
            "unreachable": report.unreachable or None,
            "checks": [
                {
                    "number": r.number,
                    "name": r.name,
                    "status": r.status.value,
                    "summary": r.summary,
                    "values": r.values,
                }
                for r in report.results
            ],
        },
        indent=2,
    )


def exit_code(report: Report) -> int:
    return 0 if report.passed else 1


# ================================================================ measuring (I/O)
def _describe(exc: BaseException) -> str:
    """A one-line reason from an aiohttp/OS/timeout failure; the checker's boundary."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"upgrade refused with HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


_EXPECTED = (aiohttp.ClientError, OSError, TimeoutError, ValueError)


class _Prober:
    """Owns one aiohttp session; each method measures one check and never raises."""

    def __init__(self, config: CheckConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http

    def ws_url(self, path: str, query: str = "") -> URL:
        # encoded=True keeps the query byte for byte, as SageMaker passes it.
        return URL(f"{self.config.ws_base}/{path}" + (f"?{query}" if query else ""), encoded=True)

    async def connect(self, path: str = DEFAULT_PATH, query: str = "") -> aiohttp.ClientWebSocketResponse:
        timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT)
        return await self.http.ws_connect(
            self.ws_url(path, query),
            autoping=False,  # check 4 must see pongs itself
            autoclose=True,
            heartbeat=None,
            max_msg_size=MAX_REPLY,
            timeout=timeout,
        )

    async def wait_ready(self) -> None:
        """Poll /ping until 200 or ``wait`` runs out; the verdict is check 1's."""
        deadline = time.monotonic() + self.config.wait
        while time.monotonic() < deadline:
            try:
                async with asyncio.timeout(PING_DEADLINE):
                    async with self.http.get(f"{self.config.http_base}/ping") as resp:
                        if resp.status == 200:
                            return
            except _EXPECTED:
                pass
            await asyncio.sleep(0.1)

    async def http_call(self, method: str, path: str, deadline: float, body: bytes = b"") -> HttpObservation:
        began = time.perf_counter()
        try:
            async with asyncio.timeout(deadline + 1.0):
                async with self.http.request(
                    method,
                    f"{self.config.http_base}/{path}",
                    data=body if method == "POST" else None,
                    headers={"Content-Type": "application/json"} if method == "POST" else None,
                ) as resp:
                    data = await resp.read()
                    return HttpObservation(resp.status, time.perf_counter() - began, data)
        except _EXPECTED as exc:
            return HttpObservation(error=_describe(exc))

    async def accept_times(self, count: int) -> tuple[list[float], list[str]]:
        samples: list[float] = []
        errors: list[str] = []
        for _ in range(count):
            began = time.perf_counter()
            try:
                async with asyncio.timeout(self.config.step_timeout):
                    ws = await self.connect()
                samples.append(time.perf_counter() - began)
            except _EXPECTED as exc:
                errors.append(_describe(exc))
                if len(errors) >= 3:
                    break  # a container that refuses three times will refuse twenty
                continue
            await self.close(ws)
        return samples, errors

    async def close(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT + 0.5):
                await ws.close()
        except _EXPECTED:
            pass

    async def pong(self) -> PongObservation:
        payload = b"bidistream-check-" + secrets.token_bytes(16)
        try:
            async with asyncio.timeout(self.config.step_timeout):
                ws = await self.connect()
        except _EXPECTED as exc:
            return PongObservation(payload, error=_describe(exc))
        try:
            began = time.perf_counter()
            async with asyncio.timeout(self.config.step_timeout):
                await ws.ping(payload)
                while True:
                    msg = await ws.receive()
                    if msg.type is aiohttp.WSMsgType.PONG:
                        return PongObservation(payload, bytes(msg.data), time.perf_counter() - began)
                    if msg.type in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR,
                    ):
                        return PongObservation(payload, error=f"connection closed ({ws.close_code})")
        except _EXPECTED as exc:
            why = _describe(exc)
            if why == "timed out":
                why = f"no pong within {self.config.step_timeout:g} s"
            return PongObservation(payload, error=why)
        finally:
            await self.close(ws)

    async def exchange(
        self, ws: aiohttp.ClientWebSocketResponse, data: bytes, as_text: bool
    ) -> FrameObservation:
        """Send one frame, return the first data frame back (pongs and pings skipped)."""
        began = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.step_timeout):
                if as_text:
                    await ws.send_str(data.decode("utf-8"))
                else:
                    await ws.send_bytes(data)
                while True:
                    msg = await ws.receive()
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        got = msg.data.encode("utf-8")
                        return FrameObservation(data, as_text, got, True, time.perf_counter() - began)
                    if msg.type is aiohttp.WSMsgType.BINARY:
                        return FrameObservation(
                            data, as_text, bytes(msg.data), False, time.perf_counter() - began
                        )
                    if msg.type is aiohttp.WSMsgType.PING:
                        await ws.pong(msg.data)
                        continue
                    if msg.type is aiohttp.WSMsgType.PONG:
                        continue
                    code = ws.close_code
                    return FrameObservation(data, as_text, error=f"connection closed (code {code})")
        except _EXPECTED as exc:
            return FrameObservation(data, as_text, error=_describe(exc))

    async def round_trip(self, data: bytes, as_text: bool) -> FrameObservation:
        try:
            async with asyncio.timeout(self.config.step_timeout):
                ws = await self.connect()
        except _EXPECTED as exc:
            return FrameObservation(data, as_text, error=_describe(exc))
        try:
            return await self.exchange(ws, data, as_text)
        finally:
            await self.close(ws)

    async def path_query(self, probe: bytes) -> PathObservation:
        cfg = self.config
        url_path = f"/{cfg.path}" + (f"?{cfg.query}" if cfg.query else "")
        control_refused, control_detail = await self._control_path()
        try:
            async with asyncio.timeout(cfg.step_timeout):
                ws = await self.connect(cfg.path, cfg.query)
        except _EXPECTED as exc:
            return PathObservation(
                url_path, False, _describe(exc), None, None, control_refused, control_detail
            )
        try:
            obs = await self.exchange(ws, probe, True)
        finally:
            await self.close(ws)
        return PathObservation(url_path, True, None, obs.received, obs.error, control_refused, control_detail)

    async def _control_path(self) -> tuple[bool | None, str]:
        """Upgrade at a path no container serves: refused means routing looks at the path."""
        missing = f"bidistream-check-missing-{self.config.nonce}"
        try:
            async with asyncio.timeout(self.config.step_timeout):
                ws = await self.connect(missing)
        except aiohttp.WSServerHandshakeError as exc:
            return True, f"HTTP {exc.status}"
        except _EXPECTED as exc:
            return None, _describe(exc)
        await self.close(ws)
        return False, "accepted"

    async def concurrent(self, count: int, echo: bool) -> ConcurrentObservation:
        errors: list[str] = []
        began = time.perf_counter()

        async def one(index: int) -> aiohttp.ClientWebSocketResponse | None:
            try:
                async with asyncio.timeout(self.config.step_timeout):
                    return await self.connect()
            except _EXPECTED as exc:
                errors.append(f"session {index}: {_describe(exc)}")
                return None

        sockets = await asyncio.gather(*(one(i) for i in range(count)))
        opened = [ws for ws in sockets if ws is not None]
        elapsed = time.perf_counter() - began
        echoed = 0
        try:
            if echo:
                probes = [f"session {i} {self.config.nonce}".encode() for i in range(len(opened))]
                results = await asyncio.gather(
                    *(self.exchange(ws, p, True) for ws, p in zip(opened, probes, strict=True))
                )
                for obs in results:
                    if obs.received == obs.sent and obs.received_text:
                        echoed += 1
                    elif obs.error:
                        errors.append(obs.error)
                    else:
                        errors.append("a session got another session's frame or a changed one")
            else:
                # Still open after a moment: the container did not refuse the extra sessions.
                await asyncio.sleep(0.2)
                still = [ws for ws in opened if not ws.closed]
                if len(still) < len(opened):
                    errors.append(f"{len(opened) - len(still)} session(s) closed by the container")
                opened = still
        finally:
            await asyncio.gather(*(self.close(ws) for ws in sockets if ws is not None))
        return ConcurrentObservation(count, len(opened), echoed, elapsed, tuple(errors))


# Probe frames: non-ASCII text proves UTF-8 survives; the binary probe is not valid
# UTF-8, so a container that decodes binary frames as text cannot pass.
TEXT_PROBE = "bidistream check: héllo, 世界 ✓"
BINARY_PROBE = bytes(range(256)) + b"\xff\xfe\x00\xc3\x28"


async def run_checks(config: CheckConfig) -> Report:
    """Run the eight checks against one container, in order, each bounded in time."""
    timeout = aiohttp.ClientTimeout(total=None, connect=config.step_timeout)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        probe = _Prober(config, http)
        if config.wait > 0:
            await probe.wait_ready()
        results: list[CheckResult] = []
        ping = await probe.http_call("GET", "ping", PING_DEADLINE)
        results.append(judge_ping(ping))
        if ping.status is None and (ping.error or "").startswith("cannot connect"):
            # Seven more "cannot connect" lines would say nothing the first did not.
            why = f"nothing listens at {config.http_base} ({ping.error}); is the container running?"
            return Report(config.http_base, config.echo, tuple(results), unreachable=why)
        results.append(
            judge_invocations(
                await probe.http_call("POST", "invocations", INVOKE_DEADLINE, b'{"inputs": "ping"}')
            )
        )
        samples, errors = await probe.accept_times(ACCEPT_CONNECTS)
        results.append(judge_accept(samples, errors, ACCEPT_CONNECTS))
        results.append(judge_pong(await probe.pong()))
        text: FrameObservation | None = None
        binary: FrameObservation | None = None
        if config.echo:
            text = await probe.round_trip(TEXT_PROBE.encode("utf-8"), True)
            binary = await probe.round_trip(BINARY_PROBE, False)
        results.append(judge_round_trip(5, text))
        results.append(judge_round_trip(6, binary))
        path_probe = f"bidistream-check path probe {config.nonce}".encode()
        results.append(
            judge_path_query(
                await probe.path_query(path_probe), echo=config.echo, query=config.query, probe=path_probe
            )
        )
        results.append(
            judge_concurrent(await probe.concurrent(CONCURRENT_SESSIONS, config.echo), echo=config.echo)
        )
    return Report(config.http_base, config.echo, tuple(results))


# ================================================================ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="the container's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--no-echo",
        dest="echo",
        action="store_false",
        help="the model is not an echo: skip checks 5 and 6 and only require the upgrades in 7 and 8",
    )
    parser.add_argument(
        "--path",
        default=DEFAULT_PATH,
        help=f"invocation path for check 7, as ModelInvocationPath (default {DEFAULT_PATH})",
    )
    parser.add_argument(
        "--query",
        default=None,
        help="query string for check 7, as ModelQueryString (default: bidistream-check=<random nonce>)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_STEP_TIMEOUT,
        help=f"seconds to wait for each connect, pong or echo (default {DEFAULT_STEP_TIMEOUT:g})",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="first wait up to this many seconds for /ping to answer 200 (a container still loading)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def config_from_args(args: argparse.Namespace) -> CheckConfig:
    http_base, ws_base = parse_target(args.url)
    nonce = secrets.token_hex(8)
    query = validate_query(args.query) if args.query is not None else f"bidistream-check={nonce}"
    if args.timeout <= 0:
        raise InputValidationError("--timeout must be positive")
    return CheckConfig(
        http_base=http_base,
        ws_base=ws_base,
        echo=args.echo,
        path=validate_path(args.path),
        query=query,
        step_timeout=args.timeout,
        wait=max(0.0, args.wait),
        nonce=nonce,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point for ``bidistream check``: 0 all pass, 1 a check failed, 2 bad usage."""
    try:
        config = config_from_args(args)
    except InputValidationError as exc:
        print(f"bidistream check: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(run_checks(config))
    print(render_json(report) if args.json else render_text(report), flush=True)
    return exit_code(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone use (``python -m bidistream.container.check URL``) before the CLI wires it."""
    parser = argparse.ArgumentParser(
        prog="bidistream check", description="Check a container against the SageMaker bidi contract."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
