"""Concurrent requests -> one call, with a bounded wait (the policy server's batching).

The first request of a batch waits at most `max_wait_s` for others, and not at all once
`expected()` requests (e.g. one per connected robot) or `max_batch` are in. The call runs
in a worker thread, so the event loop keeps reading requests, which form the next batch.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from typing import Any, Callable, Sequence


class Batcher:
  """Args:
    run: run(items) -> results (one per item, or an Exception instance for that item);
      called in `executor`; an exception it raises fails every item of the batch.
    max_batch, max_wait_s: batch size limit and the longest extra wait.
    expected: how many requests could join now (a batch that has them all starts at once).
  """

  def __init__(self, run: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int,
               max_wait_s: float, executor: concurrent.futures.Executor,
               expected: Callable[[], int] = lambda: 1 << 30):
    self._run, self.max_batch, self.max_wait = run, int(max_batch), float(max_wait_s)
    self._executor, self._expected = executor, expected
    self._queue: collections.deque = collections.deque()
    self._arrived: asyncio.Event | None = None
    self._task: asyncio.Task | None = None
    self.batch_sizes = collections.deque(maxlen=1000)  # Recent sizes, for /healthz.

  def start(self) -> None:
    self._arrived = asyncio.Event()
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def submit(self, item) -> Any:
    fut = asyncio.get_running_loop().create_future()
    self._queue.append((item, fut))
    self._arrived.set()
    return await fut

  async def _loop(self):
    loop = asyncio.get_running_loop()
    while True:
      # A deque and an event, not asyncio.Queue + wait_for: a timeout can never drop an item.
      while not self._queue:
        self._arrived.clear()
        await self._arrived.wait()
      deadline = loop.time() + self.max_wait
      batch = []
      while True:
        while self._queue and len(batch) < self.max_batch:
          batch.append(self._queue.popleft())
        left = deadline - loop.time()
        if len(batch) >= min(self.max_batch, self._expected()) or left <= 0:
          break
        self._arrived.clear()
        try:
          await asyncio.wait_for(self._arrived.wait(), left)
        except asyncio.TimeoutError:
          pass
      items = [item for item, _ in batch]
      try:
        results = await loop.run_in_executor(self._executor, self._run, items)
      except Exception as e:  # Fails this batch only; the loop serves the next.
        results = [e] * len(batch)
      self.batch_sizes.append(len(batch))
      for (_, fut), r in zip(batch, results):
        if fut.done():  # The robot went away meanwhile.
          continue
        if isinstance(r, BaseException):
          fut.set_exception(r)
        else:
          fut.set_result(r)

  async def stop(self):
    if self._task is not None:
      self._task.cancel()
      try:
        await self._task
      except (asyncio.CancelledError, Exception):
        pass
