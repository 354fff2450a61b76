"""Every platform metric, declared once, on prometheus-client's default registry.

One module so that one name means one thing on every server (gateway,
instance, speech model) and so a helper adding a metric finds the others
beside it.  Families live in the default ``REGISTRY``; any server that mounts
:func:`exposition` (``GET /metrics``) shows them all, including metrics other
modules declare with prometheus-client directly.

Naming follows Prometheus conventions: ``bidistream_<room>_<what>_total`` for
counters, ``_seconds`` / ``_bytes`` for units, histograms for latencies.  The
labels that locate a fact are ``endpoint``, ``variant`` and ``instance`` (the
instance's id, e.g. ``echo-AllTraffic-1``); facts about one session never get a
session label, except the speech backlog gauge, whose children live only while
their session does.

The hot path is one :class:`SessionMeter` per session: label children are
bound once when the session opens, the relay counts frames and bytes in plain
integers (no lock, no dict lookup per frame) and the meter adds them to the
counters when the session ends and on every scrape, so a long session's
frames show up while it runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

__all__ = [
    "CONTAINER",
    "CONTENT_TYPE",
    "GATEWAY",
    "InstanceIdentity",
    "SessionFamilies",
    "SessionMeter",
    "SpeechMeter",
    "control_plane_call",
    "enabled",
    "exposition",
    "invocation",
    "router_decision",
    "set_enabled",
    "set_instance_state",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
LOCATION: Final = ("endpoint", "variant", "instance")

# Bucket bounds, in seconds.  Sessions last up to 30 min (SageMaker's cap);
# first-output and final-transcript latencies matter in the 10 ms - 2 s band.
SESSION_BUCKETS: Final = (0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64)

# ``*_created`` series double the exposition and no dashboard reads them.
disable_created_metrics()

_enabled = True


def enabled() -> bool:
    return _enabled


def set_enabled(on: bool) -> None:
    """Turn session metering on or off for this process (the benchmark compares both)."""
    global _enabled
    _enabled = on


# --------------------------------------------------------------------------- sessions
class SessionFamilies:
    """The per-session families of one side of the hop: ``gateway`` or ``container``.

    Two sides, two prefixes: a test (or ``bidistream run``) may host the gateway
    and an instance in one process, and one session must not count twice.
    """

    def __init__(self, side: str, registry: CollectorRegistry = REGISTRY) -> None:
        p = f"bidistream_{side}"
        self.side = side
        self.opened = Counter(
            f"{p}_sessions_opened_total", f"Sessions the {side} opened.", LOCATION, registry=registry
        )
        self.active = Gauge(
            f"{p}_sessions_active", f"Sessions open on the {side} now.", LOCATION, registry=registry
        )
        self.closed = Counter(
            f"{p}_sessions_closed_total",
            f"Sessions the {side} closed, by WebSocket close code and error type ('' when clean).",
            (*LOCATION, "code", "error"),
            registry=registry,
        )
        self.duration = Histogram(
            f"{p}_session_duration_seconds",
            f"Session lifetime on the {side}, open to close.",
            LOCATION,
            buckets=SESSION_BUCKETS,
            registry=registry,
        )
        self.first_output = Histogram(
            f"{p}_time_to_first_output_seconds",
            "Time from session open to the model's first output frame.",
            LOCATION,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.frames = Counter(
            f"{p}_frames_total",
            "Frames relayed; direction 'in' is client to model, 'out' model to client.",
            (*LOCATION, "direction"),
            registry=registry,
        )
        self.bytes = Counter(
            f"{p}_bytes_total",
            "Payload bytes relayed; direction as for frames.",
            (*LOCATION, "direction"),
            registry=registry,
        )
        self._bound: dict[tuple[str, str, str], _Bound] = {}
        self.live: set[SessionMeter] = set()

    def bound(self, endpoint: str, variant: str, instance: str) -> _Bound:
        key = (endpoint, variant, instance)
        b = self._bound.get(key)
        if b is None:
            b = self._bound[key] = _Bound(self, key)
        return b

    def open(self, endpoint: str, variant: str, instance: str) -> SessionMeter | None:
        """A session began: count it and return its meter (None while metering is off)."""
        if not _enabled:
            return None
        return SessionMeter(self, self.bound(endpoint, variant, instance))

    def flush_live(self) -> None:
        for meter in list(self.live):
            meter.flush()


class _Bound:
    """Label children for one (endpoint, variant, instance), bound once."""

    __slots__ = (
        "active",
        "bytes_in",
        "bytes_out",
        "duration",
        "first_output",
        "frames_in",
        "frames_out",
        "key",
        "opened",
    )

    def __init__(self, f: SessionFamilies, key: tuple[str, str, str]) -> None:
        self.key = key
        self.opened = f.opened.labels(*key)
        self.active = f.active.labels(*key)
        self.duration = f.duration.labels(*key)
        self.first_output = f.first_output.labels(*key)
        self.frames_in = f.frames.labels(*key, "in")
        self.frames_out = f.frames.labels(*key, "out")
        self.bytes_in = f.bytes.labels(*key, "in")
        self.bytes_out = f.bytes.labels(*key, "out")


class SessionMeter:
    """One session's counts.  The relay calls :meth:`inbound` / :meth:`outbound` per frame
    (two integer additions) and :meth:`close` once."""

    __slots__ = (
        "_b",
        "_flushed",
        "bytes_in",
        "bytes_out",
        "closed",
        "families",
        "first_output_at",
        "frames_in",
        "frames_out",
        "started",
    )

    def __init__(self, families: SessionFamilies, bound: _Bound) -> None:
        self.families = families
        self._b = bound
        self.started = time.monotonic()
        self.first_output_at: float | None = None
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self._flushed = (0, 0, 0, 0)
        self.closed = False
        bound.opened.inc()
        bound.active.inc()
        families.live.add(self)

    @property
    def location(self) -> tuple[str, str, str]:
        return self._b.key

    def inbound(self, nbytes: int) -> None:
        self.frames_in += 1
        self.bytes_in += nbytes

    def outbound(self, nbytes: int) -> None:
        if self.first_output_at is None:
            self.first_output_at = time.monotonic()
            self._b.first_output.observe(self.first_output_at - self.started)
        self.frames_out += 1
        self.bytes_out += nbytes

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def flush(self) -> None:
        """Add what was counted since the last flush to the shared counters."""
        fi, bi, fo, bo = self._flushed
        b = self._b
        if self.frames_in != fi:
            b.frames_in.inc(self.frames_in - fi)
            b.bytes_in.inc(self.bytes_in - bi)
        if self.frames_out != fo:
            b.frames_out.inc(self.frames_out - fo)
            b.bytes_out.inc(self.bytes_out - bo)
        self._flushed = (self.frames_in, self.bytes_in, self.frames_out, self.bytes_out)

    def close(self, code: int, error: str = "") -> float:
        """The session ended with WebSocket close ``code`` and error type ``error``.

        Returns its duration in seconds (for the session's log line).  Closing
        twice counts once.
        """
        seconds = time.monotonic() - self.started
        if self.closed:
            return seconds
        self.closed = True
        self.flush()
        b = self._b
        b.active.dec()
        b.duration.observe(seconds)
        self.families.closed.labels(*b.key, str(code), error).inc()
        self.families.live.discard(self)
        return seconds


GATEWAY: Final = SessionFamilies("gateway")
CONTAINER: Final = SessionFamilies("container")


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    """Who an instance is, for its labels: the platform passes it in the environment."""

    endpoint: str
    variant: str
    instance: str

    ENV_ENDPOINT = "BIDISTREAM_ENDPOINT"
    ENV_VARIANT = "BIDISTREAM_VARIANT"
    ENV_INSTANCE = "BIDISTREAM_INSTANCE"

    @classmethod
    def from_env(cls, default_instance: str = "") -> InstanceIdentity:
        env = os.environ
        return cls(
            env.get(cls.ENV_ENDPOINT, ""),
            env.get(cls.ENV_VARIANT, ""),
            env.get(cls.ENV_INSTANCE, default_instance),
        )

    def environment(self) -> dict[str, str]:
        """The variables that make a launched instance label itself as this one."""
        return {
            self.ENV_ENDPOINT: self.endpoint,
            self.ENV_VARIANT: self.variant,
            self.ENV_INSTANCE: self.instance,
        }

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.endpoint, self.variant, self.instance)


# --------------------------------------------------------------------------- router
ROUTER_DECISIONS: Final = Counter(
    "bidistream_router_decisions_total",
    "Router decisions per candidate: routed, retry_full (instance refused as full), "
    "retry_unreachable, busy (every candidate full), no_healthy_instance, draining_skipped.",
    (*LOCATION, "decision"),
)

ROUTED: Final = "routed"
RETRY_FULL: Final = "retry_full"
RETRY_UNREACHABLE: Final = "retry_unreachable"
BUSY: Final = "busy"
NO_HEALTHY_INSTANCE: Final = "no_healthy_instance"


def router_decision(endpoint: str, variant: str, instance: str, decision: str) -> None:
    ROUTER_DECISIONS.labels(endpoint, variant, instance, decision).inc()


# --------------------------------------------------------------------------- request/response
INVOCATIONS: Final = Counter(
    "bidistream_invocations_total",
    "InvokeEndpoint / InvokeEndpointWithResponseStream requests at the gateway, by HTTP status.",
    (*LOCATION, "operation", "status"),
)
INVOCATION_SECONDS: Final = Histogram(
    "bidistream_invocation_duration_seconds",
    "InvokeEndpoint latency at the gateway, request in to response head out.",
    (*LOCATION, "operation"),
    buckets=LATENCY_BUCKETS,
)
INVOCATIONS_IN_FLIGHT: Final = Gauge(
    "bidistream_invocations_in_flight",
    "InvokeEndpoint calls routed to the variant whose response head has not left yet.",
    ("endpoint", "variant"),
)
CONTAINER_INVOCATIONS: Final = Counter(
    "bidistream_container_invocations_total",
    "POST /invocations requests the model server answered, by HTTP status.",
    (*LOCATION, "status"),
)
CONTAINER_INVOCATION_SECONDS: Final = Histogram(
    "bidistream_container_invocation_duration_seconds",
    "Model server invocation latency.",
    LOCATION,
    buckets=LATENCY_BUCKETS,
)
CONTAINER_REFUSALS: Final = Counter(
    "bidistream_container_refusals_total",
    "Sessions or requests the model server refused before serving: full, loading, draining, failed.",
    (*LOCATION, "reason"),
)


def invocation(
    endpoint: str, variant: str, instance: str, operation: str, status: int, seconds: float
) -> None:
    INVOCATIONS.labels(endpoint, variant, instance, operation, str(status)).inc()
    INVOCATION_SECONDS.labels(endpoint, variant, instance, operation).observe(seconds)


GRPC_CALLS: Final = Counter(
    "bidistream_grpc_calls_total",
    "gRPC calls the gateway relayed or refused, by method and final grpc-status (the instance's "
    "trailers, or the gateway's own; CANCELLED when the client reset). Refused before an instance "
    "took it: empty location and method 'other'.",
    (*LOCATION, "method", "grpc_status"),
)
GRPC_CALL_SECONDS: Final = Histogram(
    "bidistream_grpc_call_duration_seconds",
    "gRPC call duration at the gateway, request headers in to trailers out.",
    (*LOCATION, "method"),
    buckets=LATENCY_BUCKETS,
)


def grpc_call(endpoint: str, variant: str, instance: str, method: str, status: str, seconds: float) -> None:
    GRPC_CALLS.labels(endpoint, variant, instance, method, status).inc()
    GRPC_CALL_SECONDS.labels(endpoint, variant, instance, method).observe(seconds)


# --------------------------------------------------------------------------- control plane
CONTROL_PLANE_CALLS: Final = Counter(
    "bidistream_control_plane_calls_total",
    "Control-plane calls (SageMaker and Application Auto Scaling JSON 1.1), by error type ('' when OK).",
    ("service", "operation", "error"),
)
CONTROL_PLANE_SECONDS: Final = Histogram(
    "bidistream_control_plane_duration_seconds",
    "Control-plane call latency.",
    ("service", "operation"),
    buckets=LATENCY_BUCKETS,
)


def control_plane_call(service: str, operation: str, error: str, seconds: float) -> None:
    CONTROL_PLANE_CALLS.labels(service, operation, error).inc()
    CONTROL_PLANE_SECONDS.labels(service, operation).observe(seconds)


# --------------------------------------------------------------------------- instances
INSTANCE_STATE: Final = Gauge(
    "bidistream_instance_state",
    "1 for the state each instance is in now, 0 for the others it has been in.",
    (*LOCATION, "state"),
)
INSTANCE_RESTARTS: Final = Counter(
    "bidistream_instance_restarts_total",
    "Times the platform restarted an instance after it exited or failed its health check.",
    LOCATION,
)
INSTANCE_DRAINING: Final = Gauge(
    "bidistream_instance_draining",
    "1 while an instance drains (takes no new sessions) before it stops on scale-in.",
    LOCATION,
)


def set_instance_state(endpoint: str, variant: str, instance: str, state: str, states: Iterable[str]) -> None:
    for s in states:
        INSTANCE_STATE.labels(endpoint, variant, instance, s).set(1 if s == state else 0)


def forget_instance(endpoint: str, variant: str, instance: str, states: Iterable[str]) -> None:
    """An instance is gone for good: drop its state children so /metrics does not grow forever."""
    for s in states:
        try:
            INSTANCE_STATE.remove(endpoint, variant, instance, s)
        except KeyError:
            pass
    try:
        INSTANCE_DRAINING.remove(endpoint, variant, instance)
    except KeyError:
        pass


# --------------------------------------------------------------------------- autoscaling
SCALING_ACTIVITIES: Final = Counter(
    "bidistream_autoscaling_activities_total",
    "Scaling activities the autoscaler started, by direction (out, in) and status.",
    ("endpoint", "variant", "direction", "status"),
)
SCALING_METRIC: Final = Gauge(
    "bidistream_autoscaling_metric_value",
    "The tracked metric's value at the last evaluation, per policy.",
    ("endpoint", "variant", "policy", "metric"),
)
DESIRED_INSTANCES: Final = Gauge(
    "bidistream_autoscaling_desired_instances",
    "The variant's desired instance count after the last evaluation.",
    ("endpoint", "variant"),
)

# --------------------------------------------------------------------------- speech
SPEECH_FACE: Final = (*LOCATION, "face")
SPEECH_END_TO_FINAL: Final = Histogram(
    "bidistream_speech_end_of_speech_to_final_seconds",
    "Time from the end of an utterance's speech (VAD) to its final transcript.",
    SPEECH_FACE,
    buckets=LATENCY_BUCKETS,
)
SPEECH_ONSET_TO_INTERIM: Final = Histogram(
    "bidistream_speech_onset_to_first_interim_seconds",
    "Time from an utterance's speech onset to its first interim transcript.",
    SPEECH_FACE,
    buckets=LATENCY_BUCKETS,
)
SPEECH_AUDIO_RECEIVED: Final = Counter(
    "bidistream_speech_audio_received_seconds_total",
    "Seconds of audio received from clients.",
    SPEECH_FACE,
)
SPEECH_AUDIO_DECODED: Final = Counter(
    "bidistream_speech_audio_decoded_seconds_total",
    "Seconds of audio the decoder has processed.",
    SPEECH_FACE,
)
SPEECH_BACKLOG: Final = Gauge(
    "bidistream_speech_backlog_seconds",
    "Per live session: seconds of received audio not yet decoded (how far behind real time).",
    (*SPEECH_FACE, "session"),
)
SPEECH_QUEUE_DEPTH: Final = Gauge(
    "bidistream_speech_decode_queue_depth",
    "Decode jobs waiting for the engine.",
    LOCATION,
)
SPEECH_BATCH_SIZE: Final = Histogram(
    "bidistream_speech_batch_size",
    "Utterances decoded together in one engine call.",
    LOCATION,
    buckets=BATCH_BUCKETS,
)


class SpeechMeter:
    """One speech session's metrics, children bound once (the speech model owns the calls)."""

    __slots__ = ("_backlog", "_decoded", "_end_to_final", "_key", "_onset_to_interim", "_received")

    def __init__(self, identity: InstanceIdentity, face: str, session: str) -> None:
        labels = (*identity.labels, face)
        self._key = (*labels, session)
        self._received = SPEECH_AUDIO_RECEIVED.labels(*labels)
        self._decoded = SPEECH_AUDIO_DECODED.labels(*labels)
        self._end_to_final = SPEECH_END_TO_FINAL.labels(*labels)
        self._onset_to_interim = SPEECH_ONSET_TO_INTERIM.labels(*labels)
        self._backlog = SPEECH_BACKLOG.labels(*self._key)

    def received(self, seconds: float) -> None:
        self._received.inc(seconds)

    def decoded(self, seconds: float) -> None:
        self._decoded.inc(seconds)

    def backlog(self, seconds: float) -> None:
        self._backlog.set(seconds)

    def end_of_speech_to_final(self, seconds: float) -> None:
        self._end_to_final.observe(seconds)

    def onset_to_first_interim(self, seconds: float) -> None:
        self._onset_to_interim.observe(seconds)

    def close(self) -> None:
        """The session ended: its backlog child goes away (the gauge holds live sessions only)."""
        try:
            SPEECH_BACKLOG.remove(*self._key)
        except KeyError:
            pass


def sample_sum(metric: Counter | Gauge, suffix: str = "", **labels: str) -> float:
    """Sum of a family's samples whose labels include ``labels`` (read in-process, e.g. by the scaler)."""
    total = 0.0
    for fam in metric.collect():
        for sample in fam.samples:
            if sample.name.endswith(suffix) and labels.items() <= sample.labels.items():
                total += sample.value
    return total


# --------------------------------------------------------------------------- exposition
def exposition(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The text exposition of every metric (live sessions' frames flushed first)."""
    GATEWAY.flush_live()
    CONTAINER.flush_live()
    return generate_latest(registry), CONTENT_TYPE
