"""The grpcio aio floor for ``bench_v2``: a ``ModelStreamInfer`` that does nothing but stream.

Each call reads its requests and answers each with 16 pre-encoded responses
(identity serializers, no model, no conversion, no metrics), on uvloop as
``bidistream serve`` runs.  Its server CPU per request is what grpcio's aio
server costs by itself per streamed request (one send operation and its
completion per message), the part no servicer code can remove.

Run: ``python -m benchmarks.grpc_floor PORT``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import grpc

SERVICE = "inference.GRPCInferenceService"
TOKENS = 16
# ModelInferResponse{model_name: "words", outputs[0].name: "tokN"}: the size of a token response.
RESPONSES = [b"\x0a\x05words\x2a\x06\x0a\x04" + f"tok{i % 10}".encode() for i in range(TOKENS)]


def _identity(data: bytes) -> bytes:
    return data


async def _stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for _ in requests:
        for response in RESPONSES:
            yield response


async def serve(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        _stream, request_deserializer=_identity, response_serializer=_identity
    )
    methods = grpc.method_handlers_generic_handler(SERVICE, {"ModelStreamInfer": handler})
    server.add_generic_rpc_handlers((methods,))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    import uvloop

    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
