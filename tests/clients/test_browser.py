"""The demo page in a real headless Chromium against a real gateway and real model servers.

The page is loaded from the gateway (``GET /`` → ``/web/``) and talks to the
WebSocket front door exactly as a user's browser does.  The browser trusts the
gateway's certificate by its public key (``--ignore-certificate-errors-spki-list``),
not by ignoring certificate errors, so a wrong certificate still fails.

Chromium is Debian's (``scripts/sysdeps.sh`` installs it); if it is missing
these tests fail, on purpose: a skipped browser test hides a broken page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import ssl
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.async_api import BrowserContext, ConsoleMessage, Page, async_playwright, expect

from bidistream.gateway.server import Gateway
from bidistream.models.echo import EchoModel
from bidistream.models.words import WordsModel
from tests.clients.platform_stack import create_endpoint, platform_stack, sync
from tests.speech_audio import speech_server, synth
from tests.support.aws import gateway_stack
from tests.support.waiting import scaled

T_MS = int(scaled(15_000))  # per browser step, in ms
SENTENCE = "i would like to cancel my subscription"

# What a closed network needs: no background fetches whose refusals slow or break
# start-up, no QUIC, no sandbox (tests may run as root in a container).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.timeout(60)


def chromium() -> str:
    path = os.environ.get("BIDISTREAM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(f"Chromium not found at {path}: run `make sysdeps` (scripts/sysdeps.sh installs it)")
    return path


def spki_hash(cert_pem: Path) -> str:
    """Base64 SHA-256 of the certificate's SubjectPublicKeyInfo: Chromium's pin format."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class PageProblems:
    """Uncaught exceptions and console errors: a page that throws must fail its test."""

    def __init__(self, page: Page) -> None:
        self.items: list[str] = []
        page.on("pageerror", lambda exc: self.items.append(f"uncaught: {exc}"))
        page.on("console", self._console)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        # A gateway built without a control plane (these tests' static stacks) answers the page's
        # ListEndpoints with 400; Chromium logs every failed fetch. The page's own handling of that
        # is asserted (#endpoints-status), so only that one resource is let through.
        if "status of 400" in msg.text and msg.location.get("url", "").endswith("/"):
            return
        self.items.append(f"console: {msg.text}")


@asynccontextmanager
async def open_page(
    gw: Gateway, profile: Path, extra_flags: tuple[str, ...] = ()
) -> AsyncIterator[tuple[Page, PageProblems]]:
    """A fresh Chromium profile, the page loaded from ``GET /`` and wired."""
    async with async_playwright() as pw:
        context: BrowserContext = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium(),
            headless=True,
            args=[
                *CHROMIUM_FLAGS,
                f"--ignore-certificate-errors-spki-list={spki_hash(gw.tls.cert)}",
                *extra_flags,
            ],
            timeout=T_MS,
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(T_MS)
            # The page's CSP forbids eval, so waits use locators (which need none).
            expect.set_options(timeout=T_MS)
            problems = PageProblems(page)
            response = await page.goto(gw.url + "/")
            assert response is not None and response.status == 200
            assert page.url == gw.url + "/web/", "GET / must redirect to the page"
            await page.wait_for_selector("body[data-ready=true]")
            yield page, problems
        finally:
            await context.close()


async def log_lines(page: Page, direction: str) -> list[str]:
    """Each entry's arrow, kind and content, without its timestamp and latency."""
    rows = page.locator(f"#log li[data-dir={direction}]")
    parts = [await rows.locator(f".{cls}").all_inner_texts() for cls in ("dir", "kind", "content")]
    return ["".join(items) for items in zip(*parts, strict=True)]


async def connect(page: Page, endpoint: str, path: str = "", query: str = "") -> None:
    await page.fill("#endpoint", endpoint)
    await page.fill("#path", path)
    await page.fill("#query", query)
    await page.click("#connect")


async def send(page: Page, text: str) -> None:
    await page.fill("#message", text)
    await page.press("#message", "Enter")


@pytest.fixture
async def text_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with gateway_stack(tmp_path / "gw", {"echo": EchoModel(), "words": WordsModel()}) as stack:
        yield stack.gateway


