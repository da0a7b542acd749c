"""The one batching loop of the ``transformers`` sampling servers (no verl import).

Both the CPU backend's ``hf`` rollout server (:mod:`collabllm_verl.recipe.cpu.hf_server`, token in/token out
for verl's agent loops) and the chat endpoint over a checkpoint (:mod:`collabllm_verl.recipe.serving.hf_chat`)
queue their requests in a :class:`RequestBatcher`:

1. a request waits in the queue; the first one wakes the loop up;
2. the loop waits ``batch_wait_s`` seconds for more requests, then takes up to ``max_batch_size`` of them;
3. it splits them into groups of equal :class:`~.hf_generation.SamplingSettings`
   (:func:`~.hf_generation.group_by_settings`) and samples each group with one call of the server's sampling
   function in a worker thread, so that the event loop stays responsive;
4. each request's future receives its :class:`~.hf_generation.GenerationResult` (or the sampling error).

Sampling holds a lock that :meth:`RequestBatcher.exclusive` also takes (the rollout server loads trainer
weights under it), and :meth:`RequestBatcher.abort_all` ends queued requests at once and asks the running
batch to stop after its current decoding step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence

from collabllm_verl.recipe.serving.hf_generation import (
    STOP_ABORTED,
    STOP_LENGTH,
    GenerationRequest,
    GenerationResult,
    group_by_settings,
)

__all__ = ["RequestBatcher", "SampleFn"]

logger = logging.getLogger(__name__)

SampleFn = Callable[..., list[GenerationResult]]
"""``sample(requests, should_abort=callable) -> results``: samples requests that share one
:class:`~.hf_generation.SamplingSettings` (synchronously; run in a worker thread), one result per request in
order; ``should_abort()`` turns True when the batch is to stop early (see
:func:`~.hf_generation.generate_batch`, usually bound with :func:`functools.partial`)."""


class _Pending:
    """A queued request and the future its caller awaits (compared by identity)."""

    __slots__ = ("future", "request", "request_id")

    def __init__(self, request: GenerationRequest, future: asyncio.Future, request_id: str | None) -> None:
        self.request = request
        self.future = future
        self.request_id = request_id


class RequestBatcher:
    """Queue of sampling requests served in batches by one loop (see the module docstring).

    The asyncio objects (queue wake-up, lock, loop task) are created on first use, in the event loop of that
    call; every later call must come from the same loop.

    Args:
        sample: the sampling function (:data:`SampleFn`).
        max_batch_size: most requests taken from the queue per round (>= 1).
        batch_wait_s: seconds to collect requests after the first one before sampling (>= 0).
        name: label of log lines (``"hf rollout"``, ``"hf chat"``).

    Raises:
        ValueError: ``max_batch_size < 1`` or ``batch_wait_s < 0``.
    """

    def __init__(
        self, sample: SampleFn, *, max_batch_size: int, batch_wait_s: float, name: str = "hf"
    ) -> None:
        if int(max_batch_size) < 1 or float(batch_wait_s) < 0:
            raise ValueError(
                f"{name}: batching needs max_batch_size >= 1 and batch_wait_s >= 0, "
                f"got {max_batch_size} and {batch_wait_s}"
            )
        self._sample = sample
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_s = float(batch_wait_s)
        self.name = name
        self._pending: list[_Pending] = []  # queued
        self._taken: list[_Pending] = []  # popped by the loop this round, not yet answered
        self._running: list[_Pending] = []  # being sampled right now
        self._abort_flag = threading.Event()  # read by the sampling thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task | None = None
        self._stats: defaultdict[str, float] = defaultdict(float)

    # ------------------------------------------------------------------ requests

    async def submit(self, request: GenerationRequest, request_id: str | None = None) -> GenerationResult:
        """Queue ``request`` and wait for its result.

        Args:
            request: the prompt, its settings and token budget.
            request_id: id that :meth:`abort_pending` and :meth:`abort_all` report (optional).

        Returns:
            The request's result; ``stop_reason="aborted"`` (and the tokens produced so far) when it was aborted.

        Raises:
            Exception: whatever the sampling function raised for the request's batch.
            RuntimeError: called from another event loop than the first call.
        """
        self._ensure_started()
        future = self._loop.create_future()
        self._pending.append(_Pending(request, future, request_id))
        self._wakeup.set()
        return await future

    def abort_pending(self, request_id: str) -> bool:
        """End the queued request ``request_id`` with ``stop_reason="aborted"``; True when one was queued (a request
        already taken for sampling runs to its end)."""
        for item in self._pending:
            if item.request_id == request_id:
                self._pending.remove(item)
                _finish(item, GenerationResult([], [], STOP_ABORTED))
                return True
        return False

    async def abort_all(self) -> list[str | None]:
        """End every queued request at once (``"aborted"``, no tokens) and stop the running batch after its current
        decoding step (``"aborted"``, the tokens produced so far); returns once no batch is sampling.

        Returns:
            The ids of the requests that were waiting or running (in queue order, then the running ones).
        """
        self._ensure_started()
        waiting = self._pending + [item for item in self._taken if item not in self._running]
        self._pending = []
        request_ids = [item.request_id for item in waiting + self._running if not item.future.done()]
        for item in waiting:
            _finish(item, GenerationResult([], [], STOP_ABORTED))
        self._abort_flag.set()
        async with self._lock:  # the running batch sees the flag after its current step
            self._abort_flag.clear()
        return request_ids

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the sampling lock for the ``async with`` block: no batch is sampled meanwhile (weight loads)."""
        self._ensure_started()
        async with self._lock:
            yield

    async def drain(self) -> None:
        """Wait until no request is queued or being sampled."""
        # A short poll: the queue changes in several places (submit, loop, aborts), and an "idle" event would have
        # to be kept in step with all of them for this rarely called wait.
        while self._pending or self._taken:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def stats(self) -> dict[str, float]:
        """Counters since creation: ``batches`` (sampling calls), ``requests``, ``generated_tokens``, ``truncated``
        (results cut at their token budget) and ``generation_seconds`` (wall seconds spent sampling)."""
        return dict(self._stats)

    # ------------------------------------------------------------------ the loop

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._lock = asyncio.Lock()
            self._task = loop.create_task(self._run(), name=f"{self.name} batching loop")
        elif loop is not self._loop:
            raise RuntimeError(
                f"{self.name}: the request batcher serves the event loop of its first request; "
                "create one per event loop"
            )

    async def _run(self) -> None:
        """Wait for requests, collect more for ``batch_wait_s``, sample them group by group; forever."""
        while True:
            await self._wakeup.wait()
            if self.batch_wait_s > 0:
                await asyncio.sleep(self.batch_wait_s)
            batch, self._pending = self._pending[: self.max_batch_size], self._pending[self.max_batch_size :]
            if not self._pending:
                self._wakeup.clear()
            self._taken = batch
            for items in group_by_settings(batch, lambda item: item.request.settings):
                await self._sample_group(items)
            self._taken = []

    async def _sample_group(self, items: Sequence[_Pending]) -> None:
        async with self._lock:
            items = [item for item in items if not item.future.done()]  # aborted or cancelled while queued
            if not items:
                return
            self._running = items
            started = time.perf_counter()
            try:
                results = await asyncio.to_thread(
                    self._sample, [item.request for item in items], should_abort=self._abort_flag.is_set
                )
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} requests")
            except Exception as exc:  # every request of the batch gets the error
                logger.exception("%s: sampling a batch of %d requests failed", self.name, len(items))
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            finally:
                self._running = []
            self._stats["batches"] += 1
            self._stats["requests"] += len(items)
            self._stats["generated_tokens"] += sum(len(r.token_ids) for r in results)
            self._stats["truncated"] += sum(r.stop_reason == STOP_LENGTH for r in results)
            self._stats["generation_seconds"] += time.perf_counter() - started
            for item, result in zip(items, results, strict=True):
                _finish(item, result)


def _finish(item: _Pending, result: GenerationResult) -> None:
    if not item.future.done():
        item.future.set_result(result)
