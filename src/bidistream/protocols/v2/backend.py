"""What the V2 faces (REST, SSE, gRPC) call: one ``V2Backend`` per served model name.

A native bidistream :class:`~bidistream.model.Model` is adapted by
:class:`NativeBackend`; an MLServer ``MLModel`` by the container's MLServer
adapter.  Both speak the dataclasses of :mod:`bidistream.protocols.v2.codec`,
so every transport handles both the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from bidistream.errors import InputValidationError
from bidistream.frames import Frame
from bidistream.model import Model, Request, Session
from bidistream.protocols.v2.codec import InferRequest, InferResponse
from bidistream.protocols.v2.frames import frame_tensor, frames_tensor, output_name, request_frames

__all__ = ["NativeBackend", "V2Backend", "V2Repository"]

_TEXT_TYPES = ("text/", "application/json")


class V2Backend(Protocol):
    """One model as the V2 protocol sees it."""

    name: str

    def ready(self) -> bool: ...

    def has_version(self, version: str) -> bool: ...

    def metadata(self) -> dict[str, Any]: ...

    async def infer(self, request: InferRequest, headers: Mapping[str, str]) -> InferResponse: ...

    def infer_stream(
        self, requests: AsyncIterator[InferRequest], headers: Mapping[str, str]
    ) -> AsyncIterator[InferResponse]: ...


@runtime_checkable
class V2Repository(Protocol):
    """A Model that serves several V2 models (an MLServer model repository)."""

    def v2_backends(self) -> Sequence[V2Backend]: ...


class NativeBackend:
    """A bidistream Model on V2: ``invoke`` answers ``infer``, ``stream`` answers ``infer_stream``."""

    def __init__(self, model: Model, ready: Callable[[], bool]) -> None:
        self.model = model
        self.name = model.name
        self._ready = ready

    def ready(self) -> bool:
        return self._ready()

    def has_version(self, version: str) -> bool:
        return True  # a native model has one unnamed version; any name reaches it

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [],
            "platform": "bidistream",
            "inputs": [{"name": "input", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "output", "datatype": "BYTES", "shape": [-1, 1]}],
            "parameters": {},
        }

    def _has_invoke(self) -> bool:
        return type(self.model).invoke is not Model.invoke

    async def infer(self, request: InferRequest, headers: Mapping[str, str]) -> InferResponse:
        frames = request_frames(request)
        rid = request.id or uuid.uuid4().hex
        name = output_name(request)
        if self._has_invoke():
            outputs = [await self._invoke_one(frame, headers) for frame in frames]
        else:
            session = Session(id=rid, path=f"v2/models/{self.name}/infer", headers=headers)
            outputs = [out async for out in self.model.stream(_iterate(frames), session)]
        return InferResponse(
            model_name=self.name,
            model_version=request.model_version,
            id=rid,
            outputs=[frames_tensor(outputs, name)],
        )

    async def _invoke_one(self, frame: Frame, headers: Mapping[str, str]) -> Frame:
        ctype = "text/plain; charset=utf-8" if frame.is_text else "application/octet-stream"
        response = await self.model.invoke(
            Request(body=frame.data, content_type=ctype, path="invocations", headers=headers)
        )
        if isinstance(response.body, bytes | bytearray):
            body = bytes(response.body)
        else:
            body = b"".join([chunk async for chunk in response.body])
        if response.status >= 400:
            raise InputValidationError(f"model answered {response.status}: {body[:200]!r}")
        if response.content_type.startswith(_TEXT_TYPES):
            try:
                return Frame.text_from_bytes(body)
            except ValueError:
                return Frame.binary(body)
        return Frame.binary(body)

    def stream_frames(
        self, first: InferRequest, later: AsyncIterator[InferRequest], headers: Mapping[str, str]
    ) -> tuple[str, AsyncIterator[Frame]]:
        """The model's output frames for a stream whose first request is ``first``, and its id.

        The gRPC face encodes these frames itself (one template per stream),
        so the per-token path builds no response objects.
        """
        rid = first.id or uuid.uuid4().hex
        session = Session(id=rid, path=f"v2/models/{self.name}/infer_stream", headers=headers)

        async def frames() -> AsyncIterator[Frame]:
            for frame in request_frames(first):
                yield frame
            async for request in later:
                for frame in request_frames(request):
                    yield frame

        return rid, self.model.stream(frames(), session)

    async def infer_stream(
        self, requests: AsyncIterator[InferRequest], headers: Mapping[str, str]
    ) -> AsyncIterator[InferResponse]:
        first = await anext(requests, None)
        if first is None:
            return
        name = output_name(first)
        rid, outputs = self.stream_frames(first, requests, headers)
        async for out in outputs:
            yield InferResponse(
                model_name=self.name,
                model_version=first.model_version,
                id=rid,
                outputs=[frame_tensor(out, name)],
            )


async def _iterate(frames: list[Frame]) -> AsyncIterator[Frame]:
    for frame in frames:
        yield frame
