"""The unmodified ``nvidia-riva-client`` against the speech model's Riva ASR servicer.

Until the container's gRPC port lands, the servicer the model returns from
``grpc_services()`` is mounted on a grpc.aio server this module starts (its
own event loop in a thread, 127.0.0.1, a free port), with the receive limit
the service asks for.  Calls go through ``riva.client.ASRService``,
``AudioChunkFileIterator`` and the print helpers exactly as the
python-clients scripts use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jiwer
import numpy as np
import pytest
import riva.client
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc

from bidistream.models.speech.model import SpeechModel
from tests.speech_audio import conversation, pcm, speaker_accuracy, speech_grpc_port, synth
from tests.support.waiting import scaled

SENTENCE = "i need help with my account balance"
SECOND = "please call me back tomorrow morning"
MAX_WER = 0.25


def plain(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def riva_port() -> Iterator[int]:
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        model = SpeechModel()
        await model.load()
        services = model.grpc_services()
        options = [opt for svc in services for opt in getattr(svc, "server_options", ())]
        server = grpc.aio.server(options=options)
        for svc in services:
            svc.add_to_server(server)
        state["port"] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        state["stop"] = stop
        state["loop"] = asyncio.get_running_loop()
        ready.set()
        await stop.wait()
        await server.stop(grace=0)

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(scaled(120)), "riva test server did not start"
    if "error" in state:
        raise state["error"]
    yield state["port"]
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(scaled(10))


def service(port: int) -> riva.client.ASRService:
    auth = riva.client.Auth(uri=f"127.0.0.1:{port}", metadata_args=[["authorization", "Bearer x"]])
    return riva.client.ASRService(auth)


def wav_with_pause() -> Path:
    a, rate = pcm(synth(SENTENCE))
    b, _ = pcm(synth(SECOND))
    out = synth(SENTENCE).parent / "riva-two.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(a + b"\0\0" * rate + b)
    return out


def mulaw(samples: np.ndarray) -> bytes:
    sign = (samples < 0).astype(np.int32)
    mag = np.minimum(np.abs(samples.astype(np.int32)), 32635) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    mant = (mag >> (exp + 3)) & 0x0F
    return (~((sign << 7) | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


def test_list_models_shows_offline_and_online(riva_port: int) -> None:
    stub = rasr_grpc.RivaSpeechRecognitionStub(service(riva_port).auth.channel)
    config = stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest())
    kinds = {m.parameters["type"]: m.parameters["language_code"] for m in config.model_config}
    assert kinds == {"offline": "en-US", "online": "en-US"}


def test_offline_whole_wav_file_as_transcribe_file_offline_sends_it(riva_port: int, capsys: Any) -> None:
    """The script's request: the file with its header, no encoding, rate 0, language ''."""
    data = wav_with_pause().read_bytes()
    config = riva.client.RecognitionConfig(
        language_code="", max_alternatives=1, enable_automatic_punctuation=True, enable_word_time_offsets=True
    )
    response = service(riva_port).offline_recognize(data, config)
    riva.client.print_offline(response)
    printed = capsys.readouterr().out
    assert "Final transcript:" in printed
    text = "".join(r.alternatives[0].transcript for r in response.results)
    assert jiwer.wer(f"{SENTENCE} {SECOND}", plain(text)) <= MAX_WER, text
    assert len(response.results) == 2 and all(r.channel_tag == 1 for r in response.results)
    assert re.search(r"[.?!]", text), text  # punctuation on
    duration_ms = len(pcm(wav_with_pause())[0]) / 32
    starts = [w.start_time for r in response.results for w in r.alternatives[0].words]
    assert starts == sorted(starts) and all(isinstance(s, int) for s in starts)
    assert all(
        0 <= w.start_time <= w.end_time <= duration_ms + 50
        for r in response.results
        for w in r.alternatives[0].words
    )


def test_offline_raw_pcm_without_punctuation(riva_port: int) -> None:
    data, rate = pcm(synth(SENTENCE))
    config = riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM,
        sample_rate_hertz=rate,
        language_code="en-US",
        enable_automatic_punctuation=False,
    )
    response = service(riva_port).offline_recognize(data, config)
    text = "".join(r.alternatives[0].transcript for r in response.results)
    assert jiwer.wer(SENTENCE, text.strip()) <= MAX_WER, text
    assert text == text.lower() and not re.search(r"[.,?!]", text), text
    assert not response.results[0].alternatives[0].words  # no offsets asked


