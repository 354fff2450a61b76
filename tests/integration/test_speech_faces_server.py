"""Which face answers ``POST /invocations`` on the speech model, and its health paths."""

from __future__ import annotations

import aiohttp
import pytest

from bidistream.models.speech.model import SpeechModel
from tests.conftest import running_server
from tests.speech_audio import synth


@pytest.mark.parametrize(
    ("kwargs", "env", "shape"),
    [
        ({}, None, "nim"),
        ({"invocations": "deepgram"}, None, "deepgram"),
        ({}, "deepgram", "deepgram"),  # CreateModel's Environment
    ],
)
async def test_invocations_face_is_nim_unless_set_to_deepgram(
    kwargs: dict[str, str], env: str | None, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env:
        monkeypatch.setenv("BIDISTREAM_SPEECH_INVOCATIONS", env)
    body = synth("hello there").read_bytes()
    async with (
        running_server(SpeechModel(profile="light", **kwargs)) as server,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{server.port}"
        async with http.post(f"{base}/invocations", data=body, headers={"Content-Type": "audio/wav"}) as r:
            assert r.status == 200
            doc = await r.json()
        assert ("results" in doc and "metadata" in doc) is (shape == "deepgram")
        assert ("text" in doc) is (shape == "nim")
        # Deepgram's pre-recorded API stays on /v1/listen either way
        async with http.post(f"{base}/v1/listen", data=body, headers={"Content-Type": "audio/wav"}) as r:
            assert r.status == 200 and "results" in await r.json()
        for path in ("v1/health/live", "v1/health/ready", "ping"):
            async with http.get(f"{base}/{path}") as r:
                assert r.status == 200, path


def test_unknown_invocations_face_is_refused() -> None:
    with pytest.raises(ValueError, match="invocations must be one of"):
        SpeechModel(invocations="openai")
