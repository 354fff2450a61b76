"""InvokeEndpoint and InvokeEndpointWithResponseStream (boto3 ``sagemaker-runtime``).

Both are plain request/response calls relayed to the instance's
``POST /invocations`` with aiohttp's client (already a dependency of the model
server, pooled connections).  The response-stream variant relays the
instance's body as it streams, one ``PayloadPart`` event per chunk read, and
ends with ``ModelStreamError`` if the body breaks off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp

from bidistream.contract import check_name
from bidistream.errors import (
    BidistreamError,
    InstanceFullError,
    ModelError,
    ModelTimeoutError,
    ServiceUnavailableError,
)
from bidistream.eventstream import encode_model_stream_error, encode_payload_part
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
    for instance in router.candidates(endpoint, variant):
        try:
            resp = await http.post(
                f"{instance.base_url}/invocations",
                data=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout),
            )
        except (aiohttp.ClientError, OSError) as exc:
            last = ServiceUnavailableError(
                f"instance {instance.instance_id} of endpoint {endpoint} is unreachable "
                f"({type(exc).__name__})"
            )
            continue
        if resp.status in (503, 429):
            resp.release()
            last = InstanceFullError(f"instance {instance.instance_id} is busy or not ready ({resp.status})")
            continue
        return instance, resp
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
    request_id = new_request_id()
    try:
        check_name(endpoint, "EndpointName")
        variant = headers.get("x-amzn-sagemaker-target-variant")
        out: dict[str, str] = {k: headers[k] for k in _PASS if k in headers}
        if stream and "x-amzn-sagemaker-accept" in headers:
            out["accept"] = headers["x-amzn-sagemaker-accept"]
        out["x-amzn-sagemaker-request-id"] = request_id
        async with asyncio.timeout(limits.invoke_timeout):
            instance, resp = await _post(http, router, endpoint, variant, out, body, limits)
            if resp.status >= 300:
                text = (await resp.read()).decode("utf-8", "replace")
                resp.release()
                raise ModelError(
                    f'Received client error ({resp.status}) from primary with message "{text[:1024]}". '
                    "See the model server's log for details.",
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
