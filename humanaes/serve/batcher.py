"""An asyncio micro-batcher feeding one model thread.

Requests put their images on one queue; a single task gathers them into model batches (up to
`max_batch` images that share a mode and options, the first waiting at most `max_wait_ms` for
company) and runs each batch on one dedicated thread, so model work never blocks the event loop
and the model is never called from two threads at once. Every image has its own future: results
go back to their own caller, in order. A caller that gives up (timeout, disconnect) cancels its
futures; images not yet taken by the model are then dropped, not scored.

It depends on asyncio only (no web framework), so another process or actor (e.g. a Ray Serve
replica) can drive a scorer through it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from humanaes.errors import HumanAesError
from humanaes.options import ScoreOptions
from humanaes.schema import ScoreResult

logger = logging.getLogger(__name__)


@dataclass
class _Item:
    name: str
    data: bytes
    key: tuple[str, ScoreOptions]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class BatcherClosed(HumanAesError):
    """The batcher is shutting down and takes no new work."""


class MicroBatcher:
    """Gathers concurrent `score()` calls into model batches run on one thread.

    `on_batch(size, seconds)` is called on the event loop after each model batch (metrics).
    """

    def __init__(
        self,
        scorer: Any,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise HumanAesError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._in_model = 0
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batching task on the running loop (idempotent)."""
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="humanaes-model")
        self._task = asyncio.create_task(self._run(), name="humanaes-batcher")

    async def close(self) -> None:
        """Stop taking work, finish everything already queued, then stop the model thread."""
        self._closing = True
        if self._task is None:
            return
        assert self._wakeup is not None
        self._wakeup.set()
        await self._task
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def depth(self) -> int:
        """Images waiting for the model or in it (cancelled ones not counted)."""
        return sum(1 for item in self._pending if not item.future.done()) + self._in_model

    # -- work ----------------------------------------------------------------------------------

    def submit(self, images: Sequence[tuple[str, bytes]], mode: str, options: ScoreOptions) -> list[asyncio.Future]:
        """Queue (name, encoded bytes) images; one future per image, resolving to its ScoreResult.

        `mode` and `options` must already be checked (scorer.check_mode / parse_options): a
        batch holds one mode and one set of options. Cancel a future to drop its image."""
        if self._closing or self._task is None:
            raise BatcherClosed("the service is shutting down; retry on another instance")
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        futures = []
        for name, data in images:
            if not isinstance(data, (bytes, bytearray)):
                # never a path or URL: the scorer would open it on the server
                raise TypeError(f"image {name!r}: the batcher takes encoded bytes, got {type(data).__name__}")
            item = _Item(name, bytes(data), (mode, options), loop.create_future())
            self._pending.append(item)
            futures.append(item.future)
        self._wakeup.set()
        return futures

    async def score(self, images: Sequence[tuple[str, bytes]], mode: str, options: ScoreOptions) -> list[ScoreResult]:
        """Score images through the shared batches; cancelling this call drops its queued images."""
        futures = self.submit(images, mode, options)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for f in futures:
                f.cancel()  # no-op for finished ones; drops the rest

    async def _run(self) -> None:
        assert self._wakeup is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._gather()
            if not batch:
                continue
            self._in_model = len(batch)
            mode, options = batch[0].key
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._score_batch, batch, mode, options)
            except Exception as exc:  # noqa: BLE001 - one failing batch must not stop the service
                logger.error("model batch of %d failed: %s", len(batch), type(exc).__name__)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            else:
                for item, result in zip(batch, results):
                    if not item.future.done():  # its caller may have given up meanwhile
                        item.future.set_result(result)
            finally:
                self._in_model = 0
            seconds = time.perf_counter() - start
            logger.debug("model batch: %d images in %.3f s", len(batch), seconds)
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)

    def _drop_cancelled(self) -> None:
        if any(item.future.done() for item in self._pending):
            self._pending = deque(item for item in self._pending if not item.future.done())

    def _compatible(self, key: tuple[str, ScoreOptions]) -> int:
        return sum(1 for item in self._pending if item.key == key and not item.future.done())

    async def _gather(self) -> list[_Item]:
        """Wait (at most max_wait after the oldest image arrived) for a full batch, then take it."""
        assert self._wakeup is not None
        first = self._pending[0]
        deadline = first.enqueued + self.max_wait
        while not self._closing and self._compatible(first.key) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
            if first.future.done():
                return []  # its caller left; start over with the next oldest
        batch: list[_Item] = []
        kept: deque[_Item] = deque()
        for item in self._pending:
            if item.future.done():
                continue
            if item.key == first.key and len(batch) < self.max_batch:
                batch.append(item)
            else:
                kept.append(item)
        self._pending = kept
        return batch

    def _score_batch(self, batch: list[_Item], mode: str, options: ScoreOptions) -> list[ScoreResult]:
        """On the model thread: one scorer call for the whole batch."""
        return list(
            self.scorer.iter_score(
                [item.data for item in batch], mode=mode, batch_size=len(batch),
                names=[item.name for item in batch], **dataclasses.asdict(options),
            )
        )


__all__ = ["BatcherClosed", "MicroBatcher"]
