"""InvokeEndpoint and InvokeEndpointWithResponseStream (boto3 ``sagemaker-runtime``).

Both are plain request/response calls relayed to the instance's
``POST /invocations`` with aiohttp's client (already a dependency of the model
server, pooled connections).  The response-stream variant relays the
instance's body as it streams, one ``PayloadPart`` event per chunk read, and
ends with ``ModelStreamError`` if the body breaks off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping

import aiohttp

from bidistream import metrics
from bidistream.contract import check_name
from bidistream.errors import (
    BidistreamError,
    InstanceFullError,
    ModelError,
    ModelTimeoutError,
    ServiceUnavailableError,
)
from bidistream.eventstream import encode_model_stream_error, encode_payload_part
from bidistream.gateway.bridge import at_capacity
from bidistream.gateway.http import Api, HttpResponse, error_response, new_request_id
from bidistream.gateway.limits import GatewayLimits
from bidistream.routing import RoutableInstance, Router

__all__ = ["invoke_endpoint"]

log = logging.getLogger("bidistream.gateway.runtime")

# Request headers of the API passed to the container as they are.
_PASS = (
    "content-type",
    "accept",
    "x-amzn-sagemaker-custom-attributes",
    "x-amzn-sagemaker-target-model",
    "x-amzn-sagemaker-target-variant",
    "x-amzn-sagemaker-target-container-hostname",
    "x-amzn-sagemaker-inference-id",
    "x-amzn-sagemaker-enable-explanations",
    "x-amzn-sagemaker-inference-component",
    "x-amzn-sagemaker-session-id",
)
# Response headers of the container the API carries back.
_BACK = (
    "x-amzn-sagemaker-custom-attributes",
    "x-amzn-sagemaker-new-session-id",
    "x-amzn-sagemaker-closed-session-id",
)


async def _post(
    http: aiohttp.ClientSession,
    router: Router,
    endpoint: str,
    variant: str | None,
    headers: Mapping[str, str],
    body: bytes,
    limits: GatewayLimits,
) -> tuple[RoutableInstance, aiohttp.ClientResponse]:
    last: BidistreamError = ServiceUnavailableError(f"endpoint {endpoint} has no instance to take the call")
    try:
        candidates = router.candidates(endpoint, variant)
    except ServiceUnavailableError:
        metrics.router_decision(endpoint, variant or "", "", metrics.NO_HEALTHY_INSTANCE)
        raise
    full = 0
    for instance in candidates:
        where = (endpoint, instance.variant, instance.instance_id)
        try:
            resp = await http.post(
                f"{instance.base_url}/invocations",
                data=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout),
            )
        except (aiohttp.ClientError, OSError) as exc:
            metrics.router_decision(*where, metrics.RETRY_UNREACHABLE)
            last = ServiceUnavailableError(
                f"instance {instance.instance_id} of endpoint {endpoint} is unreachable "
                f"({type(exc).__name__})"
            )
            continue
        if resp.status in (503, 429):
            resp.release()
            full += 1
            metrics.router_decision(*where, metrics.RETRY_FULL)
            last = InstanceFullError(f"instance {instance.instance_id} is busy or not ready ({resp.status})")
            continue
        metrics.router_decision(*where, metrics.ROUTED)
        return instance, resp
    if candidates and full == len(candidates):
        metrics.router_decision(endpoint, variant or "", "", metrics.BUSY)
        raise InstanceFullError(at_capacity(endpoint, candidates))
    raise last


async def invoke_endpoint(
    http: aiohttp.ClientSession,
    router: Router,
    limits: GatewayLimits,
    endpoint: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    stream: bool,
) -> HttpResponse:
    """One count, one latency sample and one log line per call, whatever the outcome."""
    began = time.monotonic()
    request_id = new_request_id()
    where: list[RoutableInstance] = []
    try:
        resp = await _invoke(http, router, limits, endpoint, headers, body, stream, request_id, where)
    finally:
        if where:
            metrics.INVOCATIONS_IN_FLIGHT.labels(endpoint, where[0].variant).dec()
    seconds = time.monotonic() - began
    operation = "InvokeEndpointWithResponseStream" if stream else "InvokeEndpoint"
    target = where[0] if where else None
    variant = target.variant if target else headers.get("x-amzn-sagemaker-target-variant", "")
    instance = target.instance_id if target else ""
    metrics.invocation(endpoint, variant, instance, operation, resp.status, seconds)
    error = next((v for k, v in resp.headers if k == "x-amzn-errortype"), "")
    log.info(
        "invocation",
        extra={
            "request": request_id,
            "operation": operation,
            "endpoint": endpoint,
            "variant": variant,
            "instance": instance,
            "status": resp.status,
            "seconds": round(seconds, 4),
            "bytes_in": len(body),
            "error": error,
            "reason": _reason(resp) if error else "",
        },
    )
    return resp


def _reason(resp: HttpResponse) -> str:
    if not isinstance(resp.body, bytes):
        return ""
    try:
        return str(json.loads(resp.body).get("Message", ""))[:512]
    except (ValueError, AttributeError):
        return ""


def log_hint(target: RoutableInstance) -> str:
    """Where a 424's reader finds the instance's log (the platform knows its file)."""
    if target.log_path:
        return (
            f"See the instance's log: {target.log_path} "
            f"(bidistream logs {target.endpoint} --instance {target.instance_id})."
        )
    return f"See the log of the model server at {target.base_url} (instance {target.instance_id})."


async def _invoke(
    http: aiohttp.ClientSession,
    router: Router,
    limits: GatewayLimits,
    endpoint: str,
    headers: Mapping[str, str],
    body: bytes,
    stream: bool,
    request_id: str,
    where: list[RoutableInstance],
) -> HttpResponse:
    try:
        check_name(endpoint, "EndpointName")
        variant = headers.get("x-amzn-sagemaker-target-variant")
        out: dict[str, str] = {k: headers[k] for k in _PASS if k in headers}
        if stream and "x-amzn-sagemaker-accept" in headers:
            out["accept"] = headers["x-amzn-sagemaker-accept"]
        out["x-amzn-sagemaker-request-id"] = request_id
        async with asyncio.timeout(limits.invoke_timeout):
            instance, resp = await _post(http, router, endpoint, variant, out, body, limits)
            where.append(instance)
            metrics.INVOCATIONS_IN_FLIGHT.labels(endpoint, instance.variant).inc()
            if resp.status >= 300:
                text = (await resp.read()).decode("utf-8", "replace")
                resp.release()
                raise ModelError(
                    f'Received client error ({resp.status}) from primary with message "{text[:1024]}". '
                    f"{log_hint(instance)} Request id {request_id}.",
                    original_status=resp.status,
                    original_message=text[:4096],
                )
            back = [(k, resp.headers[k]) for k in _BACK if k in resp.headers]
            base = [
                ("x-amzn-requestid", request_id),
                ("x-amzn-invoked-production-variant", instance.variant),
                *back,
            ]
            ctype = resp.headers.get("content-type", "application/octet-stream")
            if not stream:
                data = await resp.read()
                resp.release()
                return HttpResponse(
                    200, [*base, ("content-type", ctype), ("content-length", str(len(data)))], data
                )
    except TimeoutError:
        return error_response(
            ModelTimeoutError(f"the model did not answer within {limits.invoke_timeout:g} s"),
            Api.RUNTIME,
            request_id,
        )
    except BidistreamError as exc:
        return error_response(exc, Api.RUNTIME, request_id)
    return HttpResponse(
        200,
        [
            *base,
            ("content-type", "application/vnd.amazon.eventstream"),
            ("x-amzn-sagemaker-content-type", ctype),
        ],
        _relay_events(resp),
    )


async def _relay_events(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_any():
            if chunk:
                yield encode_payload_part(chunk)
    except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
        log.info("streamed invocation broke off: %s", exc)
        yield encode_model_stream_error(
            f"the model's response stream broke off: {type(exc).__name__}", "StreamBroken"
        )
    finally:
        resp.release()
