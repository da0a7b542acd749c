"""One resumable runner for many independent async tasks: evaluation conversations, data-engine tasks.

* **Resumable.** Every result is appended to a :class:`~collabllm_verl.recipe.core.run_store.RunStore` as
  soon as it is ready (one JSON line, written whole and fsynced). A task whose key already holds a finished
  record is skipped, so running the same command again after a kill continues where the killed run stopped.
* **Bounded concurrency.** At most ``max_concurrent`` tasks are in flight; they are started in input order.
* **Retries.** A task that raises one of the ``retry_on`` exceptions is tried again, at most ``retries``
  times, through :mod:`tenacity`. The wait before retry ``k`` (1-based) is
  ``min(backoff_max_s, backoff_initial_s * 2 ** (k - 1))`` seconds (:meth:`TaskRunnerSettings.backoff_waits`);
  the sleep function is injectable, so tests check the waits instead of measuring them.
* **Failures.** A task that still raises one of the ``fail_on`` exceptions is a *failure*: it is counted,
  logged and listed in the :class:`TaskRunSummary`, and it never yields a finished record, so it stays out
  of every score and is tried again by the next run. A :class:`TaskFailed` may carry a ``record`` that
  describes the failure (an unfinished conversation): it is stored, so the outputs show it, but it does not
  count as finished. Any other exception stops the run: the tasks in flight are cancelled, the records
  written so far are kept and the exception propagates.
* **Failure budget.** When more than ``failure_budget`` (a share) of the tasks this run started with have
  failed, the run stops with :class:`FailureBudgetExceeded`, whose message says how many failed and shows
  the last errors. The outcome is then already certain to exceed the budget, so stopping early only saves
  time and money.
* **Cost.** After the first :data:`PROJECT_AFTER` tasks of a run settle, one line on stderr gives the cost
  per task and the projected cost of the run's tasks, simulator and judges apart
  (:func:`~collabllm_verl.recipe.core.cost.projection_text`). With ``max_cost_usd`` set, the run stops with
  :class:`~collabllm_verl.recipe.core.cost.BudgetExceeded` as soon as this run's LLM spend (every call of the
  process since the run started) exceeds it: tasks in flight are cancelled, the finished records are kept,
  and the same command with a higher budget continues without redoing them. The budget bounds one run (one
  command); the spend of earlier runs is not counted again.
* **Progress.** A tqdm bar (stderr) with the tasks done, ETA, failures and a caller-supplied postfix.

No verl import.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from tqdm.auto import tqdm

from collabllm_verl.recipe.core.cost import BudgetExceeded, check_budget, projection_text, spend_by_role
from collabllm_verl.recipe.core.run_store import RunStore
from collabllm_verl.recipe.core.validation import check_backoff_order

__all__ = [
    "DEFAULT_FAILURE_BUDGET",
    "BudgetExceeded",
    "FailedTask",
    "FailureBudgetExceeded",
    "TaskFailed",
    "TaskOutcome",
    "TaskRunSummary",
    "TaskRunner",
    "TaskRunnerSettings",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PROJECT_AFTER = 5
"""Settled tasks after which the runner prints its cost projection (or all of them, when fewer)."""

DEFAULT_FAILURE_BUDGET = 0.5
"""Share of a run's tasks that may fail before the run stops (the ``--failure_budget`` default of the CLIs)."""

Work = Callable[[T, int], Awaitable[Mapping[str, Any]]]
"""``work(task, attempt)`` returns the task's record (a JSON-serialisable mapping); ``attempt`` is 1-based."""


