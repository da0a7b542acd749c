"""Run many data-engine tasks at once through the core task runner, with a cost summary.

The runner (:class:`collabllm_verl.recipe.core.task_runner.TaskRunner`) makes the run resumable (each
finished task is one line of ``records.jsonl``, keyed by a hash of the task), bounds the tasks in flight
(LLM requests are further bounded per model and endpoint by the LLM layer's per-process limits), retries
and counts failures, and stops the run once the failure budget is spent. Here:

* **Failures.** A task that raises :class:`~.task.TaskFailure` or
  :class:`~collabllm_verl.recipe.core.llm_client.LLMCallError` is tried again up to ``retries`` times, with
  back-off; any other error (data, configuration) is not retried. A task that still fails is reported in the
  summary and written nowhere: its rows never enter the dataset, and the next run tries it again.
* **Records.** Each record gets ``key``, ``conv_id``, ``attempts``, ``seconds`` and ``cost_usd``.
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

from collabllm_verl.recipe.core.llm_client import LLMCallError, Usage, llm_stats, usage_scope
from collabllm_verl.recipe.core.run_store import RunStore
from collabllm_verl.recipe.core.task_runner import (
    BudgetExceeded,
    FailureBudgetExceeded,
    TaskOutcome,
    TaskRunner,
    TaskRunnerSettings,
    TaskRunSummary,
)

from .task import EngineTask, TaskFailure

__all__ = ["RunSummary", "llm_usage_since", "run_tasks"]

logger = logging.getLogger(__name__)

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
        if counter in Usage.counter_names():
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
        failures: one ``{"key", "conv_id", "error", "attempts"}`` per failed task, by ``conv_id``.
        stopped: why the run stopped before its end (the failure budget was spent), else None.
    """

    tasks: int = 0
    resumed: int = 0
    finished: int = 0
    failed: int = 0
    retries: int = 0
    wall_s: float = 0.0
    llm: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None

    @classmethod
    def from_run(
        cls, run: TaskRunSummary, llm: dict[str, dict[str, float]], *, stopped: str | None = None
    ) -> RunSummary:
        """The data engine's summary of a core runner's summary."""
        failures = [
            {"key": f.key, "conv_id": f.task.conv_id, "error": f.error, "attempts": f.attempts} for f in run.failures
        ]
        return cls(
            tasks=run.tasks,
            resumed=run.resumed,
            finished=run.finished,
            failed=run.failed,
            retries=run.retries,
            wall_s=run.wall_s,
            llm=llm,
            failures=sorted(failures, key=lambda f: f["conv_id"]),
            stopped=stopped,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (for the manifest); ``stopped`` only when the run was stopped."""
        plain = asdict(self)
        if plain["stopped"] is None:
            del plain["stopped"]
        return plain

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
        if self.stopped:
            out.append(self.stopped)
        return out


async def run_tasks(
    tasks: Sequence[EngineTask],
    work: Callable[[EngineTask], Awaitable[dict[str, Any]]],
    *,
    store: RunStore,
    runner: TaskRunnerSettings,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> RunSummary:
    """Run ``work`` on every task not yet in ``store`` and append each finished record to it.

    Args:
        tasks: the tasks (keys must be unique).
        work: builds one task's record (a JSON-serialisable dict, e.g. ``{"rows": [...]}``); ``key``,
            ``conv_id``, ``attempts``, ``seconds`` and ``cost_usd`` are added.
        store: the run's record file.
        runner: tasks in flight, retries of a task (after :class:`~.task.TaskFailure` or ``LLMCallError``),
            back-off, failure budget, progress bar.
        sleep: the wait between retries (tests pass a recorder).

    Returns:
        The run's :class:`RunSummary`; ``stopped`` says why when the failure budget stopped it (the
        records finished until then are kept).

    Raises:
        ValueError: two tasks share a key.
    """
    before = llm_stats()

    async def attempt(task: EngineTask, number: int) -> dict[str, Any]:
        started = time.perf_counter()
        with usage_scope() as usage:
            record = await work(task)
        return {
            **record,
            "key": task.key,
            "conv_id": task.conv_id,
            "attempts": number,
            "seconds": round(time.perf_counter() - started, 3),
            "cost_usd": usage.cost_usd,
        }

    def postfix(outcome: TaskOutcome[EngineTask]) -> dict[str, Any]:
        total = llm_usage_since(before)["total"]
        return {"cost": f"${total.get('cost_usd', 0.0):.4f}", "calls": int(total.get("calls", 0))}

    task_runner = TaskRunner(
        runner,
        store=store,
        key=lambda task: task.key,
        describe=lambda task: f"conv_id={task.conv_id}",
        retry_on=_RETRYABLE,
        fail_on=(Exception,),  # a data or configuration error of one task: reported, not retried
        sleep=sleep,
    )
    try:
        run = await task_runner.run(tasks, attempt, postfix=postfix)
    except (FailureBudgetExceeded, BudgetExceeded) as stop:  # finished records kept; a re-run continues
        return RunSummary.from_run(stop.summary, llm_usage_since(before), stopped=str(stop))
    return RunSummary.from_run(run, llm_usage_since(before))
