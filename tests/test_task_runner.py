"""The core task runner (recipe/core/task_runner.py): resume, bounded concurrency, tenacity retries with the
computed back-off (an injected sleep records the waits), failures kept out of the results, the failure
budget, and a stop on any other error."""

from __future__ import annotations

import asyncio
import json

import pytest

from collabllm_verl.recipe.core.run_store import RunStore
from collabllm_verl.recipe.core.task_runner import (
    FailureBudgetExceeded,
    TaskFailed,
    TaskRunner,
    TaskRunnerSettings,
)


class SleepRecorder:
    """An async sleep that records the requested waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _runner(store: RunStore, sleep: SleepRecorder | None = None, **settings) -> TaskRunner[str]:
    options = {"max_concurrent": 4, "retries": 0, "progress": False, **settings}
    return TaskRunner(
        TaskRunnerSettings(**options),
        store=store,
        key=lambda task: task,
        describe=lambda task: f"task {task}",
        is_finished=lambda record: record.get("ok", False),
        sleep=sleep or SleepRecorder(),
    )


def _lines(store: RunStore) -> list[dict]:
    return [json.loads(line) for line in store.path.read_text().splitlines()]


async def test_finished_tasks_are_skipped_and_every_result_is_stored(tmp_path):
    store = RunStore(tmp_path / "records.jsonl")
    store.append({"key": "a", "ok": True, "value": "earlier"})
    store.append({"key": "b", "ok": False})  # a stored failure: run again
    calls: list[str] = []

    async def work(task: str, attempt: int) -> dict:
        calls.append(task)
        return {"ok": True, "value": task.upper()}

    summary = await _runner(store).run(["a", "b", "c"], work)
    assert sorted(calls) == ["b", "c"]
    assert (summary.tasks, summary.resumed, summary.finished, summary.failed) == (3, 1, 2, 0)
    assert {r["key"]: r["value"] for r in RunStore(store.path).records()} == {"a": "earlier", "b": "B", "c": "C"}
    again = await _runner(RunStore(store.path)).run(["a", "b", "c"], work)
    assert again.resumed == 3 and again.finished == 0 and len(calls) == 2


async def test_at_most_max_concurrent_tasks_run_at_once(tmp_path):
    running, peak = 0, 0

    async def work(task: str, attempt: int) -> dict:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return {"ok": True}

    summary = await _runner(RunStore(tmp_path / "r.jsonl"), max_concurrent=3).run([str(i) for i in range(10)], work)
    assert summary.finished == 10 and peak == 3


async def test_retries_wait_the_computed_back_off_and_count(tmp_path):
    settings = TaskRunnerSettings(max_concurrent=1, retries=4, backoff_initial_s=0.5, backoff_max_s=3.0)
    assert settings.backoff_waits() == [0.5, 1.0, 2.0, 3.0]  # doubled, capped at backoff_max_s
    sleep = SleepRecorder()
    attempts: list[int] = []

    async def work(task: str, attempt: int) -> dict:
        attempts.append(attempt)
        if attempt < 4:
            raise TaskFailed(f"flaky {attempt}")
        return {"ok": True, "attempt": attempt}

    runner = _runner(RunStore(tmp_path / "r.jsonl"), sleep, max_concurrent=1, retries=4, backoff_initial_s=0.5,
                     backoff_max_s=3.0)
    summary = await runner.run(["x"], work)
    assert attempts == [1, 2, 3, 4]
    assert sleep.waits == [0.5, 1.0, 2.0]  # the waits before retries 1..3, not measured wall time
    assert (summary.finished, summary.failed, summary.retries) == (1, 0, 3)
    assert _lines(runner.store) == [{"ok": True, "attempt": 4, "key": "x"}]


async def test_a_failure_is_counted_reported_and_never_a_finished_record(tmp_path):
    store = RunStore(tmp_path / "r.jsonl")
    sleep = SleepRecorder()

    async def work(task: str, attempt: int) -> dict:
        if task == "bad":
            raise TaskFailed("judge unusable", record={"ok": False, "why": "judge unusable"})
        if task == "broken":
            raise KeyError("no ground truth")  # in fail_on below, not retried
        return {"ok": True}

    runner = TaskRunner(
        TaskRunnerSettings(max_concurrent=2, retries=1, failure_budget=1.0, progress=False),
        store=store,
        key=lambda task: task,
        fail_on=(KeyError,),
        is_finished=lambda record: record["ok"],
        sleep=sleep,
    )
    summary = await runner.run(["good", "bad", "broken"], work)
    assert (summary.finished, summary.failed, summary.retries) == (1, 2, 1)  # only TaskFailed is retried
    assert sleep.waits == [1.0]
    reports = {f.key: (f.error, f.attempts) for f in summary.failures}
    assert reports == {"bad": ("TaskFailed: judge unusable", 2), "broken": ("KeyError: 'no ground truth'", 1)}
    # the failure's own record is stored (so outputs show it) but is not finished: the next run retries it
    stored = {r["key"]: r for r in store.records()}
    assert stored["bad"] == {"ok": False, "why": "judge unusable", "key": "bad"} and "broken" not in stored
    assert [key for key, _ in runner.pending(["good", "bad", "broken"])] == ["bad", "broken"]


async def test_the_failure_budget_stops_the_run_with_a_readable_error(tmp_path):
    store = RunStore(tmp_path / "r.jsonl")
    started: list[str] = []

    async def work(task: str, attempt: int) -> dict:
        started.append(task)
        if task.startswith("f"):
            raise TaskFailed(f"endpoint down for {task}")
        return {"ok": True}

    tasks = ["ok0", "f1", "f2", "ok3", "f4", "f5", "f6", "f7", "f8", "f9"]
    runner = _runner(store, max_concurrent=1, failure_budget=0.3)
    with pytest.raises(FailureBudgetExceeded) as caught:
        await runner.run(tasks, work)
    # 4 failures of 10 tasks exceed 30 %: the run stops right there, the rest never starts
    assert started == tasks[:6]
    summary = caught.value.summary
    assert (summary.failed, summary.finished) == (4, 2)
    message = str(caught.value)
    assert "4 of the 10 tasks of this run failed" in message and "30%" in message
    assert "endpoint down for f5" in message and "run the same command again" in message
    assert [r["key"] for r in store.records()] == ["ok0", "ok3"]
    # a budget of 1 never stops a run
    summary = await _runner(RunStore(tmp_path / "s.jsonl"), failure_budget=1.0).run(["f1", "f2"], work)
    assert summary.failed == 2


async def test_an_unexpected_error_stops_the_run_and_keeps_what_was_written(tmp_path):
    store = RunStore(tmp_path / "r.jsonl")
    cancelled: list[str] = []

    async def work(task: str, attempt: int) -> dict:
        if task == "boom":
            await asyncio.sleep(0.01)
            raise RuntimeError("bad configuration")
        if task == "slow":
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(task)
                raise
        return {"ok": True}

    with pytest.raises(RuntimeError, match="bad configuration"):
        await _runner(store, max_concurrent=3).run(["fast", "boom", "slow"], work)
    assert cancelled == ["slow"]
    assert [r["key"] for r in store.records()] == ["fast"]


async def test_bad_task_lists_and_settings_are_refused(tmp_path):
    async def work(task: str, attempt: int) -> dict:
        return {"ok": True, "key": "other"}

    runner = _runner(RunStore(tmp_path / "r.jsonl"))
    with pytest.raises(ValueError, match="share the key"):
        await runner.run(["a", "a"], work)
    with pytest.raises(ValueError, match="holds the key 'other'"):
        await runner.run(["a"], work)
    for bad in ({"max_concurrent": 0}, {"retries": -1}, {"failure_budget": 1.5}, {"backoff_max_s": 0.1}):
        with pytest.raises(ValueError):
            TaskRunnerSettings(**{"max_concurrent": 1, "retries": 0, **bad})