def test_offline_mulaw_8k(riva_port: int) -> None:
    data, rate = pcm(synth(SENTENCE, rate=8000))
    config = riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.MULAW, sample_rate_hertz=rate, language_code="en-US"
    )
    response = service(riva_port).offline_recognize(mulaw(np.frombuffer(data, "<i2")), config)
    text = "".join(r.alternatives[0].transcript for r in response.results)
    assert jiwer.wer(SENTENCE, plain(text)) <= MAX_WER, text


def test_offline_above_grpc_default_4mib_receive_limit(riva_port: int) -> None:
    data, rate = pcm(synth(SENTENCE))
    big = data + b"\0\0" * rate * 150  # about 5 MB of PCM
    assert len(big) > 4 * 1024 * 1024
    config = riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate, language_code="en-US"
    )
    response = service(riva_port).offline_recognize(big, config)
    assert jiwer.wer(SENTENCE, plain(response.results[0].alternatives[0].transcript)) <= MAX_WER


def test_offline_diarization_speaker_tags(riva_port: int) -> None:
    path, turns = conversation()
    config = riva.client.RecognitionConfig(language_code="en-US", enable_word_time_offsets=True)
    riva.client.add_speaker_diarization_to_config(config, diarization_enable=True)  # max_speaker_count unset
    response = service(riva_port).offline_recognize(path.read_bytes(), config)
    words = [w for r in response.results for w in r.alternatives[0].words]
    accuracy = speaker_accuracy(
        [(w.start_time / 1000, w.end_time / 1000, w.speaker_tag) for w in words], turns
    )
    assert accuracy >= 0.9, [(w.word, w.speaker_tag) for w in words]


def streaming_config(interim: bool, **kwargs: Any) -> Any:
    config = riva.client.RecognitionConfig(
        language_code="en-US", enable_automatic_punctuation=True, enable_word_time_offsets=True, **kwargs
    )
    return riva.client.StreamingRecognitionConfig(config=config, interim_results=interim)


def test_streaming_wav_chunks_with_interims_as_transcribe_file_sends_them(riva_port: int) -> None:
    path = wav_with_pause()
    with riva.client.AudioChunkFileIterator(str(path), 1600, riva.client.sleep_audio_length) as chunks:
        responses = list(service(riva_port).streaming_response_generator(chunks, streaming_config(True)))
    results = [r for resp in responses for r in resp.results]
    finals = [r for r in results if r.is_final]
    interims = [r for r in results if not r.is_final]
    assert interims and all(0 < r.stability < 1 for r in interims)
    text = " ".join(r.alternatives[0].transcript for r in finals)
    assert jiwer.wer(f"{SENTENCE} {SECOND}", plain(text)) <= MAX_WER, text
    processed = [r.audio_processed for r in results]
    assert processed == sorted(processed) and processed[-1] > 3
    for r in finals:
        words = r.alternatives[0].words
        assert words and all(isinstance(w.start_time, int) and w.start_time <= w.end_time for w in words)
        assert r.alternatives[0].confidence > 0
    out = io.StringIO()
    riva.client.print_streaming(
        iter(responses), output_file=[out], additional_info="time", word_time_offsets=True
    )
    printed = out.getvalue()
    assert printed.count("Transcript 0:") == len(finals) and "Start (ms)" in printed, printed


def test_streaming_without_interims_sends_only_finals(riva_port: int) -> None:
    data, rate = pcm(synth(SENTENCE))
    chunks = [data[i : i + 3200] for i in range(0, len(data), 3200)]
    config = streaming_config(False, encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate)
    responses = list(service(riva_port).streaming_response_generator(chunks, config))
    results = [r for resp in responses for r in resp.results]
    assert results and all(r.is_final for r in results)
    assert jiwer.wer(SENTENCE, plain(" ".join(r.alternatives[0].transcript for r in results))) <= MAX_WER


def test_streaming_mulaw(riva_port: int) -> None:
    data, rate = pcm(synth(SENTENCE, rate=8000))
    law = mulaw(np.frombuffer(data, "<i2"))
    chunks = [law[i : i + 800] for i in range(0, len(law), 800)]
    config = streaming_config(False, encoding=riva.client.AudioEncoding.MULAW, sample_rate_hertz=rate)
    results = [
        r for resp in service(riva_port).streaming_response_generator(chunks, config) for r in resp.results
    ]
    assert jiwer.wer(SENTENCE, plain(" ".join(r.alternatives[0].transcript for r in results))) <= MAX_WER


def _offline(port: int, audio: bytes, **config: Any) -> Any:
    return service(port).offline_recognize(audio, riva.client.RecognitionConfig(**config))


