"""The seed's echo container: every input frame comes back unchanged, same kind, at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bidistream.frames import Frame
from bidistream.model import Model, Request, Response, Session


class EchoModel(Model):
    name = "echo"

    async def invoke(self, request: Request) -> Response:
        return Response(request.body, request.content_type or "application/octet-stream")

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        async for frame in frames:
            yield frame