class TaskFailed(RuntimeError):
    """A task could not produce a trustworthy result.

    Args:
        message: what went wrong (no secrets).
        record: optional JSON-serialisable record describing the failure; the runner stores it under the
            task's key (it is not a finished record: the next run tries the task again).
    """

    def __init__(self, message: str, *, record: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.record = dict(record) if record is not None else None


class TaskRunnerSettings(BaseModel):
    """How a :class:`TaskRunner` runs its tasks (a frozen pydantic model; unknown keys are refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_concurrent: int = Field(ge=1)
    """Tasks in flight at once (>= 1)."""
    retries: int = Field(ge=0)
    """Extra attempts of a task after a retryable failure (>= 0)."""
    failure_budget: float = Field(DEFAULT_FAILURE_BUDGET, ge=0.0, le=1.0)
    """Share in [0, 1] of the tasks this run started with that may fail; one more failure stops the run
    (1 never stops it)."""
    backoff_initial_s: float = Field(1.0, gt=0.0)
    """Seconds before the first retry of a task (> 0); doubled for every further retry."""
    backoff_max_s: float = Field(30.0, gt=0.0)
    """Longest wait in seconds before any retry (>= ``backoff_initial_s``)."""
    max_cost_usd: float | None = Field(None, gt=0.0)
    """Most USD this run's LLM calls may spend (simulator, judges and every other priced call); one more
    call's cost stops the run, keeping the finished tasks (None: no budget)."""
    progress: bool = True
    """Show a progress bar (tqdm, on stderr)."""
    desc: str = "tasks"
    """Label of the progress bar."""
    unit: str = "task"
    """Unit of the progress bar."""

    @model_validator(mode="after")
    def _backoff_order(self) -> TaskRunnerSettings:
        return check_backoff_order(self, "backoff_initial_s", "backoff_max_s")

    def wait(self) -> wait_exponential:
        """The tenacity wait strategy of task retries (see :meth:`backoff_waits`)."""
        return wait_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s)

    def backoff_waits(self) -> list[float]:
        """Seconds waited before retry 1, 2, ..., ``retries``: ``min(backoff_max_s, backoff_initial_s * 2**(k-1))``."""
        wait = self.wait()
        states = [RetryCallState(None, None, (), {}) for _ in range(self.retries)]
        for attempt, state in enumerate(states, start=1):
            state.attempt_number = attempt
        return [float(wait(state)) for state in states]


@dataclass(frozen=True)
class TaskOutcome(Generic[T]):
    """How one task of this run ended.

    Attributes:
        task: the task.
        key: its key in the store.
        record: the stored record (the result, or a failure's record), or None when nothing was stored.
        error: ``"<ExceptionType>: <message>"`` of a failure, None on success.
        attempts: attempts made (1 .. retries + 1).
    """

    task: T
    key: str
    record: dict[str, Any] | None
    error: str | None
    attempts: int

    @property
    def failed(self) -> bool:
        """True when the task failed."""
        return self.error is not None


@dataclass
class FailedTask:
    """One failed task of a run.

    Attributes:
        key: the task's key.
        task: the task itself (not serialised).
        error: ``"<ExceptionType>: <message>"`` of the last attempt.
        attempts: attempts made.
    """

    key: str
    task: Any
    error: str
    attempts: int


@dataclass
class TaskRunSummary:
    """What one run did.

    Attributes:
        tasks: tasks given to the run.
        resumed: tasks finished by an earlier run (skipped).
        finished: tasks finished by this run.
        failed: tasks of this run that failed after their retries.
        retries: attempts repeated after a retryable failure, over all tasks.
        wall_s: seconds of wall time of the run.
        failures: one :class:`FailedTask` per failed task, in the order they failed.
    """

    tasks: int = 0
    resumed: int = 0
    finished: int = 0
    failed: int = 0
    retries: int = 0
    wall_s: float = 0.0
    failures: list[FailedTask] = field(default_factory=list)

    @property
    def started(self) -> int:
        """Tasks this run had to do (not finished earlier)."""
        return self.tasks - self.resumed


class FailureBudgetExceeded(RuntimeError):
    """More than the failure budget of a run's tasks failed: the run was stopped.

    Attributes:
        summary: the run's :class:`TaskRunSummary` at the stop (tasks still in flight were cancelled).
    """

    def __init__(self, summary: TaskRunSummary, budget: float, *, what: str = "tasks") -> None:
        self.summary = summary
        last = "; ".join(f.error for f in summary.failures[-3:])
        super().__init__(
            f"stopped: {summary.failed} of the {summary.started} {what} of this run failed, more than the failure "
            f"budget of {budget:.0%} (--failure_budget); last errors: {last}. The finished ones are kept: fix "
            "the cause and run the same command again to continue"
        )


