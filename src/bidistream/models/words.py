"""The MLServer seed's text model made full duplex.

Each text frame is split into words that stream back one by one while later
input keeps arriving: a reader task and the writer run concurrently, so a
slow ``delay`` never holds input back beyond the session's bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bidistream.errors import InputValidationError
from bidistream.frames import Frame
from bidistream.model import Model, Request, Response, Session

# Text frames read ahead of the words being written; bounded so a client that
# sends faster than words go out is slowed by backpressure, not by memory.
READ_AHEAD = 8


def split_words(text: str) -> list[str]:
    return text.split()


class WordsModel(Model):
    name = "words"

    def __init__(self, delay: float | str = 0.0) -> None:
        self.delay = float(delay)
        if self.delay < 0:
            raise ValueError("delay must be >= 0 seconds")

    async def invoke(self, request: Request) -> Response:
        return Response.json(split_words(request.text()))

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        pending: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize=READ_AHEAD)

        async def read() -> None:
            try:
                async for frame in frames:
                    await pending.put(frame)
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (frame := await pending.get()) is not None:
                if not frame.is_text:
                    raise InputValidationError("the words model takes text frames only")
                for word in split_words(frame.as_text()):
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    yield Frame.text(word)
            await reader
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
