"""Dynamic batching across concurrent requests (issue: split inference as a service).

Requests arrive one by one on the event loop; the GPU wants batches. ``DynamicBatcher.submit`` queues one item and
awaits its result; one background task takes the first waiting item, gathers more until ``max_batch_size`` or
until ``max_wait_ms`` have passed since the first, and runs ``fn`` on the batch in a single worker thread (the
model is used by one thread at a time). ``fn`` returns one result per item, an ``Exception`` for an item that
failed: it fails that request alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class DynamicBatcher:
    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_batch_size: int = 16, max_wait_ms: float = 5.0):
        self.fn, self.max_batch_size, self.max_wait = fn, int(max_batch_size), float(max_wait_ms) / 1000
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future]] | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentbridge-model")
        self.task: asyncio.Task | None = None
        self.batches = self.items = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, item: Any) -> Any:
        """The result of ``fn`` for ``item`` (raised if it is an exception)."""
        assert self.queue is not None, "DynamicBatcher.start() first"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a timed-out request left already
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.pool, self.fn, [item for item, _ in live])
            except Exception as e:  # the batch as a whole failed: every request in it gets the error
                results = [e] * len(live)
            self.batches, self.items = self.batches + 1, self.items + len(live)
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)
