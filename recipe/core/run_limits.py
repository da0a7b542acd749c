"""Run-wide LLM limits: one concurrency limit and one request rate per (model, endpoint) for a whole Ray run.

verl runs the agent loops (user simulator) in ``rollout.agent.num_workers`` processes and the reward (judges)
in others, on every node; per-process limits multiply by the number of processes. With
``run_max_concurrency`` / ``run_requests_per_minute`` set in an LLM role's settings, every process of the
run draws from one named Ray actor, :class:`RunLimits` (:data:`ACTOR_NAME`, in the job's namespace, so one
per run; the trainer's driver creates it, :func:`create_actor`, and a worker that finds none creates it).

No round trip per call on the hot path: a process takes permits in **leases** of up to ``BATCH`` at a time
(as many as it has callers waiting) and keeps reusing a permit for its own callers until the lease is
``LEASE_S`` old; a permit no call of the process took again within ``IDLE_S``, or whose lease expired, goes
back to the actor (a call that is not awaited). Request starts (the rate) are taken the same way, in batches of up to
``BATCH``, from a token bucket that fills at ``run_requests_per_minute / 60`` per second and holds at most
``max(1, rate * BURST_S)`` tokens, so any 60 s window sees at most ``run_requests_per_minute`` plus one
bucket of starts.

Outside Ray (``ray.is_initialized()`` false: the CLIs, unit tests) the run-wide limits do nothing and the
per-process limits of the LLM-call layer (``max_concurrency``, ``requests_per_minute``) are the only ones;
a warning says so once. Async code only: every actor call is awaited (``await handle.method.remote()``),
the lookup runs in a thread. No verl import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["ACTOR_NAME", "RunLimits", "create_actor", "describe_stats", "reset_client", "run_slot"]

logger = logging.getLogger(__name__)

ACTOR_NAME = "collabllm_run_limits"
"""Name of the run's limits actor (job namespace)."""

LEASE_S = 2.0
"""Seconds a process may keep reusing a permit before it goes back to the actor (fairness between processes)."""
BATCH = 8
"""Most permits or request starts a process takes from the actor in one call."""
IDLE_S = 0.05
"""Seconds a free permit stays in a process for its next call before it goes back to the actor."""
BURST_S = 1.0
"""Seconds of request starts the run-wide token bucket holds at most (>= one start)."""


