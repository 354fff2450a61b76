"""An async session API over the official ``aws-sdk-sagemaker-runtime-http2`` client.

::

    from bidistream.client import Client

    async with Client(endpoint_url="https://127.0.0.1:8443", ca_file=".../ca.pem") as client:
        async with client.session("echo", path="v1/listen", query="model=nova-3") as s:
            await s.send("hello")          # str → UTF8 part, bytes → BINARY part
            async for frame in s:          # bidistream.frames.Frame, as they arrive
                print(frame.as_text())
                break

It keeps the official client (and its awscrt HTTP/2 transport) underneath, so
what works here works with SageMaker, and hides its sharp edges (wire spec,
section 8): ``close()`` that can hang forever is bounded by a timeout, errors
come from ``await_output()`` *or* ``receive()`` and are translated to
:mod:`bidistream.errors`, and the mandatory ``AWSCRTHTTPClient`` transport is
always passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, NoReturn

from bidistream.errors import (
    AuthError,
    BidistreamError,
    InputValidationError,
    InternalError,
    ModelError,
    ModelStreamError,
    ServiceUnavailableError,
    UnauthenticatedError,
    error_for_code,
    wire_form,
)
from bidistream.frames import Frame, FrameKind

__all__ = ["Client", "ClientSession", "translate_error"]

ENDPOINT_ENV = "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME_HTTP2"

# An unmodeled error names its HTTP status in the message ("... - status: 403 - id: ...").
_STATUS = re.compile(r"- status: (\d{3})\b")
_UNMODELED_STATUS: dict[int, type[BidistreamError]] = {401: UnauthenticatedError, 403: AuthError}


def _specific(base: type[BidistreamError], code: str | None, said_as: str) -> type[BidistreamError]:
    """The class our server meant by ``ErrorCode``, if the error table says it the way it arrived
    (``said_as``: the modeled error type or in-stream event); else ``base``."""
    cls = error_for_code(code)
    if cls is None:
        return base
    form = wire_form(cls)
    return cls if said_as in (form.amzn_error_type, form.stream_event) else base


def translate_error(exc: BaseException) -> BidistreamError | None:
    """The official client's exception as the most specific error of ours; None if it is not one.

    The modeled exceptions carry our ``ErrorCode`` (``NotFound``, ``InstanceFull``…), so the
    class is the one the server raised, as long as it is a kind of the modeled one.  An
    unmodeled answer (a ``CallError``) is translated only for the statuses that have a
    meaning of their own (401, 403).  Anything else — a bug, a cancelled task, a transport
    failure we do not recognise — is not ours to rename: the caller re-raises it.
    """
    from aws_sdk_sagemaker_runtime_http2 import models as m
    from smithy_core.exceptions import CallError, SmithyError

    if isinstance(exc, BidistreamError):
        return exc
    msg = str(getattr(exc, "message", None) or exc)
    code = getattr(exc, "error_code", None)
    if isinstance(exc, m.ModelError):
        cls = _specific(ModelError, code, "ModelError")
        if issubclass(cls, ModelError):
            return cls(
                msg,
                code=code,
                original_status=exc.original_status_code,
                original_message=exc.original_message,
            )
        return cls(msg, code=code)
    if isinstance(exc, m.ModelStreamError):
        if code is not None and code.isdigit():  # a container's close code, relayed by the gateway
            return ModelStreamError(msg, code=code, close_code=int(code))
        return _specific(ModelStreamError, code, "ModelStreamError")(msg, code=code)
    if isinstance(exc, m.InputValidationError):
        # Our server says NotFound, Conflict, MessageTooLarge... under the modeled 400 name.
        return _specific(InputValidationError, code, "InputValidationError")(msg, code=code)
    if isinstance(exc, m.ServiceUnavailableError):
        return _specific(ServiceUnavailableError, code, "ServiceUnavailableError")(msg, code=code)
    if isinstance(exc, m.InternalStreamFailure | m.InternalServerError):
        return InternalError(msg)
    if isinstance(exc, CallError):
        found = _STATUS.search(msg)
        status_cls = _UNMODELED_STATUS.get(int(found.group(1))) if found else None
        if status_cls is not None:
            return status_cls(msg)
        return None
    if isinstance(exc, TimeoutError):
        return ServiceUnavailableError(f"no answer from the endpoint in time: {exc}")
    if isinstance(exc, SmithyError) and _UNREACHABLE.search(msg):
        # awscrt's socket and TLS failures: nothing (or the wrong thing) answers at the URL.
        return ServiceUnavailableError(f"cannot reach the gateway: {msg}")
    return None


_UNREACHABLE = re.compile(r"AWS_IO_SOCKET_|AWS_IO_DNS_|AWS_IO_TLS_|CONNECTION_REFUSED")


def _raise_translated(exc: BaseException) -> NoReturn:
    err = translate_error(exc)
    if err is None or err is exc:
        raise exc
    raise err from exc


def _crt_transport(ca_file: str | None) -> Any:
    """The awscrt transport, trusting ``ca_file`` when given (and only for this client).

    smithy-http's ``AWSCRTHTTPClient`` builds its TLS context from default options and
    offers no setting for a trust store, so the context is replaced here, once; setting
    ``SSL_CERT_FILE`` instead would change every TLS client of the process.
    """
    from awscrt import io as crt_io
    from smithy_http.aio.crt import AWSCRTHTTPClient

    transport = AWSCRTHTTPClient()
    if ca_file:
        if not hasattr(transport, "_tls_ctx"):
            raise InternalError("this smithy-http version has no TLS context to give the CA to")
        options = crt_io.TlsContextOptions()
        options.override_default_trust_store_from_path(ca_filepath=ca_file)
        transport._tls_ctx = crt_io.ClientTlsContext(options)
    return transport


class Client:
    """One official client (one pooled HTTP/2 connection) for many sessions."""

    def __init__(
        self,
        endpoint_url: str | None = None,
        *,
        region: str | None = None,
        ca_file: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or "https://127.0.0.1:8443"
        self.region = (
            region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        )
        self.timeout = timeout
        self.ca_file = ca_file
        self._access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID") or "bidistream"
        self._secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY") or "bidistream"
        self._client: Any = None

    async def _official(self) -> Any:
        if self._client is None:
            from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
            from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
            from smithy_aws_core.identity.components import AWSCredentialsIdentity
            from smithy_aws_core.identity.static import StaticCredentialsResolver

            config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
                endpoint_uri=self.endpoint_url,
                region=self.region,
                aws_credentials_identity_resolver=StaticCredentialsResolver(
                    AWSCredentialsIdentity(
                        access_key_id=self._access_key,
                        secret_access_key=self._secret_key,
                        session_token=os.environ.get("AWS_SESSION_TOKEN"),
                    )
                ),
                transport=_crt_transport(self.ca_file),
            )
            self._client = AsyncSageMakerRuntimeHTTP2Client(config=config)
        return self._client

    def session(
        self,
        endpoint: str,
        *,
        path: str | None = None,
        query: str | None = None,
        variant: str | None = None,
    ) -> ClientSession:
        return ClientSession(self, endpoint, path=path, query=query, variant=variant)

    async def close(self) -> None:
        client, self._client = self._client, None
        closer = getattr(client, "close", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closer(), self.timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class ClientSession:
    """One bidirectional session; ``send`` while iterating the responses."""

    def __init__(
        self, client: Client, endpoint: str, *, path: str | None, query: str | None, variant: str | None
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.path = path
        self.query = query
        self.variant = variant
        self.invoked_variant: str | None = None
        self._stream: Any = None
        self._receiver: Any = None
        self._input_closed = False

    async def open(self) -> ClientSession:
        from aws_sdk_sagemaker_runtime_http2.models import InvokeEndpointWithBidirectionalStreamInput

        official = await self.client._official()
        kw: dict[str, Any] = {"endpoint_name": self.endpoint}
        if self.path:
            kw["model_invocation_path"] = self.path
        if self.query:
            kw["model_query_string"] = self.query
        if self.variant:
            kw["target_variant"] = self.variant
        t = self.client.timeout
        try:
            self._stream = await asyncio.wait_for(
                official.invoke_endpoint_with_bidirectional_stream(
                    InvokeEndpointWithBidirectionalStreamInput(**kw)
                ),
                t,
            )
            # Errors before streaming surface here, and only here (not from send/close).
            output, self._receiver = await asyncio.wait_for(self._stream.await_output(), t)
        except Exception as exc:
            _raise_translated(exc)
        self.invoked_variant = output.invoked_production_variant
        return self

    async def send(self, data: str | bytes, *, complete: bool = True) -> None:
        from aws_sdk_sagemaker_runtime_http2.models import RequestPayloadPart, RequestStreamEventPayloadPart

        if isinstance(data, str):
            part = RequestPayloadPart(bytes_=data.encode("utf-8"), data_type="UTF8")
        else:
            part = RequestPayloadPart(bytes_=bytes(data), data_type="BINARY")
        if not complete:
            part.completion_state = "PARTIAL"
        try:
            await asyncio.wait_for(
                self._stream.input_stream.send(RequestStreamEventPayloadPart(value=part)), self.client.timeout
            )
        except Exception as exc:
            _raise_translated(exc)

    async def close_input(self) -> None:
        """End the input; responses still arrive until the model closes."""
        if self._input_closed or self._stream is None:
            return
        self._input_closed = True
        # The official close() can hang when the server already ended the stream.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stream.input_stream.close(), self.client.timeout)

    async def receive(self) -> Frame | None:
        """The next frame, or None once the model has closed the session."""
        from aws_sdk_sagemaker_runtime_http2.models import ResponseStreamEventPayloadPart

        while True:
            try:
                ev = await self._receiver.receive()
            except Exception as exc:
                _raise_translated(exc)
            if ev is None:
                return None
            if isinstance(ev, ResponseStreamEventPayloadPart):
                v = ev.value
                kind = FrameKind.TEXT if v.data_type == "UTF8" else FrameKind.BINARY
                return Frame(v.bytes_ or b"", kind, v.completion_state != "PARTIAL")

    async def __aiter__(self) -> AsyncIterator[Frame]:
        while (frame := await self.receive()) is not None:
            yield frame

    async def __aenter__(self) -> ClientSession:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close_input()
