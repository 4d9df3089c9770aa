"""Fair dynamic batching across concurrent requests (issues: split inference as a service; the service under attack).

Requests arrive one by one on the event loop; the GPU wants batches. ``DynamicBatcher.submit`` queues one item under
its client's key and awaits its result; one background task takes the first waiting item, gathers more until
``max_batch_size`` or until ``max_wait_ms`` have passed since the first, and runs ``fn`` on the batch in a single
worker thread (the model is used by one thread at a time). Waiting items are taken **least-waiting client first**
(``FairQueue``): a client with one request waiting is served before clients with many, round-robin among equals,
so a flood from a few clients does not queue everyone else behind it.

``fn`` returns one result per item, an ``Exception`` for an item that failed: it fails that request alone. If ``fn``
raises for the batch as a whole, each item is run again on its own, so one poisoned item never fails the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("latentbridge.serve")


class FairQueue:
    """Waiting entries by client key. The next entry comes from the client with the fewest entries waiting (a client
    with one request never waits behind a client with a hundred), round-robin among clients with equally many."""

    def __init__(self) -> None:
        self._by_client: OrderedDict[str, deque[Any]] = OrderedDict()
        self._size = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return self._size

    def put(self, client: str, entry: Any) -> None:
        self._by_client.setdefault(client, deque()).append(entry)
        self._size += 1
        self._ready.set()

    def get_nowait(self) -> Any | None:
        """The oldest entry of the least-waiting client (that client moves to the back of the turn), or None."""
        if not self._by_client:
            return None
        client = min(self._by_client, key=lambda c: len(self._by_client[c]))  # first in turn order among the least
        waiting = self._by_client[client]
        entry = waiting.popleft()
        if waiting:
            self._by_client.move_to_end(client)
        else:
            del self._by_client[client]
        self._size -= 1
        if not self._size:
            self._ready.clear()
        return entry

    async def get(self, timeout: float | None = None) -> Any | None:
        """The next entry, waiting for one at most ``timeout`` seconds (None: forever); None on timeout."""
        while not self._size:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        return self.get_nowait()


class DynamicBatcher:
    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_batch_size: int = 16, max_wait_ms: float = 5.0):
        self.fn, self.max_batch_size, self.max_wait = fn, int(max_batch_size), float(max_wait_ms) / 1000
        self.queue: FairQueue | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentbridge-model")
        self.task: asyncio.Task | None = None
        self.batches = self.items = self.retried = 0

    def start(self) -> None:
        self.queue = FairQueue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, item: Any, client: str = "") -> Any:
        """The result of ``fn`` for ``item`` (raised if it is an exception); ``client`` keys the fair turn."""
        assert self.queue is not None, "DynamicBatcher.start() first"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queue.put(client, (item, future))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def _batch(self, items: list[Any]) -> list[Any]:
        """``fn`` on the batch; if the batch as a whole fails, each item on its own (in the model's thread)."""
        try:
            results = self.fn(items)
        except Exception:  # noqa: BLE001 - the items are retried one by one below
            results = None
        if results is not None and len(results) == len(items):
            return results
        self.retried += 1
        out = []
        for item in items:
            try:
                out.extend(self.fn([item]))
            except Exception as e:  # noqa: BLE001 - this item's own failure, for its request alone
                log.exception("the model failed on one request (its batch of %d was retried item by item)", len(items))
                out.append(e)
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size:
                entry = self.queue.get_nowait() or await self.queue.get(deadline - time.monotonic())
                if entry is None:
                    break
                batch.append(entry)
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a timed-out request left already
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.pool, self._batch, [item for item, _ in live])
            except Exception as e:  # noqa: BLE001 - the worker itself failed: every request in it gets the error
                results = [e] * len(live)
            self.batches, self.items = self.batches + 1, self.items + len(live)
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)