class RunLimitsState:
    """The actor's bookkeeping, plain asyncio (one event loop: the actor's); tested without Ray.

    Per key (``"<model> at <endpoint>"``): the concurrency ``limit``, permits ``in_use`` (granted to
    processes, whether in flight or held in a lease), the most ever in use, and a token bucket of starts.
    The smallest limit (and rate) asked for a key applies (every process of a run asks for the same; a
    smaller one is logged once when it arrives).
    """

    def __init__(self) -> None:
        self._limit: dict[str, int] = {}
        self._in_use: dict[str, int] = {}
        self._max_in_use: dict[str, int] = {}
        self._granted: dict[str, int] = {}
        self._changed: dict[str, asyncio.Condition] = {}
        self._bucket: dict[str, list[float]] = {}  # key -> [tokens, last refill (monotonic s), rate per s]
        self._bucket_lock: dict[str, asyncio.Lock] = {}

    def _condition(self, key: str, limit: int) -> asyncio.Condition:
        if key not in self._limit:
            self._in_use[key], self._max_in_use[key], self._granted[key] = 0, 0, 0
            self._changed[key] = asyncio.Condition()
            self._limit[key] = int(limit)
        elif int(limit) < self._limit[key]:
            # the smallest limit asked for applies, so it cannot flip from call to call
            logger.warning(
                "run limits: the limit of %s goes down from %d to %d", key, self._limit[key], limit
            )
            self._limit[key] = int(limit)
        return self._changed[key]

    async def acquire(self, key: str, limit: int, want: int) -> int:
        """Wait until a permit of ``key`` is free, then grant ``min(want, free)`` (>= 1) permits."""
        changed = self._condition(key, limit)
        async with changed:
            await changed.wait_for(lambda: self._in_use[key] < self._limit[key])
            granted = max(1, min(int(want), self._limit[key] - self._in_use[key]))
            self._in_use[key] += granted
            self._granted[key] += granted
            self._max_in_use[key] = max(self._max_in_use[key], self._in_use[key])
            return granted

    async def release(self, key: str, count: int) -> None:
        """Return ``count`` permits of ``key``."""
        changed = self._changed[key]
        async with changed:
            self._in_use[key] = max(0, self._in_use[key] - int(count))
            changed.notify_all()

    async def take_starts(self, key: str, requests_per_minute: float, want: int) -> int:
        """Wait until at least one request start of ``key`` is due, then grant up to ``want`` of them."""
        bucket = self._bucket.setdefault(key, [1.0, time.monotonic(), float(requests_per_minute) / 60.0])
        # the smallest rate asked for applies
        bucket[2] = rate = min(bucket[2], float(requests_per_minute) / 60.0)
        lock = self._bucket_lock.setdefault(key, asyncio.Lock())
        async with lock:  # FIFO between processes
            capacity = max(1.0, rate * BURST_S)
            while True:
                now = time.monotonic()
                bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
                bucket[1] = now
                if bucket[0] >= 1.0:
                    granted = int(min(float(want), bucket[0]))
                    bucket[0] -= granted
                    return granted
                await asyncio.sleep((1.0 - bucket[0]) / rate)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per key: ``limit``, ``in_use`` now, ``max_in_use`` ever, ``granted`` permits in total."""
        return {
            key: {
                "limit": self._limit[key],
                "in_use": self._in_use[key],
                "max_in_use": self._max_in_use[key],
                "granted": self._granted[key],
            }
            for key in self._limit
        }


def describe_stats(stats: dict[str, dict[str, int]]) -> str:
    """One line for :meth:`RunLimitsState.stats`: ``"<key>: at most M of L in use, G granted; ..."``
    (empty when no run-wide concurrency limit was used)."""
    return "; ".join(
        f"{key}: at most {s['max_in_use']} of {s['limit']} in use, {s['granted']} granted"
        for key, s in sorted(stats.items())
    )


def _actor_class():
    import ray

    # num_cpus=0: it takes no CPU from the trainer's resource pools; async methods: one event loop.
    return ray.remote(num_cpus=0, max_concurrency=10_000)(RunLimitsState)


RunLimits = None  # the Ray actor class, made on first use (importing this module must not need Ray)


def create_actor() -> Any:
    """The run's :class:`RunLimitsState` actor (created on the first call, then reused); needs Ray."""
    global RunLimits
    if RunLimits is None:
        RunLimits = _actor_class()
    return RunLimits.options(name=ACTOR_NAME, get_if_exists=True).remote()