async def test_text_round_trip_through_echo_and_words(text_gateway: Gateway, tmp_path: Path) -> None:
    async with open_page(text_gateway, tmp_path / "profile") as (page, problems):
        await connect(page, "echo")
        await page.wait_for_selector("#status[data-state=open]")
        await send(page, "hello from the browser")
        await send(page, "ünïcode ✓ survives")
        await expect(page.locator("#log li[data-dir=in]")).to_have_count(2)
        assert [line.split(" ", 1)[1] for line in await log_lines(page, "in")] == [
            "text hello from the browser",
            "text ünïcode ✓ survives",
        ]
        assert len(await log_lines(page, "out")) == 2
        await page.click("#disconnect")
        await page.wait_for_selector("#status[data-state=closed]")

        # Same page, another endpoint: words streams each word back as its own frame.
        await page.click("#clear-log")
        await connect(page, "words")
        await page.wait_for_selector("#status[data-state=open]")
        await send(page, "one two three four")
        await expect(page.locator("#log li[data-dir=in]")).to_have_count(4)
        words = [line.rsplit(" ", 1)[1] for line in await log_lines(page, "in")]
        assert words == ["one", "two", "three", "four"]
        await page.click("#disconnect")
        await page.wait_for_selector("#status[data-state=closed]")
        assert await page.is_hidden("#error")
    assert problems.items == []


async def test_page_says_when_no_control_plane_lists_endpoints(text_gateway: Gateway, tmp_path: Path) -> None:
    async with open_page(text_gateway, tmp_path / "profile") as (page, problems):
        await page.wait_for_selector("#endpoints-status[data-state=error]")
        assert "type a name below" in await page.inner_text("#endpoints-status")
        assert await page.is_enabled("#connect"), "the free-text field still works"
    assert problems.items == []


async def test_page_lists_endpoints_from_the_control_plane(tmp_path: Path) -> None:
    async with platform_stack(tmp_path / "data") as stack:
        await sync(create_endpoint, stack.boto(), "echo", "bidistream/echo")
        async with open_page(stack.gateway, tmp_path / "profile") as (page, problems):
            await expect(page.locator("#endpoints li[data-endpoint=echo] .state")).to_have_text("InService")
            assert await page.inner_text("#endpoints-status") == "1 endpoint"
            options = await page.locator("#endpoint-list option").evaluate_all("els => els.map(e => e.value)")
            assert options == ["echo"]
            # pick it and talk to it: the listed name is the one the front door routes
            await connect(page, "echo")
            await page.wait_for_selector("#status[data-state=open]")
            await send(page, "listed")
            await expect(page.locator("#log li[data-dir=in]")).to_have_count(1)
            latency = await page.locator("#log li[data-dir=in]").get_attribute("data-latency-ms")
            assert latency is not None and float(latency) >= 0
            await page.screenshot(path=str(tmp_path / "endpoints.png"), full_page=True)
        assert problems.items == []


async def test_narrow_screen_has_no_horizontal_overflow(text_gateway: Gateway, tmp_path: Path) -> None:
    async with open_page(text_gateway, tmp_path / "profile") as (page, problems):
        for width in (400, 360, 1200):
            await page.set_viewport_size({"width": width, "height": 800})
            overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the page is {overflow}px wider than a {width}px screen"
            box = await page.locator("#message").bounding_box()
            assert box is not None and box["x"] + box["width"] <= width
        await page.set_viewport_size({"width": 400, "height": 900})
        await page.screenshot(path=str(tmp_path / "narrow.png"), full_page=True)
    assert problems.items == []


async def test_unknown_endpoint_shows_close_code_and_reason(text_gateway: Gateway, tmp_path: Path) -> None:
    async with open_page(text_gateway, tmp_path / "profile") as (page, problems):
        await connect(page, "no-such-endpoint")
        await page.wait_for_selector("#status[data-state=error]")
        error = await page.inner_text("#error")
        assert "code 1008" in error
        assert "request was refused" in error
        assert "no-such-endpoint" in error, "the server's reason must reach the user"
        assert not await page.is_enabled("#send"), "a closed session cannot send"
        # An invalid invocation path is refused the same way, in words.
        await connect(page, "echo", path="bad path!")
        await expect(page.locator("#error")).to_contain_text("ModelInvocationPath")
        assert "code 1008" in await page.inner_text("#error")
    assert problems.items == []