class TaskRunner(Generic[T]):
    """Runs tasks concurrently into a :class:`RunStore`, with retries, a failure budget and a progress bar.

    Args:
        settings: concurrency, retries, back-off, failure budget and progress bar.
        store: where records go; its existing finished records are skipped.
        key: a task's key in the store (unique per task, stable across runs).
        describe: a task's name in log lines and error messages (e.g. ``"conv_id=3"``).
        retry_on: exception types that are retried (subject to ``settings.retries``).
        fail_on: exception types that make the task a failure once no retry is left (``retry_on`` types are
            failures too); any other exception stops the run.
        is_finished: whether a stored record is a finished one (default: every record); a stored record that
            is not finished is run again.
        sleep: the async sleep used between retries (tests pass a recorder).
        spend: ``{role: USD}`` spent so far by this process (default: the LLM-call layer's counters through
            :func:`~collabllm_verl.recipe.core.cost.spend_by_role`); the runner counts what it grows by.
    """

    def __init__(
        self,
        settings: TaskRunnerSettings,
        *,
        store: RunStore,
        key: Callable[[T], str],
        describe: Callable[[T], str] = str,
        retry_on: tuple[type[BaseException], ...] = (TaskFailed,),
        fail_on: tuple[type[BaseException], ...] = (TaskFailed,),
        is_finished: Callable[[Mapping[str, Any]], bool] = lambda record: True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        spend: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.key = key
        self.describe = describe
        self.retry_on = tuple(retry_on)
        self.fail_on = tuple({*fail_on, *retry_on})
        self.is_finished = is_finished
        self.sleep = sleep
        self.spend = spend or _process_spend
        self._spend_start: dict[str, float] = {}
        self._writes: set[asyncio.Future] = set()  # appends in flight (a stopped run waits for them)

    def spent(self) -> dict[str, float]:
        """``{role: USD}`` (and ``"unpriced"`` requests) spent since the current run started."""
        now = self.spend()
        return {k: float(v) - self._spend_start.get(k, 0.0) for k, v in now.items()}

    def pending(self, tasks: Sequence[T]) -> list[tuple[str, T]]:
        """``(key, task)`` of the tasks without a finished record, in input order.

        Raises:
            ValueError: two tasks share a key.
        """
        done = {r[self.store.key_field] for r in self.store.records() if self.is_finished(r)}
        seen: dict[str, T] = {}
        for task in tasks:
            key = self.key(task)
            if key in seen:
                raise ValueError(f"tasks {self.describe(seen[key])} and {self.describe(task)} share the key {key}")
            seen[key] = task
        return [(key, task) for key, task in seen.items() if key not in done]

    async def run(
        self,
        tasks: Sequence[T],
        work: Work[T],
        *,
        postfix: Callable[[TaskOutcome[T]], Mapping[str, Any]] | None = None,
    ) -> TaskRunSummary:
        """Run ``work`` on every pending task and store each result as soon as it is ready.

        Args:
            tasks: the run's tasks (keys unique).
            work: builds one task's record; the runner adds the key field when the record lacks it.
            postfix: called after each task with its outcome; returns the progress bar's postfix (the
                runner adds ``failed``).

        Returns:
            The run's :class:`TaskRunSummary` (failures in the order they happened).

        Raises:
            FailureBudgetExceeded: too many failures (see the module docstring).
            BudgetExceeded: this run's LLM spend exceeded ``settings.max_cost_usd`` (its ``summary`` is the
                run's :class:`TaskRunSummary` at the stop).
            ValueError: two tasks share a key, or a record holds another task's key.
            Exception: any exception of ``work`` that is not in ``fail_on`` (other tasks are cancelled).
        """
        started = time.perf_counter()
        self._spend_start = {k: float(v) for k, v in self.spend().items()}
        pending = self.pending(tasks)
        summary = TaskRunSummary(tasks=len(tasks), resumed=len(tasks) - len(pending))
        if summary.resumed:
            logger.info(
                "resuming: %d of %d %ss were finished by an earlier run",
                summary.resumed,
                len(tasks),
                self.settings.unit,
            )
        bar = tqdm(
            total=len(tasks),
            initial=summary.resumed,
            desc=self.settings.desc,
            unit=self.settings.unit,
            disable=not self.settings.progress,
            dynamic_ncols=True,
        )
        queue = iter(pending)

        async def worker() -> None:
            for key, task in queue:  # one shared iterator: every task is taken by exactly one worker
                outcome = await self._attempts(key, task, work)
                await self._settle(outcome, summary)
                bar.set_postfix({**(postfix(outcome) if postfix else {}), "failed": summary.failed}, refresh=False)
                bar.update(1)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.settings.max_concurrent, len(pending)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await asyncio.gather(*self._writes, return_exceptions=True)  # records of finished tasks are kept
            raise
        finally:
            bar.close()
            summary.wall_s = time.perf_counter() - started
        return summary

    async def _attempts(self, key: str, task: T, work: Work[T]) -> TaskOutcome[T]:
        """Run one task with its retries; a failure in ``fail_on`` becomes an outcome, others propagate."""
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.retries + 1),
            wait=self.settings.wait(),
            retry=retry_if_exception_type(self.retry_on),
            sleep=self.sleep,
            before_sleep=lambda state: logger.warning(
                "%s %s failed (attempt %d), retrying in %.1f s: %s",
                self.settings.unit,
                self.describe(task),
                state.attempt_number,
                state.upcoming_sleep,
                _error_text(state.outcome.exception()),
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    record = await work(task, attempts)
        except self.fail_on as exc:
            if not isinstance(exc, self.retry_on):
                logger.error("%s %s failed", self.settings.unit, self.describe(task), exc_info=exc)
            return TaskOutcome(task, key, getattr(exc, "record", None), _error_text(exc), attempts)
        return TaskOutcome(task, key, self._keyed(record, key), None, attempts)

    def _keyed(self, record: Mapping[str, Any], key: str) -> dict[str, Any]:
        field_name = self.store.key_field
        if record.get(field_name, key) != key:
            raise ValueError(f"a record of task key {key} holds the key {record[field_name]!r}")
        return {**record, field_name: key}

    async def _settle(self, outcome: TaskOutcome[T], summary: TaskRunSummary) -> None:
        """Store the outcome's record, count it, and stop the run once the failure budget is spent."""
        summary.retries += outcome.attempts - 1
        if outcome.record is not None:
            record = self._keyed(outcome.record, outcome.key)
            write = asyncio.ensure_future(asyncio.to_thread(self.store.append, record))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
            await asyncio.shield(write)  # a stop cancels the worker, not the write
        if not outcome.failed:
            summary.finished += 1
        else:
            self._count_failure(outcome, summary)
        self._check_cost(summary)

    def _check_cost(self, summary: TaskRunSummary) -> None:
        """Print the projection once the first tasks settled; stop when the budget is spent."""
        settled = summary.finished + summary.failed
        if not settled:
            return
        spent = self.spent()
        if settled == min(PROJECT_AFTER, summary.started):
            tqdm.write(
                f"[{self.settings.desc}] "
                + projection_text(
                    spent,
                    done=settled,
                    total=summary.started,
                    unit=self.settings.unit,
                    budget_usd=self.settings.max_cost_usd,
                    budget_key="--max_cost_usd",
                ),
                file=sys.stderr,
            )
        try:
            check_budget(
                spent,
                self.settings.max_cost_usd,
                what=f"this run of {summary.started} {self.settings.unit}s",
                key="--max_cost_usd",
                then=f"{summary.finished} of this run's {self.settings.unit}s are finished and kept: run the "
                "same command with a higher --max_cost_usd to continue without redoing them",
            )
        except BudgetExceeded as stop:
            stop.summary = summary
            raise

    def _count_failure(self, outcome: TaskOutcome[T], summary: TaskRunSummary) -> None:
        """Count a failed task; stop the run once the failure budget is spent."""
        summary.failed += 1
        summary.failures.append(FailedTask(outcome.key, outcome.task, outcome.error or "", outcome.attempts))
        logger.error(
            "%s %s failed after %d attempt(s): %s",
            self.settings.unit,
            self.describe(outcome.task),
            outcome.attempts,
            outcome.error,
        )
        if summary.failed > self.settings.failure_budget * summary.started:
            raise FailureBudgetExceeded(summary, self.settings.failure_budget, what=f"{self.settings.unit}s")


def _process_spend() -> dict[str, float]:
    """This process's LLM spend by role (the LLM-call layer's counters)."""
    from collabllm_verl.recipe.core.llm_client import llm_stats  # litellm loads only when a runner runs

    return spend_by_role(llm_stats())


def _error_text(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