class _Pool:
    """One process's share of a key's permits (or request starts), for one event loop.

    ``take()`` returns at once when the process holds a free permit (no round trip), else it waits for a
    lease from the actor. ``give(granted_at)`` hands the permit to the next waiting caller, or keeps it free
    here for :data:`IDLE_S` (a closed loop of calls takes it again at once), while its lease is younger than
    :data:`LEASE_S`; an old or idle permit goes back to the actor. Request starts are never given back.
    """

    def __init__(self, fetch, give_back) -> None:
        self._fetch_from_actor = fetch  # async (want) -> granted
        self._give_back = give_back  # (count) -> None, or None for request starts (not returned)
        self._free: list[tuple[float, float]] = []  # (granted at, freed at) of free permits held here
        self._waiters: deque[asyncio.Future] = deque()
        self._fetching = False
        self._task: asyncio.Future | None = None  # the running fetch (a reference keeps it alive)
        self._timer: asyncio.TimerHandle | None = None

    def _young(self, granted_at: float) -> bool:
        return self._give_back is None or time.monotonic() - granted_at < LEASE_S

    async def take(self) -> float:
        while self._free and not self._waiters:
            granted_at, _ = self._free.pop()
            if self._young(granted_at):
                return granted_at
            self._give_back(1)
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if not self._fetching:
            self._fetching = True
            self._task = asyncio.ensure_future(self._fetch())
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give(future.result())
            raise

    async def _fetch(self) -> None:
        try:
            while any(not w.done() for w in self._waiters):
                want = min(BATCH, sum(not w.done() for w in self._waiters))
                granted = await self._fetch_from_actor(want)
                now = time.monotonic()
                for _ in range(granted):
                    self._hand(now)
        except Exception as exc:  # noqa: BLE001  (the actor is gone: the waiting callers fail with the reason)
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(RuntimeError(f"run-wide LLM limits actor failed: {exc}"))
        finally:
            self._fetching = False

    def _hand(self, granted_at: float) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(granted_at)
                return
        self._free.append((granted_at, time.monotonic()))
        if self._give_back is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(IDLE_S, self._return_idle)

    def _return_idle(self) -> None:
        """Give the actor back every permit free here for :data:`IDLE_S` or longer, or past its lease."""
        self._timer = None
        now = time.monotonic()
        keep = [(g, f) for g, f in self._free if now - f < IDLE_S and now - g < LEASE_S]
        if len(keep) < len(self._free):
            self._give_back(len(self._free) - len(keep))
        self._free = keep
        if keep:
            self._timer = asyncio.get_running_loop().call_later(IDLE_S, self._return_idle)

    def give(self, granted_at: float) -> None:
        if not self._young(granted_at):
            self._give_back(1)
            return
        self._hand(granted_at)


class _Client:
    """The process's view of the run's actor: one :class:`_Pool` per (key, kind, limit, event loop)."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._looked_up = False
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._warned = False

    async def handle(self) -> Any:
        if not self._looked_up:
            import ray

            handle = await asyncio.to_thread(create_actor) if ray.is_initialized() else None
            self._handle, self._looked_up = handle, True
        return self._handle

    def pool(self, handle: Any, key: str, kind: str, limit: float) -> _Pool:
        loop = asyncio.get_running_loop()
        with self._lock:
            pools = self._pools.setdefault(loop, {})
            pool = pools.get((key, kind, limit))
            if pool is None:
                if kind == "slots":

                    async def fetch(want: int) -> int:
                        return await handle.acquire.remote(key, int(limit), want)

                    def give_back(count: int) -> None:
                        handle.release.remote(key, count)  # not awaited: off the hot path

                    pool = _Pool(fetch, give_back)
                else:

                    async def fetch(want: int) -> int:
                        return await handle.take_starts.remote(key, float(limit), want)

                    pool = _Pool(fetch, None)
                pools[(key, kind, limit)] = pool
            return pool


_client = _Client()


def reset_client() -> None:
    """Forget the actor handle and the pools of this process (tests; a new Ray session)."""
    global _client
    _client = _Client()


@contextlib.asynccontextmanager
async def run_slot(settings: Any) -> AsyncIterator[None]:
    """Hold one run-wide permit (and take one run-wide request start) of ``settings``' model and endpoint.

    ``settings`` is an ``LLMSettings`` (``describe()``, ``run_max_concurrency``,
    ``run_requests_per_minute``). Does nothing when neither run-wide limit is set, or outside Ray (then
    once a warning: the per-process limits apply).

    Raises:
        RuntimeError: the run's actor failed (the message says so).
    """
    if not settings.shares_run_limits:
        yield
        return
    client = _client
    handle = await client.handle()
    if handle is None:
        if not client._warned:
            client._warned = True
            logger.warning(
                "run_max_concurrency/run_requests_per_minute of %s need a Ray run; outside Ray only the "
                "per-process limits (max_concurrency, requests_per_minute) apply",
                settings.model,
            )
        yield
        return
    key = settings.describe()  # "<model> at <endpoint>", any key-like text masked
    slots = None
    granted_at = 0.0
    if settings.run_max_concurrency is not None:
        slots = client.pool(handle, key, "slots", settings.run_max_concurrency)
        granted_at = await slots.take()
    try:
        if settings.run_requests_per_minute is not None:
            await client.pool(handle, key, "starts", settings.run_requests_per_minute).take()
        yield
    finally:
        if slots is not None:
            slots.give(granted_at)