async def test_microphone_speech_to_text(tmp_path: Path) -> None:
    wav, port = await asyncio.gather(
        asyncio.to_thread(synth, SENTENCE, tail=2.0), asyncio.to_thread(speech_server)
    )
    async with gateway_stack(tmp_path / "gw", {}, urls={"speech": f"http://127.0.0.1:{port}"}) as stack:
        fake_mic = (
            "--use-fake-ui-for-media-stream",  # grant the permission prompt
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop",  # the sentence once, then silence
        )
        async with open_page(stack.gateway, tmp_path / "profile", fake_mic) as (page, problems):
            await page.click("#mic-start")
            await page.wait_for_selector("#mic-status[data-state=open]")
            # The pause after the sentence ends the utterance: a final transcript arrives
            # while the microphone is still streaming, before anyone presses Stop.
            await expect(page.locator("#final")).to_contain_text(
                re.compile("subscription", re.IGNORECASE), timeout=int(scaled(30_000))
            )
            await page.click("#mic-stop")
            await page.wait_for_selector("#mic-status[data-state=closed]")
            final = (await page.inner_text("#final")).lower()
            assert "cancel" in final and "subscription" in final, final
            assert await page.inner_text("#interim") == ""
            sent = await log_lines(page, "out")
            assert sent and '"CloseStream"' in sent[-1]
            received = await log_lines(page, "in")
            assert any('"type":"Metadata"' in line for line in received), "Metadata ends a CloseStream"
            interims = [
                line for line in received if '"is_final":false' in line and '"transcript":"i' in line.lower()
            ]
            assert interims, "interim results must reach the page while speaking"
            closes = await page.locator("#log li[data-kind=close] .content").all_inner_texts()
            assert closes and closes[-1].split()[-1] == "1000"
            # the page asked for the speech options it shows (all ticked by default)
            opened = await page.locator("#log li[data-kind=open] .content").all_inner_texts()
            assert any("punctuate=true" in o and "smart_format=true" in o for o in opened), opened
            assert await page.is_hidden("#error")
        assert problems.items == []


async def test_downsampler_makes_16khz_little_endian_chunks(text_gateway: Gateway, tmp_path: Path) -> None:
    """pcm.js as the browser runs it: rate conversion, chunk size, byte order, flush."""
    async with open_page(text_gateway, tmp_path / "profile") as (page, problems):
        result = await page.evaluate(
            """async () => {
                const { Pcm16Downsampler } = await import("./pcm.js");
                const run = (rate, value) => {
                    const pcm = new Pcm16Downsampler(rate, 16000, 50);
                    const chunks = [];
                    // one second of input, in 128-sample render quanta like an AudioWorklet
                    for (let i = 0; i < rate; i += 128) {
                        chunks.push(...pcm.push(new Float32Array(Math.min(128, rate - i)).fill(value)));
                    }
                    const sizes = chunks.map((c) => c.byteLength);
                    const tail = pcm.flush().map((c) => c.byteLength);
                    return { sizes, tail, head: Array.from(new Uint8Array(chunks[0]).slice(0, 2)) };
                };
                return { r48: run(48000, 0.5), r44: run(44100, -1.5) };
            }"""
        )
    r48, r44 = result["r48"], result["r44"]
    assert r48["sizes"] == [1600] * 20 and r48["tail"] == []  # 50 ms of 16-bit samples at 16 kHz
    assert r48["head"] == [0x00, 0x40]  # round(0.5 * 32767) = 0x4000, low byte first
    total44 = sum(r44["sizes"]) + sum(r44["tail"])
    assert abs(total44 - 32000) <= 2, total44  # 44.1 kHz → 16 kHz keeps the duration
    assert r44["head"] == [0x00, 0x80]  # clipped to -1.0 → -32768
    assert problems.items == []


async def test_page_is_served_over_http1_too(text_gateway: Gateway) -> None:
    """Chromium loads the page over h2; a client without ALPN h2 must get it as well."""
    ctx = ssl.create_default_context(cafile=str(text_gateway.ca_path))
    ctx.set_alpn_protocols(["http/1.1"])

    def get(path: str) -> tuple[int, str, str, bytes]:
        with urllib.request.urlopen(text_gateway.url + path, context=ctx, timeout=scaled(10)) as resp:
            return resp.status, resp.url, resp.headers["content-type"], resp.read()

    status, url, ctype, body = await asyncio.to_thread(get, "/")
    assert (status, url, ctype) == (200, text_gateway.url + "/web/", "text/html; charset=utf-8")
    assert b'<script type="module" src="app.js">' in body
