"""``inference.GRPCInferenceService`` on the model server's gRPC port (grpcio aio).

MLServer's wire: ``ModelStreamInfer`` answers bare ``ModelInferResponse``s,
the first request picks the model, responses flow while requests still
arrive (full duplex), and a failure aborts the call with MLServer's status
(INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, INTERNAL).  Triton's wire
(``ModelStreamInferResponse`` envelopes, per-response errors,
``triton_final_response``) is served on a port of its own when asked for:
the same RPC name cannot answer both (spec §6).

Message classes come from a client package's generated stubs: MLServer's
when ``mlserver`` is loaded (an MLServer repository is being served, and its
stubs own package ``inference`` in this process's descriptor pool), else
tritonclient's.  Both encode the fields used here identically; handlers are
registered by hand so the two can share this code and Triton's envelope can
stay the bytes :func:`~bidistream.protocols.v2.triton.stream_envelope` writes.

The standard ``grpc.health.v1.Health`` service says SERVING once the model
has loaded; a model's own gRPC faces (``Model.grpc_services()``) share the
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from aiohttp import web

from bidistream.container import v2_metrics as metrics
from bidistream.errors import (
    BidistreamError,
    InputValidationError,
    ModelStreamError,
    SchemaValidationError,
    wire_form,
)
from bidistream.frames import Frame
from bidistream.protocols.v2.backend import NativeBackend
from bidistream.protocols.v2.codec import (
    DATATYPES,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    check_shape,
)
from bidistream.protocols.v2.frames import output_name
from bidistream.protocols.v2.triton import EMPTY_FINAL_PARAMETER, FINAL_RESPONSE_PARAMETER, stream_envelope

if TYPE_CHECKING:
    from bidistream.container.server import ModelServer
    from bidistream.container.v2_http import V2Face

log = logging.getLogger("bidistream.container.v2.grpc")

SERVICE = "inference.GRPCInferenceService"
DEFAULT_GRPC_PORT = 8081
GRPC_PORT_ENV = "SAGEMAKER_GRPC_PORT"
# Seconds in-flight calls get to finish when the server stops.
STOP_GRACE = 5.0

# The InferTensorContents field that carries each datatype (FP16 only travels raw).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP16": "fp32_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
NUMPY_DTYPE: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def resolve_grpc_port(cli_port: int | None) -> int:
    """``--grpc-port``, else ``$SAGEMAKER_GRPC_PORT``, else 8081 (MLServer's default)."""
    if cli_port is not None:
        return cli_port
    env = os.environ.get(GRPC_PORT_ENV)
    if env:
        try:
            return int(env)
        except ValueError:
            raise SystemExit(f"{GRPC_PORT_ENV}={env!r} is not a port number") from None
    return DEFAULT_GRPC_PORT


def messages() -> ModuleType:
    """The generated message module this process can use (see the module docstring)."""
    if "mlserver" in sys.modules:
        from mlserver.grpc import dataplane_pb2

        return dataplane_pb2
    if "tritonclient.grpc.service_pb2" not in sys.modules:
        with contextlib.suppress(ImportError):
            from tritonclient.grpc import service_pb2

            return service_pb2
        try:
            from mlserver.grpc import dataplane_pb2
        except ImportError as exc:
            raise BidistreamError(
                "the V2 gRPC face needs generated stubs: install tritonclient[grpc] or bidistream[mlserver]"
            ) from exc
        return dataplane_pb2
    return sys.modules["tritonclient.grpc.service_pb2"]


# ------------------------------------------------------------------ conversions
def _params_in(mapping: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def _params_out(target: Any, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if key == "headers":
            continue  # MLServer sends response headers as trailing metadata, not parameters
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            slot.int64_param = value
        elif isinstance(value, str):
            slot.string_param = value
        else:
            slot.string_param = json.dumps(value, separators=(",", ":"))


def _from_raw(raw: bytes, datatype: str, name: str) -> list[Any]:
    if datatype == "BYTES":
        items: list[Any] = []
        at = 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise InputValidationError(f"input {name!r}: truncated BYTES length prefix in raw contents")
            (size,) = struct.unpack_from("<I", raw, at)
            at += 4
            if at + size > len(raw):
                raise InputValidationError(f"input {name!r}: BYTES element overruns raw contents")
            items.append(raw[at : at + size])
            at += size
        return items
    dtype = np.dtype(NUMPY_DTYPE[datatype])
    if len(raw) % dtype.itemsize:
        raise InputValidationError(f"input {name!r}: raw contents are not a whole number of {datatype}")
    return np.frombuffer(raw, dtype=dtype).tolist()


def _to_raw(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        parts = []
        for item in tensor.data:
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.asarray(tensor.data, dtype=NUMPY_DTYPE[tensor.datatype]).tobytes()


def request_from_pb(msg: Any) -> InferRequest:
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InputValidationError(f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs")
    inputs: list[Tensor] = []
    for index, t in enumerate(msg.inputs):
        if t.datatype not in DATATYPES:
            raise SchemaValidationError(
                f"inputs.{index}.datatype: {t.datatype!r} is not a V2 datatype ({', '.join(DATATYPES)})"
            )
        data = (
            _from_raw(raw[index], t.datatype, t.name)
            if raw
            else list(getattr(t.contents, CONTENTS_FIELD[t.datatype]))
        )
        tensor = Tensor(t.name, t.datatype, list(t.shape), data, _params_in(t.parameters))
        check_shape(tensor)
        inputs.append(tensor)
    return InferRequest(
        inputs=inputs,
        id=msg.id or None,
        parameters=_params_in(msg.parameters),
        outputs=[RequestedOutput(o.name, _params_in(o.parameters)) for o in msg.outputs],
        model_name=msg.model_name,
        model_version=msg.model_version or None,
    )


def response_to_pb(pb: ModuleType, response: InferResponse, *, use_raw: bool) -> Any:
    out = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version or "", id=response.id or ""
    )
    _params_out(out.parameters, response.parameters)
    for tensor in response.outputs:
        o = out.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        _params_out(o.parameters, tensor.parameters)
        if use_raw:
            out.raw_output_contents.append(_to_raw(tensor))
        elif tensor.datatype == "BYTES":
            o.contents.bytes_contents.extend(
                x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in tensor.data
            )
        else:
            getattr(o.contents, CONTENTS_FIELD[tensor.datatype]).extend(tensor.data)
    return out


# Protobuf tags (field number << 3 | wire type 2) of the fields the frame encoder writes itself.
TAG_OUTPUTS = b"\x2a"  # ModelInferResponse.outputs = 5
TAG_RAW_OUTPUT = b"\x32"  # ModelInferResponse.raw_output_contents = 6
TAG_CONTENTS = b"\x2a"  # InferOutputTensor.contents = 5
TAG_BYTES_CONTENTS = b"\x42"  # InferTensorContents.bytes_contents = 8
# Lengths below this get their varint from a table (tokens are short).
_VARINT_TABLE_SIZE = 4096


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS: tuple[bytes, ...] = tuple(_varint_slow(n) for n in range(_VARINT_TABLE_SIZE))


def varint(n: int) -> bytes:
    """A protobuf base-128 varint (lengths of length-delimited fields)."""
    return _VARINTS[n] if n < _VARINT_TABLE_SIZE else _varint_slow(n)


class _TensorTemplate:
    """The bytes of one kind of output tensor that come before a frame's data, by the data's length.

    Everything after a response's head (model name, version, id) is fixed by
    the output's name, text or binary, raw or not, and the data's length, so
    it is built once per length and shared by every stream.
    """

    __slots__ = ("_before", "_fixed", "_raw")

    def __init__(self, fixed: bytes, *, raw: bool) -> None:
        self._fixed = fixed  # the tensor without contents, as the stubs serialise it
        self._raw = raw
        self._before: dict[int, bytes] = {}

    def before(self, size: int) -> bytes:
        cached = self._before.get(size)
        if cached is not None:
            return cached
        fixed = self._fixed
        if self._raw:
            # The tensor is whole; the frame goes in raw_output_contents after it, as a
            # little-endian uint32 length and its bytes (V2's raw BYTES layout).
            out = (
                TAG_OUTPUTS
                + varint(len(fixed))
                + fixed
                + TAG_RAW_OUTPUT
                + varint(size + 4)
                + struct.pack("<I", size)
            )
        else:
            element = TAG_BYTES_CONTENTS + varint(size)
            contents = TAG_CONTENTS + varint(len(element) + size) + element
            out = TAG_OUTPUTS + varint(len(fixed) + len(contents) + size) + fixed + contents
        if size < _VARINT_TABLE_SIZE:
            self._before[size] = out
        return out


# Templates by (stub module, output name, text, raw); output names come from
# requests, so the table is bounded and a full table builds templates uncached.
_TEMPLATES: dict[tuple[str, str, bool, bool], _TensorTemplate] = {}
_TEMPLATES_MAX = 256


def _template(pb: ModuleType, output: str, *, text: bool, raw: bool) -> _TensorTemplate:
    key = (pb.__name__, output, text, raw)
    template = _TEMPLATES.get(key)
    if template is None:
        holder = pb.ModelInferResponse()
        tensor = holder.outputs.add(name=output, datatype="BYTES", shape=[1, 1])
        if text:
            tensor.parameters["content_type"].string_param = "str"
        template = _TensorTemplate(tensor.SerializeToString(), raw=raw)
        if len(_TEMPLATES) < _TEMPLATES_MAX:
            _TEMPLATES[key] = template
    return template


class FrameEncoder:
    """One stream's ``ModelInferResponse`` bytes for one output frame each, without building messages.

    Every response of a native stream differs only in the frame's bytes: the
    fixed parts (model name, id, the ``[1, 1]`` BYTES tensor and its
    ``content_type`` parameter) are serialised by the stubs, and each frame
    adds its length-delimited field and the lengths of the messages that
    enclose it.  Fields are emitted in field-number order, as the stubs'
    ``SerializeToString`` does, so the bytes are the ones
    :func:`response_to_pb` would give (tests compare them).  Measured: building
    and serialising a message per token cost ~10 µs; this costs ~1 µs.
    """

    __slots__ = ("_binary", "_head", "_text")

    def __init__(
        self,
        pb: ModuleType,
        *,
        model_name: str,
        model_version: str | None,
        rid: str,
        output: str,
        use_raw: bool,
    ) -> None:
        self._head = pb.ModelInferResponse(
            model_name=model_name, model_version=model_version or "", id=rid
        ).SerializeToString()
        self._text = _template(pb, output, text=True, raw=use_raw)
        self._binary = _template(pb, output, text=False, raw=use_raw)

    def encode(self, frame: Frame) -> bytes:
        data = frame.data
        template = self._text if frame.is_text else self._binary
        return self._head + template.before(len(data)) + data


def _status(error: BidistreamError) -> grpc.StatusCode:
    return grpc.StatusCode[wire_form(error).grpc_status]


def _as_error(exc: Exception) -> BidistreamError:
    if isinstance(exc, BidistreamError):
        return exc
    return ModelStreamError(f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------ the service
class InferenceService:
    """One servicer for both wires; ``triton`` selects the stream envelope and its error rules."""

    def __init__(self, face: V2Face, pb: ModuleType, *, triton: bool = False) -> None:
        self.face = face
        self.pb = pb
        self.triton = triton

    def handler(self) -> grpc.GenericRpcHandler:
        pb = self.pb

        def unary(fn: Callable[..., Any], req: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=_serialize
            )

        stream_serializer = _identity if self.triton else _serialize
        methods = {
            "ServerLive": unary(self.ServerLive, pb.ServerLiveRequest),
            "ServerReady": unary(self.ServerReady, pb.ServerReadyRequest),
            "ModelReady": unary(self.ModelReady, pb.ModelReadyRequest),
            "ServerMetadata": unary(self.ServerMetadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(self.ModelMetadata, pb.ModelMetadataRequest),
            "ModelInfer": unary(self.ModelInfer, pb.ModelInferRequest),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.ModelStreamInfer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=stream_serializer,
            ),
        }
        if hasattr(pb, "RepositoryIndexRequest"):
            methods["RepositoryIndex"] = unary(self.RepositoryIndex, pb.RepositoryIndexRequest)
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    async def _abort(self, context: grpc.aio.ServicerContext, error: BidistreamError) -> None:
        await context.abort(_status(error), error.message)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.pb.ServerLiveResponse(live=not self.face.server._draining)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ready = self.face.server_ready() and all(b.ready() for b in self.face.backends.values())
        return self.pb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            backend = self.face.lookup(request.name, request.version or None)
        except BidistreamError as exc:
            await self._abort(context, exc)
            raise
        return self.pb.ModelReadyResponse(ready=self.face.server_ready() and backend.ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from bidistream import __version__
        from bidistream.container.v2_http import SERVER_NAME

        return self.pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            backend = self.face.lookup(request.name, request.version or None)
        except BidistreamError as exc:
            await self._abort(context, exc)
            raise
        meta = backend.metadata()
        tensor = self.pb.ModelMetadataResponse.TensorMetadata

        def tensors(key: str) -> list[Any]:
            return [
                tensor(name=t["name"], datatype=t["datatype"], shape=t.get("shape") or [])
                for t in meta.get(key) or []
            ]

        out = self.pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta.get("versions") or [],
            platform=meta.get("platform") or "",
            inputs=tensors("inputs"),
            outputs=tensors("outputs"),
        )
        if "parameters" in out.DESCRIPTOR.fields_by_name:  # MLServer's has them, Triton's does not
            _params_out(out.parameters, meta.get("parameters") or {})
        return out

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        out = self.pb.RepositoryIndexResponse()
        for backend in self.face.backends.values():
            ready = backend.ready()
            if request.ready and not ready:
                continue
            out.models.add(name=backend.name, state="READY" if ready else "UNAVAILABLE")
        return out

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        name = request.model_name
        began = time.perf_counter()
        try:
            backend = self.face.lookup(name, request.model_version or None)
            self.face.check_ready(backend)
            payload = request_from_pb(request)
            async with asyncio.timeout(self.face.server.limits.invoke_timeout):
                result = await backend.infer(payload, _metadata(context))
        except Exception as exc:
            error = _as_error(exc)
            _log_unexpected(exc, name)
            metrics.error(self.face.label(name), "grpc", "infer", error)
            await self._abort(context, error)
            raise
        metrics.request(name, "grpc", "infer", time.perf_counter() - began, 1)
        return response_to_pb(self.pb, result, use_raw=bool(request.raw_input_contents))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        if self.triton:
            async for envelope in self._triton_stream(request_iterator, context):
                yield envelope
            return
        requests = request_iterator.__aiter__()
        first = await anext(requests, None)
        if first is None:
            return
        name = first.model_name
        began = time.perf_counter()
        count = 0
        try:
            backend = self.face.lookup(name, first.model_version or None)
            self.face.check_ready(backend)
            head = request_from_pb(first)
            use_raw = bool(first.raw_input_contents)
            responses, encode = self._responses(backend, head, requests, context, use_raw)
            try:
                async for item in responses:
                    if count == 0:
                        metrics.first_response(name, "grpc", time.perf_counter() - began)
                    count += 1
                    yield encode(item)
            finally:
                await _aclose(responses)
        except asyncio.CancelledError:
            metrics.error(self.face.label(name), "grpc", "infer_stream", ModelStreamError("client went away"))
            raise
        except Exception as exc:
            error = _as_error(exc)
            _log_unexpected(exc, name)
            metrics.error(self.face.label(name), "grpc", "infer_stream", error)
            await self._abort(context, error)
            raise
        metrics.request(name, "grpc", "infer_stream", time.perf_counter() - began, count)

    def _responses(
        self,
        backend: Any,
        head: InferRequest,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        use_raw: bool,
    ) -> tuple[AsyncIterator[Any], Callable[[Any], Any]]:
        """A stream's responses and what turns each into what the call writes (bytes or a message).

        A native model's frames are encoded straight to bytes; an MLServer
        backend converts its own responses with MLServer's converter; anything
        else goes through the codec's dataclasses.
        """
        headers = _metadata(context)

        async def later() -> AsyncIterator[InferRequest]:
            async for message in requests:
                yield request_from_pb(message)

        if isinstance(backend, NativeBackend):
            rid, frames = backend.stream_frames(head, later(), headers)
            encoder = FrameEncoder(
                self.pb,
                model_name=backend.name,
                model_version=head.model_version,
                rid=rid,
                output=output_name(head),
                use_raw=use_raw,
            )
            return frames, encoder.encode

        async def payloads() -> AsyncIterator[InferRequest]:
            yield head
            async for request in later():
                yield request

        native = getattr(backend, "grpc_responses", None)
        if native is not None:
            return native(payloads(), headers, use_raw=use_raw), _same
        pb = self.pb

        def convert(result: InferResponse) -> Any:
            return response_to_pb(pb, result, use_raw=use_raw)

        return backend.infer_stream(payloads(), headers), convert

    async def _triton_stream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Triton's decoupled rules: each request is answered on its own, its last response
        flagged ``triton_final_response``, and a failed request is one error envelope while the
        call stays open for the next."""
        headers = _metadata(context)
        async for message in request_iterator:
            name = message.model_name
            began = time.perf_counter()
            count = 0
            try:
                backend = self.face.lookup(name, message.model_version or None)
                self.face.check_ready(backend)
                request = request_from_pb(message)
                use_raw = bool(message.raw_input_contents)
                empty_final = bool(request.parameters.get(EMPTY_FINAL_PARAMETER))
                responses = backend.infer_stream(_once(request), headers)
                pending: InferResponse | None = None
                try:
                    async for result in responses:
                        if pending is not None:
                            yield self._envelope(pending, use_raw, final=False)
                        elif count == 0:
                            metrics.first_response(name, "grpc", time.perf_counter() - began)
                        pending = result
                        count += 1
                finally:
                    await _aclose(responses)
                if pending is not None:
                    yield self._envelope(pending, use_raw, final=not empty_final)
                if empty_final or pending is None:
                    final = InferResponse(model_name=name, outputs=[], id=request.id)
                    yield self._envelope(final, use_raw, final=True)
            except asyncio.CancelledError:
                gone = ModelStreamError("client went away")
                metrics.error(self.face.label(name), "grpc", "infer_stream", gone)
                raise
            except Exception as exc:
                error = _as_error(exc)
                _log_unexpected(exc, name)
                metrics.error(self.face.label(name), "grpc", "infer_stream", error)
                yield stream_envelope(None, error.message)
                continue
            metrics.request(name, "grpc", "infer_stream", time.perf_counter() - began, count)

    def _envelope(self, response: InferResponse, use_raw: bool, *, final: bool) -> bytes:
        response.parameters[FINAL_RESPONSE_PARAMETER] = final
        return stream_envelope(response_to_pb(self.pb, response, use_raw=use_raw).SerializeToString())


async def _once(request: InferRequest) -> AsyncIterator[InferRequest]:
    yield request


async def _aclose(responses: AsyncIterator[Any]) -> None:
    closer = getattr(responses, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


def _serialize(message: Any) -> bytes:
    """A stub message's bytes; bytes pass as they are (pre-encoded stream responses)."""
    if type(message) is bytes:
        return message
    return bytes(message.SerializeToString())


def _same(item: Any) -> Any:
    return item


def _identity(data: bytes) -> bytes:
    return data


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key] = value
    return out


def _log_unexpected(exc: Exception, model: str) -> None:
    if not isinstance(exc, BidistreamError):
        log.warning("V2 gRPC call failed", extra={"model": model}, exc_info=exc)


# ------------------------------------------------------------------ lifecycle
class V2GrpcServer:
    """The model server's gRPC port(s): V2, health, the model's own faces; Triton's wire apart."""

    def __init__(self, server: ModelServer, face: V2Face) -> None:
        self.server = server
        self.face = face
        self._servers: list[grpc.aio.Server] = []
        self._health: Any = None
        self._watch: asyncio.Task[None] | None = None

    def _options(self) -> list[tuple[str, int]]:
        size = self.server.limits.max_message_size
        # A model's own gRPC face may need a larger receive limit (Riva's long Recognize
        # calls carry whole files): it says so in ``server_options``.
        for service in self.server.model.grpc_services():
            for key, value in getattr(service, "server_options", ()):
                if key == "grpc.max_receive_message_length":
                    size = max(size, int(value))
        # grpc turns SO_REUSEPORT on by default, which would let two servers share 8081
        # silently; only ``serve --workers N`` shares a port on purpose.
        reuse = 1 if self.server.reuse_port else 0
        return [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", reuse),
        ]

    async def start(self) -> None:
        optional = bool(getattr(self.server, "grpc_port_optional", False))
        try:
            await self._start()
        except (OSError, ImportError, BidistreamError) as exc:
            if not optional:
                raise
            # Nobody asked for this port: serve HTTP alone rather than not at all.
            log.warning("V2 gRPC not served: %s (pass --grpc-port to choose a port)", exc)
            await self.stop()
            self.server.grpc_port = None
            self.server.triton_grpc_port = None

    async def _start(self) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        pb = messages()
        host = self.server.host
        main = grpc.aio.server(options=self._options())
        main.add_generic_rpc_handlers((InferenceService(self.face, pb).handler(),))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, main)
        for service in self.server.model.grpc_services():
            service.add_to_server(main)
        requested = self.server.grpc_port
        assert requested is not None
        bound = _bind(main, host, requested, "gRPC")
        await main.start()
        self._servers.append(main)
        self.server.grpc_port = bound
        triton_port = getattr(self.server, "triton_grpc_port", None)
        if triton_port is not None:
            triton = grpc.aio.server(options=self._options())
            triton.add_generic_rpc_handlers((InferenceService(self.face, pb, triton=True).handler(),))
            tbound = _bind(triton, host, triton_port, "Triton gRPC")
            await triton.start()
            self._servers.append(triton)
            self.server.triton_grpc_port = tbound
        for svc in ("", SERVICE):
            await self._health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._watch = asyncio.create_task(self._serving_when_loaded(health_pb2), name="v2-grpc-health")

    async def _serving_when_loaded(self, health_pb2: Any) -> None:
        with contextlib.suppress(BidistreamError):
            await self.server.wait_loaded()
            for svc in ("", SERVICE):
                await self._health.set(svc, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await asyncio.gather(*(s.stop(STOP_GRACE) for s in self._servers))
        self._servers.clear()


def _bind(server: grpc.aio.Server, host: str, port: int, what: str) -> int:
    """Bind or raise OSError (grpcio raises RuntimeError for a busy port, or returns 0)."""
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot listen for {what} on {host}:{port} (in use?)") from exc
    if bound == 0:
        raise OSError(f"cannot listen for {what} on {host}:{port}")
    return bound


def attach(app: web.Application, server: ModelServer, face: V2Face) -> None:
    grpc_server = V2GrpcServer(server, face)

    async def on_startup(_app: web.Application) -> None:
        await grpc_server.start()

    async def on_cleanup(_app: web.Application) -> None:
        await grpc_server.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
