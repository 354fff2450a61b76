"""The bounded decode scheduler shared by every session of one engine.

Why a scheduler: a Whisper decode costs ~0.1-0.5 s of CPU whatever the
utterance length, so N sessions decoding one by one fall behind real time
long before the CPU is busy.  Jobs that wait are merged into one engine call
(cross-session batching) when the engine says their batch keys match, so a
batch never changes what one member decodes; at most ``slots`` calls run at once (the core
count), so decodes never oversubscribe the CPU.  Finals go before interims,
and nothing waiting is ever dropped: a session that is still waiting for an
interim simply does not ask for another, which stretches its interim
interval under load instead of falling behind.

The waiting lists are bounded (``max_waiting`` jobs each): each session keeps
at most one interim waiting and bounds its own final backlog
(``LiveConfig.max_backlog_seconds``), so the bound is only reached by more
sessions than the instance should hold; the job is then refused
(InstanceFullError: 503 / WS 1013), never queued without limit.

With two or more slots, interims may hold at most ``slots - 1`` of them, so a
final never waits behind interims.  Measured on 2 cores: a batch of 4 interims
costs ~4 single decodes (the encoder work is per input once the window is
cut), so a final queued behind one waited ~1.4 s and the 1.5 s p90 bar broke
at 3 sessions; with the reserved slot interims batch on one core (their
interval stretches) and finals start at once on the other.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from bidistream.errors import InstanceFullError, ModelError
from bidistream.metrics import SPEECH_BATCH_SIZE, SPEECH_QUEUE_DEPTH
from bidistream.models.speech.engines import SAMPLE_RATE, Engine, Transcript

__all__ = ["DecodeScheduler", "SchedulerStats"]


@dataclass(slots=True, eq=False)  # identity: == on the audio arrays would compare samples
class _Job:
    audio: np.ndarray
    final: bool
    future: asyncio.Future[Transcript]
    key: Hashable  # Engine.batch_key: only equal keys share an engine call
    queued: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class SchedulerStats:
    calls: int = 0
    jobs: int = 0
    max_batch_seen: int = 0
    busy_seconds: float = 0.0
    wait_seconds: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.jobs / self.calls if self.calls else 0.0


class DecodeScheduler:
    def __init__(
        self,
        engine: Engine,
        *,
        slots: int | None = None,
        batching: bool = True,
        max_batch: int | None = None,
        reserve_final_slot: bool = True,
        max_interim_batch: int | None = None,
        max_final_batch: int = 2,
        max_waiting: int = 256,
        metric_labels: tuple[str, ...] | None = None,
    ) -> None:
        self.engine = engine
        # Metrics (issue 14): the queue depth and batch sizes, for the instance's /metrics.
        self._depth = SPEECH_QUEUE_DEPTH.labels(*metric_labels) if metric_labels is not None else None
        self._batches = SPEECH_BATCH_SIZE.labels(*metric_labels) if metric_labels is not None else None
        self.slots = max(1, slots or os.cpu_count() or 1)
        self.interim_slots = self.slots - 1 if reserve_final_slot and self.slots > 1 else self.slots
        self.batching = batching
        self.max_batch = max(1, min(max_batch or engine.max_batch, engine.max_batch)) if batching else 1
        # A batch costs about the sum of its decodes, so a long interim batch holds its
        # slot (and the finals that need it next) for seconds; SpeechModel caps it at 2
        # (10 concurrent sessions measured, against 7 with batches of up to 8).
        self.max_interim_batch = max(1, min(max_interim_batch or self.max_batch, self.max_batch))
        # Batched finals all finish when the batch does: 5 coinciding finals in one call
        # took ~2.2 s each, against 0.45-1.35 s as calls spread over the slots (measured).
        self.max_final_batch = max(1, min(max_final_batch, self.max_batch))
        self.max_waiting = max(1, max_waiting)
        self._finals: deque[_Job] = deque()
        self._interims: deque[_Job] = deque()
        self._running = 0
        self._running_interims = 0
        self._executor = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="speech-decode")
        self.stats = SchedulerStats()

    @property
    def pending(self) -> int:
        return len(self._finals) + len(self._interims)

    @property
    def backlog_seconds(self) -> float:
        """Audio waiting for a decode slot, in seconds: the overload gauge."""
        waiting = sum(len(j.audio) for q in (self._finals, self._interims) for j in q)
        return waiting / SAMPLE_RATE

    @property
    def busy(self) -> bool:
        return self._running >= self.slots

    async def decode(self, audio: np.ndarray, *, final: bool) -> Transcript:
        return await self.submit(audio, final=final)

    def submit(self, audio: np.ndarray, *, final: bool) -> asyncio.Future[Transcript]:
        """Queue one decode; the future resolves to its transcript (see :meth:`withdraw`)."""
        loop = asyncio.get_running_loop()
        queue = self._finals if final else self._interims
        if len(queue) >= self.max_waiting:
            kind = "final" if final else "interim"
            raise InstanceFullError(
                f"speech decode queue full: {len(queue)} {kind} decodes waiting (limit {self.max_waiting})"
            )
        job = _Job(audio, final, loop.create_future(), self.engine.batch_key(audio, final=final))
        queue.append(job)
        self._dispatch()
        return job.future

    def withdraw(self, future: asyncio.Future[Transcript]) -> bool:
        """Drop a decode that has not started (its future is cancelled); False once it runs.

        A running decode is left alone: its CPU is spent, and its result is still news.
        """
        for queue in (self._interims, self._finals):
            for i, job in enumerate(queue):
                if job.future is future:
                    del queue[i]
                    future.cancel()
                    return True
        return False

    def _take(self) -> list[_Job]:
        if self._finals:
            queue, limit = self._finals, self.max_final_batch
        elif self._running_interims < self.interim_slots:
            queue, limit = self._interims, self.max_interim_batch
        else:
            return []
        batch: list[_Job] = []
        while queue and not batch:
            job = queue.popleft()
            if not job.future.cancelled():
                batch.append(job)
        if not batch or limit <= 1:
            return batch
        # Batch mates in queue order, with the first's key only; the others keep their places.
        key = batch[0].key
        kept: list[_Job] = []
        while queue and len(batch) < limit:
            job = queue.popleft()
            if job.future.cancelled():
                continue
            (batch if job.key == key else kept).append(job)
        queue.extendleft(reversed(kept))
        return batch

    def _dispatch(self) -> None:
        try:
            self._dispatch_some()
        finally:
            if self._depth is not None:
                self._depth.set(self.pending)

    def _dispatch_some(self) -> None:
        while self._running < self.slots and self.pending:
            if not self._finals and self._running_interims >= self.interim_slots:
                return  # the free slot stays with finals
            batch = self._take()
            if not batch:
                continue  # only cancelled jobs were taken
            self._running += 1
            if not batch[0].final:
                self._running_interims += 1
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[_Job]) -> None:
        if self._batches is not None:
            self._batches.observe(len(batch))
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        for job in batch:
            self.stats.wait_seconds += began - job.queued
        try:
            final = batch[0].final
            results = await loop.run_in_executor(
                self._executor, lambda: self.engine.decode([j.audio for j in batch], final=final)
            )
        except Exception as exc:
            err = ModelError(f"speech decode failed: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
        else:
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
        finally:
            self.stats.calls += 1
            self.stats.jobs += len(batch)
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
            self.stats.busy_seconds += time.monotonic() - began
            self._running -= 1
            if not batch[0].final:
                self._running_interims -= 1
            self._dispatch()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
