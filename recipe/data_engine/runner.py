"""Run many data-engine tasks at once: resumable, with retries, a progress bar and a cost summary.

* **Resumable.** Each finished task is appended to a :class:`~collabllm_verl.recipe.core.run_store.RunStore`
  (one JSON line, written whole and fsynced) under its key (a hash of the task); tasks already there are
  skipped, so a re-run after a kill continues where the killed run stopped.
* **Failures.** A task that raises :class:`~.task.TaskFailure` or
  :class:`~collabllm_verl.recipe.core.llm_client.LLMCallError` is tried again up to ``task_retries`` times;
  any other error (data, configuration) is not retried. A task that still fails is reported in the
  summary and written nowhere: its rows never enter the dataset, and the next run tries it again.
* **Concurrency.** At most ``max_concurrent_tasks`` tasks run at once; LLM requests are further bounded
  per model and endpoint by the LLM layer's per-process limits, shared by every task.
* **Progress and cost.** A tqdm bar with the ETA, the running cost (litellm's price map) and the calls so
  far; the summary lists calls, retries, failures, tokens and cost per purpose (``user_simulator``,
  ``assistant:candidate``, ``assistant:future``, ``judge:<metric>``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm.auto import tqdm

from collabllm_verl.recipe.core.llm_client import LLMCallError, llm_stats, usage_scope
from collabllm_verl.recipe.core.run_store import RunStore

from .task import EngineTask, TaskFailure

__all__ = ["RunSummary", "llm_usage_since", "run_tasks"]

logger = logging.getLogger(__name__)

_USAGE_COUNTERS = (
    "calls",
    "requests",
    "retries",
    "failures",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cost_unknown",
)
_RETRYABLE = (TaskFailure, LLMCallError)


def llm_usage_since(before: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """LLM-call counters accumulated since the ``llm_stats()`` snapshot ``before``.

    Returns:
        ``{"total": {...}, "<purpose>": {...}}`` with ``calls``, ``requests``, ``retries``, ``failures``,
        ``prompt_tokens``, ``completion_tokens`` (model tokens as the servers report them), ``cost_usd``
        and ``cost_unknown`` (requests to models missing from litellm's price map: not in ``cost_usd``).
    """
    now = llm_stats()
    usage: dict[str, dict[str, float]] = {}
    for key, value in now.items():
        purpose, _, counter = key.rpartition("/")
        if counter in _USAGE_COUNTERS:
            usage.setdefault(purpose or "total", {})[counter] = value - before.get(key, 0.0)
    return {purpose: counters for purpose, counters in usage.items() if purpose == "total" or counters.get("calls")}


@dataclass
class RunSummary:
    """What one run did.

    Attributes:
        tasks: tasks selected.
        resumed: tasks finished by an earlier run (skipped).
        finished: tasks finished by this run.
        failed: tasks that failed after their retries.
        retries: task attempts repeated after a retryable failure.
        wall_s: seconds of wall time.
        llm: :func:`llm_usage_since` of the run.
        failures: one ``{"key", "conv_id", "error", "attempts"}`` per failed task.
    """

    tasks: int = 0
    resumed: int = 0
    finished: int = 0
    failed: int = 0
    retries: int = 0
    wall_s: float = 0.0
    llm: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (for the manifest)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """A human-readable summary, one line per item."""
        total = self.llm.get("total", {})
        out = [
            f"tasks: {self.tasks} selected, {self.resumed} done earlier, {self.finished} done now, "
            f"{self.failed} failed ({self.retries} retried attempts); wall time {self.wall_s:.1f} s",
            f"LLM calls: {total.get('calls', 0):.0f} ({total.get('requests', 0):.0f} requests, "
            f"{total.get('retries', 0):.0f} retries, {total.get('failures', 0):.0f} failed), tokens "
            f"{total.get('prompt_tokens', 0):.0f} in / {total.get('completion_tokens', 0):.0f} out, "
            f"cost ${total.get('cost_usd', 0):.4f}"
            + (f" (+ {total['cost_unknown']:.0f} requests to unpriced models)" if total.get("cost_unknown") else ""),
        ]
        for purpose, c in sorted(self.llm.items()):
            if purpose != "total":
                out.append(
                    f"  {purpose}: {c.get('calls', 0):.0f} calls, {c.get('failures', 0):.0f} failed, tokens "
                    f"{c.get('prompt_tokens', 0):.0f} / {c.get('completion_tokens', 0):.0f}, "
                    f"${c.get('cost_usd', 0):.4f}"
                )
        out.extend(f"  failed task conv_id={f['conv_id']}: {f['error']}" for f in self.failures[:10])
        if len(self.failures) > 10:
            out.append(f"  ... and {len(self.failures) - 10} more")
        return out


async def _attempts(
    task: EngineTask, work: Callable[[EngineTask], Awaitable[dict[str, Any]]], task_retries: int
) -> tuple[dict[str, Any] | None, str | None, int]:
    """(record, None, attempts) on success, (None, error, attempts) on failure."""
    for attempt in range(1, task_retries + 2):
        started = time.perf_counter()
        try:
            with usage_scope() as usage:
                record = await work(task)
        except _RETRYABLE as exc:
            error = f"{type(exc).__name__}: {exc}"
            if attempt <= task_retries:
                logger.warning("task conv_id=%s failed (attempt %d), retrying: %s", task.conv_id, attempt, error)
                continue
            return None, error, attempt
        except Exception as exc:  # a data or configuration error of one task: reported, not retried
            logger.exception("task conv_id=%s failed", task.conv_id)
            return None, f"{type(exc).__name__}: {exc}", attempt
        record = {
            **record,
            "key": task.key,
            "conv_id": task.conv_id,
            "attempts": attempt,
            "seconds": round(time.perf_counter() - started, 3),
            "cost_usd": float(usage.get("cost_usd", 0.0)),
        }
        return record, None, attempt
    raise AssertionError("unreachable")  # pragma: no cover


async def run_tasks(
    tasks: Sequence[EngineTask],
    work: Callable[[EngineTask], Awaitable[dict[str, Any]]],
    *,
    store: RunStore,
    max_concurrent_tasks: int = 16,
    task_retries: int = 1,
    progress: bool = True,
    desc: str = "tasks",
) -> RunSummary:
    """Run ``work`` on every task not yet in ``store`` and append each finished record to it.

    Args:
        tasks: the tasks (keys must be unique).
        work: builds one task's record (a JSON-serialisable dict, e.g. ``{"rows": [...]}``); the runner adds
            ``key``, ``conv_id``, ``attempts``, ``seconds`` and ``cost_usd``.
        store: the run's record file.
        max_concurrent_tasks: tasks in flight at once (>= 1).
        task_retries: extra attempts of a task after a retryable failure (>= 0).
        progress: show the progress bar.
        desc: the progress bar's label.

    Returns:
        The run's :class:`RunSummary`.

    Raises:
        ValueError: ``max_concurrent_tasks`` < 1 or ``task_retries`` < 0.
    """
    if max_concurrent_tasks < 1 or task_retries < 0:
        raise ValueError("--max_concurrent_tasks must be >= 1 and --task_retries >= 0")
    started, before = time.perf_counter(), llm_stats()
    pending = [t for t in tasks if t.key not in store]
    summary = RunSummary(tasks=len(tasks), resumed=len(tasks) - len(pending))
    if summary.resumed:
        logger.info("resuming: %d of %d tasks were finished by an earlier run", summary.resumed, len(tasks))
    limit = asyncio.Semaphore(max_concurrent_tasks)
    bar = tqdm(total=len(pending), desc=desc, unit="task", disable=not progress, dynamic_ncols=True)

    async def one(task: EngineTask) -> None:
        async with limit:
            record, error, attempts = await _attempts(task, work, task_retries)
        summary.retries += attempts - 1
        if record is not None:
            await asyncio.to_thread(store.append, record)
            summary.finished += 1
        else:
            summary.failed += 1
            summary.failures.append({"key": task.key, "conv_id": task.conv_id, "error": error, "attempts": attempts})
            logger.error("task conv_id=%s failed after %d attempt(s): %s", task.conv_id, attempts, error)
        total = llm_usage_since(before)["total"]
        cost, calls = total.get("cost_usd", 0.0), int(total.get("calls", 0))
        bar.set_postfix(cost=f"${cost:.4f}", calls=calls, failed=summary.failed)
        bar.update(1)

    try:
        await asyncio.gather(*(one(task) for task in pending))
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - started
    summary.llm = llm_usage_since(before)
    summary.failures.sort(key=lambda f: f["conv_id"])
    return summary
