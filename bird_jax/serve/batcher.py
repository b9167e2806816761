"""Concurrent requests -> batched generation, on one worker thread.

Requests wait in a queue; the worker takes the oldest, then waits up to `max_wait_s` for more
requests with the same sampling settings (temperature, top_p, seed), up to the generator's
batch_size, and answers them in one `Assistant.answer` call. Requests with other settings wait
for a later batch. A full queue refuses new requests (Busy) instead of growing without bound.

Requests are told apart by identity, never by comparing their prompts. An error while answering
a batch fails the requests of that batch and the worker goes on. Should the worker stop anyway
(an exception that is not an Exception, such as SystemExit, or a fault of the batcher itself), or
once close() is called, every request it holds or is given fails with Unavailable and `healthy`
turns False. A request cancelled while it waits (its caller gave up) is never answered.

A generation call that never returns (a hung device) is seen by its age: once the batch being
answered has been generating for longer than `max_batch_s`, `healthy` is False and `status`
says for how long, so that a health check sees it; requests are still queued (the batch may yet
end), and `healthy` turns True again when it does.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import time

from bird_jax.assistant import Answer, Assistant, Prompt

log = logging.getLogger(__name__)


class Busy(RuntimeError):
  """The queue is full; the caller should retry later."""


class Unavailable(RuntimeError):
  """The batcher answers nothing more: it was closed or its worker stopped (the message says
  which)."""


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 0.0
  top_p: float = 1.0
  seed: int | None = None  # None: a different seed per batch


@dataclasses.dataclass(eq=False)  # compared by identity: a prompt holds numpy pixels
class _Request:
  prompt: Prompt
  sampling: Sampling
  future: concurrent.futures.Future


def _settle(future: concurrent.futures.Future, answer: Answer | None = None,
            error: BaseException | None = None) -> None:
  """Gives `future` its outcome unless it already has one (failed by close(), cancelled)."""
  try:
    if error is not None:
      future.set_exception(error)
    else:
      future.set_result(answer)
  except concurrent.futures.InvalidStateError:
    pass


class Batcher:
  """submit(prompt, sampling) -> Future[Answer]; close() stops the worker.

  healthy: the worker runs, the batcher is open (otherwise submit() raises Unavailable) and no
  batch has been generating for longer than `max_batch_s` (None: no limit).
  """

  def __init__(self, assistant: Assistant, *, max_wait_s: float = 0.01, max_queue: int = 256,
               max_batch_s: float | None = None):
    self.assistant, self.max_wait_s, self.max_queue = assistant, max_wait_s, max_queue
    self.max_batch_s = max_batch_s
    self.batch_size = assistant.gen.batch_size or 1
    self._queue: collections.deque[_Request] = collections.deque()
    self._in_flight: list[_Request] = []  # the batch being answered
    self._batch_started: float | None = None  # time.monotonic() when it was taken (None: idle)
    self._cond = threading.Condition()
    self._stopped: str | None = None  # why nothing more is answered (None: serving)
    self._seeds = itertools.count()
    self.batches = 0  # generation calls so far
    self.answered = 0  # requests answered so far
    self._worker = threading.Thread(target=self._run, name="bird_jax-batcher", daemon=True)
    self._worker.start()

  @property
  def healthy(self) -> bool:
    return self.status == "ok"

  @property
  def status(self) -> str:
    """'ok' while serving, else why requests are refused or why no answer is coming."""
    if self._stopped is not None:
      return self._stopped
    if not self._worker.is_alive():
      return "the generation worker stopped"
    age = self.batch_age_s
    if self.max_batch_s is not None and age is not None and age > self.max_batch_s:
      return (f"a batch has been generating for {age:.0f} s, longer than the limit of "
              f"{self.max_batch_s:g} s (the generation may be hung)")
    return "ok"

  @property
  def batch_age_s(self) -> float | None:
    """Seconds since the batch being answered was taken (None: no batch is being answered)."""
    started = self._batch_started
    return None if started is None else time.monotonic() - started

  @property
  def waiting(self) -> int:
    """Requests in the queue (not counting the batch being answered)."""
    with self._cond:
      self._prune()
      return len(self._queue)

  def submit(self, prompt: Prompt, sampling: Sampling = Sampling()) -> concurrent.futures.Future:
    """Queues a request; Unavailable when the batcher no longer answers, Busy when full.
    Cancelling the future withdraws a request that has not been taken into a batch."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    with self._cond:
      if self._stopped is not None or not self._worker.is_alive():
        raise Unavailable(self._stopped or "the generation worker stopped")
      self._prune()
      if len(self._queue) >= self.max_queue:
        raise Busy(f"{len(self._queue)} requests are waiting (the limit); retry later")
      self._queue.append(_Request(prompt, sampling, future))
      self._cond.notify()
    return future

  def close(self, timeout_s: float = 5.0) -> None:
    """Stops: queued requests and the batch being answered fail with Unavailable at once; the
    worker is given `timeout_s` to finish (a daemon thread: it never holds the process)."""
    self._stop("the server is shutting down")
    if self._worker is not threading.current_thread():
      self._worker.join(timeout_s)

  def _stop(self, reason: str) -> None:
    """From now on nothing is answered: every request held fails with Unavailable(reason)."""
    with self._cond:
      if self._stopped is None:
        self._stopped = reason
      held = [*self._in_flight, *self._queue]
      self._queue.clear()
      self._cond.notify_all()
    for r in held:
      _settle(r.future, error=Unavailable(self._stopped))

  def _prune(self) -> None:
    """Drops the requests whose callers gave up (caller holds the lock)."""
    if any(r.future.cancelled() for r in self._queue):
      self._queue = collections.deque(r for r in self._queue if not r.future.cancelled())

  def _take(self) -> list[_Request] | None:
    """The next batch (oldest request first; may be empty), or None once stopped."""
    with self._cond:
      while not self._queue and self._stopped is None:
        self._cond.wait()
      if self._stopped is not None:
        return None
      self._prune()
      if not self._queue:
        return []
      key = self._queue[0].sampling
      deadline = time.monotonic() + self.max_wait_s
      while (sum(r.sampling == key and not r.future.cancelled() for r in self._queue)
             < self.batch_size and self._stopped is None
             and (left := deadline - time.monotonic()) > 0):
        self._cond.wait(left)
      if self._stopped is not None:
        return None
      batch = [r for r in self._queue if r.sampling == key][:self.batch_size]
      taken = {id(r) for r in batch}
      self._queue = collections.deque(r for r in self._queue if id(r) not in taken)
      self._in_flight = [r for r in batch if r.future.set_running_or_notify_cancel()]
      self._batch_started = time.monotonic() if self._in_flight else None
      return list(self._in_flight)

  def _run(self) -> None:
    reason = "the generation worker stopped"
    try:
      while (batch := self._take()) is not None:
        if batch:
          self._answer(batch)
    except BaseException as e:  # noqa: BLE001 -- reported, then every request fails with it
      reason = f"the generation worker stopped ({type(e).__name__}: {e})"
      log.critical("%s; requests are refused from now on", reason, exc_info=True)
    finally:
      self._stop(reason)

  def _answer(self, batch: list[_Request]) -> None:
    """Answers one batch; an Exception fails its requests and the worker goes on."""
    s = batch[0].sampling
    seed = s.seed if s.seed is not None else next(self._seeds)
    try:
      answers: list[Answer] = self.assistant.answer(
          [r.prompt for r in batch], temperature=s.temperature, top_p=s.top_p, seed=seed)
      if len(answers) != len(batch):
        raise RuntimeError(f"{len(answers)} answers to {len(batch)} prompts")
    except Exception as e:  # noqa: BLE001 -- handed to every request of the batch
      log.error("generation failed for %d request(s)", len(batch), exc_info=True)
      self._finish(batch, [None] * len(batch), e)
      return
    self.batches += 1
    self.answered += len(batch)
    self._finish(batch, answers)

  def _finish(self, batch: list[_Request], answers: list[Answer | None],
              error: Exception | None = None) -> None:
    with self._cond:
      self._in_flight = []
      self._batch_started = None
    for r, a in zip(batch, answers):
      _settle(r.future, a, error)
