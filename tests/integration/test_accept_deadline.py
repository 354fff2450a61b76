"""ServerLimits.accept_deadline is enforced: the model server accepts within it or refuses (503).

A model doing work inside ``check_session`` (what contract C3 forbids) is the only thing
that can spend the deadline; the refusal is a 503 with a message saying so, so the gateway's
router tries another instance, and a session that needs no work is still accepted.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from bidistream.frames import Frame
from bidistream.model import Model, Session
from tests.conftest import running_server


class SlowCheckModel(Model):
    """Works for ``?work=<ms>`` inside the handshake, then echoes."""

    name = "slowcheck"

    def check_session(self, session: Session) -> None:
        work = session.param("work")
        if work is not None:
            time.sleep(int(work) / 1000)  # blocking on purpose: the bug the deadline catches

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        async for frame in frames:
            yield frame


def url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/invocations-bidirectional-stream{query}"


async def test_a_handshake_past_the_deadline_is_refused_with_503() -> None:
    async with running_server(SlowCheckModel(), accept_deadline=0.05) as server:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(url(server.port, "?work=200")):
                pass
        response = info.value.response
        assert response.status_code == 503
        assert "accept deadline" in json.loads(response.body or b"{}")["message"]
        assert server.live_sessions == 0
        async with websockets.connect(url(server.port)) as ws:  # no work: accepted as before
            await ws.send("hi")
            assert await ws.recv() == "hi"


async def test_work_within_the_deadline_is_accepted() -> None:
    async with running_server(SlowCheckModel(), accept_deadline=5.0) as server:
        async with websockets.connect(url(server.port, "?work=20")) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
