"""Prometheus families for the V2 faces (REST, SSE, gRPC), by model, on the default registry.

Declared here rather than in ``bidistream.metrics`` so the V2 face does not wait
on it; the names follow the platform's conventions (``bidistream_v2_…_total``,
``_seconds`` histograms) and show on any ``/metrics`` that exposes the default
registry.  ``transport`` is ``rest`` or ``grpc``; ``call`` is ``infer`` or
``infer_stream``.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from prometheus_client import Counter, Histogram

from bidistream.errors import BidistreamError

LABELS: Final = ("model", "transport", "call")
BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

REQUESTS = Counter("bidistream_v2_requests_total", "V2 calls that completed, by model.", LABELS)
RESPONSES = Counter(
    "bidistream_v2_responses_total", "V2 responses sent (one per SSE event / gRPC message).", LABELS
)
ERRORS = Counter("bidistream_v2_errors_total", "V2 calls that failed, by error code.", (*LABELS, "error"))
STREAMS = Counter(
    "bidistream_v2_streams_total", "V2 streaming calls that sent a first response.", ("model", "transport")
)
DURATION = Histogram(
    "bidistream_v2_request_duration_seconds",
    "Time from request to the last response.",
    LABELS,
    buckets=BUCKETS,
)
FIRST_RESPONSE = Histogram(
    "bidistream_v2_time_to_first_response_seconds",
    "Time from a streaming request to its first response.",
    ("model", "transport"),
    buckets=BUCKETS,
)


@functools.cache
def _children(model: str, transport: str, call: str) -> tuple[Any, Any, Any]:
    """The children of one label set, looked up once: ``labels()`` costs more than the increment.

    Bounded: callers pass only names of served models (unknown ones go to
    ``error`` under ``_unknown``).
    """
    return (
        REQUESTS.labels(model, transport, call),
        RESPONSES.labels(model, transport, call),
        DURATION.labels(model, transport, call),
    )


@functools.cache
def _stream_children(model: str, transport: str) -> tuple[Any, Any]:
    return STREAMS.labels(model, transport), FIRST_RESPONSE.labels(model, transport)


def request(model: str, transport: str, call: str, seconds: float, responses: int) -> None:
    requests, responses_sent, duration = _children(model, transport, call)
    requests.inc()
    responses_sent.inc(responses)
    duration.observe(seconds)


def first_response(model: str, transport: str, seconds: float) -> None:
    streams, first = _stream_children(model, transport)
    streams.inc()
    first.observe(seconds)


def error(model: str, transport: str, call: str, exc: BidistreamError) -> None:
    ERRORS.labels(model, transport, call, exc.code).inc()