BAD_OFFLINE = [
    (
        "french",
        {"language_code": "fr-FR"},
        "Unavailable model requested given these parameters: language_code=fr-FR",
    ),
    ("unknown model", {"model": "parakeet-ctc-1.1b"}, "Unavailable model requested"),
    ("rate too low", {"encoding": 1, "sample_rate_hertz": 1000}, "sample_rate_hertz"),
    ("raw pcm without rate", {"encoding": 1}, "sample_rate_hertz is required"),
    ("undefined encoding", {"encoding": 7, "sample_rate_hertz": 16000}, "unsupported audio encoding"),
    ("not audio", {"encoding": 0}, "not audio"),
]


@pytest.mark.parametrize(("label", "config", "details"), BAD_OFFLINE, ids=[b[0] for b in BAD_OFFLINE])
def test_bad_offline_request_is_invalid_argument_and_concurrent_stream_untouched(
    riva_port: int, label: str, config: dict[str, Any], details: str
) -> None:
    data, rate = pcm(synth(SENTENCE))
    good: dict[str, Any] = {}

    def stream() -> None:
        chunks = [data[i : i + 3200] for i in range(0, len(data), 3200)]
        cfg = streaming_config(False, encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate)
        good["results"] = [
            r for x in service(riva_port).streaming_response_generator(chunks, cfg) for r in x.results
        ]

    thread = threading.Thread(target=stream)
    thread.start()
    audio = b"just some text, not audio at all" * 50 if label == "not audio" else data
    with pytest.raises(grpc.RpcError) as info:
        _offline(riva_port, audio, **config)
    thread.join(scaled(60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details in info.value.details(), info.value.details()
    text = " ".join(r.alternatives[0].transcript for r in good["results"])
    assert jiwer.wer(SENTENCE, plain(text)) <= MAX_WER, text


def test_streaming_bad_language_raises_from_iteration(riva_port: int) -> None:
    data, rate = pcm(synth(SENTENCE))
    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate, language_code="de-DE"
        )
    )
    with pytest.raises(grpc.RpcError) as info:
        list(service(riva_port).streaming_response_generator([data[:3200], data[3200:6400]], config))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unavailable model requested given these parameters: language_code=de-DE" in info.value.details()
    assert "type=online" in info.value.details()


def test_streaming_first_message_must_be_config(riva_port: int) -> None:
    stub = rasr_grpc.RivaSpeechRecognitionStub(service(riva_port).auth.channel)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamingRecognize(iter([rasr.StreamingRecognizeRequest(audio_content=b"\0" * 3200)])))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_streaming_flac_is_refused(riva_port: int) -> None:
    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.FLAC, language_code="en-US")
    )
    with pytest.raises(grpc.RpcError) as info, contextlib.suppress(StopIteration):
        list(service(riva_port).streaming_response_generator([b"fLaC" + b"\0" * 100], config))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_streaming_diarization_speaker_tags(riva_port: int) -> None:
    path, turns = conversation()
    config = streaming_config(False)
    riva.client.add_speaker_diarization_to_config(config, diarization_enable=True)
    with riva.client.AudioChunkFileIterator(str(path), 4800) as chunks:
        responses = list(service(riva_port).streaming_response_generator(chunks, config))
    words = [w for resp in responses for r in resp.results if r.is_final for w in r.alternatives[0].words]
    accuracy = speaker_accuracy(
        [(w.start_time / 1000, w.end_time / 1000, w.speaker_tag) for w in words], turns
    )
    assert accuracy >= 0.9, [(w.word, w.speaker_tag) for w in words]


def test_through_the_model_servers_own_grpc_port() -> None:
    """`bidistream serve speech` mounts the servicer on its gRPC port, receive limit raised."""
    port = speech_grpc_port()
    stub = rasr_grpc.RivaSpeechRecognitionStub(service(port).auth.channel)
    kinds = {
        m.parameters["type"]
        for m in stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest()).model_config
    }
    assert kinds == {"offline", "online"}
    data, rate = pcm(synth(SENTENCE))
    big = data + b"\0\0" * rate * 600  # about 19 MB: above the server's 16 MiB message limit
    config = riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate, language_code="en-US"
    )
    response = service(port).offline_recognize(big, config)
    assert jiwer.wer(SENTENCE, plain(response.results[0].alternatives[0].transcript)) <= MAX_WER
    with riva.client.AudioChunkFileIterator(str(synth(SENTENCE)), 1600) as chunks:
        streamed = list(service(port).streaming_response_generator(chunks, streaming_config(False)))
    text = " ".join(r.alternatives[0].transcript for x in streamed for r in x.results if r.is_final)
    assert jiwer.wer(SENTENCE, plain(text)) <= MAX_WER, text
