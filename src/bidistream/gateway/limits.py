"""Named limits of the gateway, with safe defaults (each one a security or latency bound)."""

from __future__ import annotations

from dataclasses import dataclass

from bidistream.eventstream import MAX_EVENT_SIZE

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    # SageMaker's sidecar pings every 60 s and gives up after 5 unanswered pings.
    ping_interval: float = 60.0
    missed_pongs: int = 5
    # Largest request event (envelope included); above it the session ends with
    # ModelStreamError and the client's stream is refused.
    max_event_size: int = MAX_EVENT_SIZE
    # HTTP/2 receive window per stream.  Data is acknowledged only once it has
    # been written to the instance, so this bounds what one session can buffer.
    stream_window: int = 1 * MiB
    # Outbound bytes queued per session (either direction) before reads from the
    # other side are paused.  Resumed below a quarter of it.
    high_water: int = 1 * MiB
    # Concurrent HTTP/2 streams per client connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    # Each bidi stream may hold a stream window plus high_water of buffers, so this
    # times 2 MiB bounds one connection; 128 leaves room for 100-session clients.
    max_streams: int = 128
    # HTTP/2 control frames (PING, SETTINGS, PRIORITY, RST_STREAM, empty DATA) per
    # connection per second, with a saved-up burst; past it GOAWAY(ENHANCE_YOUR_CALM).
    # Clients send a few per stream; a flood of them (CVE-2019-9512 class) cost
    # ~8 µs of gateway CPU each and starved every other session.
    control_frames_per_second: float = 1000.0
    control_frame_burst: int = 2000
    # WINDOW_UPDATE frames per connection per second: a client acknowledging every
    # DATA frame on stream and connection sends two per frame received, so the
    # bound sits well above the gateway's own DATA rate.
    window_updates_per_second: float = 20_000.0
    window_update_burst: int = 20_000
    # A frame (or the connection preface) must arrive whole within this many seconds
    # of its first byte; a client stalling mid-frame holds its buffer no longer.
    frame_timeout: float = 10.0
    # After a GOAWAY for a violation, how long a client that does not read gets
    # before the connection is aborted.
    close_grace: float = 1.0
    # InvokeEndpoint bodies buffered per HTTP/2 connection; above it their DATA is
    # no longer acknowledged until earlier bodies are consumed (two 6 MB bodies fit).
    max_connection_bodies: int = 12 * MiB
    # Time to open the WebSocket to the instance (the contract gives the accept 250 ms;
    # connect time on a busy host comes on top).
    connect_timeout: float = 10.0
    # After the instance accepts, how long to wait for a sign it kept the session
    # (a frame or the answer to a ping) before relaying to it anyway.  Client
    # frames wait in the front door meanwhile; a 1013 close in that time sends
    # the session to the next instance.
    confirm_timeout: float = 0.25
    # After the client ends its input, how long the instance gets to finish and close.
    close_timeout: float = 30.0
    # After the gateway sends its own close to the instance (client gone, bad input,
    # timeouts), how long before the instance transport is cut: the README promises
    # the instance WebSocket closes within 1 s of a client vanishing.
    abort_timeout: float = 0.5
    # After the WebSocket door sends its close, how long the client gets to answer
    # it before the socket is cut.
    ws_close_timeout: float = 5.0
    # InvokeEndpoint: the container's body limit (36 MiB), not SageMaker's 6 MB, so the NIM seed's
    # 25 MB uploads reach the speech model (issue 12); 60 s per call.
    max_invoke_body: int = 36 * MiB
    invoke_timeout: float = 60.0
    # Largest HTTP/1.1 request head.
    max_head: int = 64 * KiB
    # Accept `+` and other forms real Deepgram URLs use in ModelQueryString.
    lenient_query: bool = False
    # picows' read buffer per instance connection; grows on demand.  Small keeps
    # idle sessions cheap (the default 16 KiB dominates an idle session's memory).
    ws_read_buffer: int = 2 * KiB
