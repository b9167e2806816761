"""Concurrent requests -> batched generation, on one worker thread.

Requests wait in a queue; the worker takes the oldest, then waits up to `max_wait_s` for more
requests with the same sampling settings (temperature, top_p, seed), up to the generator's
batch_size, and answers them in one `Assistant.answer` call. Requests with other settings wait
for a later batch. A full queue refuses new requests (Busy) instead of growing without bound.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import threading
import time

from bird_jax.assistant import Answer, Assistant, Prompt


class Busy(RuntimeError):
  """The queue is full; the caller should retry later."""


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 0.0
  top_p: float = 1.0
  seed: int | None = None  # None: a different seed per batch


@dataclasses.dataclass
class _Request:
  prompt: Prompt
  sampling: Sampling
  future: concurrent.futures.Future


class Batcher:
  """submit(prompt, sampling) -> Future[Answer]; close() stops the worker."""

  def __init__(self, assistant: Assistant, *, max_wait_s: float = 0.01, max_queue: int = 256):
    self.assistant, self.max_wait_s, self.max_queue = assistant, max_wait_s, max_queue
    self.batch_size = assistant.gen.batch_size or 1
    self._queue: collections.deque[_Request] = collections.deque()
    self._cond = threading.Condition()
    self._closed = False
    self._seeds = itertools.count()
    self.batches = 0  # generation calls so far
    self.answered = 0  # requests answered so far
    self._worker = threading.Thread(target=self._run, name="bird_jax-batcher", daemon=True)
    self._worker.start()

  def submit(self, prompt: Prompt, sampling: Sampling = Sampling()) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    with self._cond:
      if self._closed:
        raise RuntimeError("the batcher is closed")
      if len(self._queue) >= self.max_queue:
        raise Busy(f"{len(self._queue)} requests are waiting (the limit); retry later")
      self._queue.append(_Request(prompt, sampling, future))
      self._cond.notify()
    return future

  def close(self) -> None:
    with self._cond:
      self._closed = True
      self._cond.notify()
    self._worker.join()

  def _take(self) -> list[_Request]:
    """The next batch (oldest request first), or [] once closed."""
    with self._cond:
      while not self._queue and not self._closed:
        self._cond.wait()
      if not self._queue:
        return []
      key = self._queue[0].sampling
      deadline = time.monotonic() + self.max_wait_s
      while (sum(r.sampling == key for r in self._queue) < self.batch_size
             and not self._closed and (left := deadline - time.monotonic()) > 0):
        self._cond.wait(left)
      batch = [r for r in self._queue if r.sampling == key][:self.batch_size]
      for r in batch:
        self._queue.remove(r)
      return batch

  def _run(self) -> None:
    while batch := self._take():
      batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
      if not batch:
        continue
      s = batch[0].sampling
      seed = s.seed if s.seed is not None else next(self._seeds)
      try:
        answers: list[Answer] = self.assistant.answer(
            [r.prompt for r in batch], temperature=s.temperature, top_p=s.top_p, seed=seed)
      except Exception as e:  # handed to every waiting request; the worker keeps serving
        for r in batch:
          r.future.set_exception(e)
        continue
      self.batches += 1
      self.answered += len(batch)
      for r, a in zip(batch, answers):
        r.future.set_result(a)
