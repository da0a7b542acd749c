"""Running the evaluation conversations: one simulated conversation per (task, sample), scored once.

The protocol (the paper's experiments and the authors' evaluation script; docs/evaluation.md):

1. the conversation starts **empty**; the user simulator, which knows the hidden goal, writes the first
   turn (by its rules a vague one);
2. simulator and model under test alternate through the project's one conversation loop
   (:func:`collabllm_verl.recipe.core.forward_sampling.continue_conversation`) until the simulator sends its
   termination signal or ``max_messages`` messages (``max_messages // 2`` exchanges; 14 by default) are
   reached;
3. the task's metrics are computed **once on the finished conversation** with the reward core
   (:func:`collabllm_verl.recipe.core.multiturn_reward.score_sample`, ``num_history_messages=0``: every message
   counts as conversation, so ``token_amount`` counts all assistant turns).

A conversation that the user simulator or the model under test could not finish (an LLM call that failed
after the LLM layer's retries) is recorded with ``status: "conversation_failed"``, is not scored, and is run
again on the next invocation; a metric that fails on a finished conversation is recorded as None and left
out of that metric's mean. Records are appended to ``conversations.jsonl`` as they finish
(:class:`collabllm_verl.recipe.core.run_store.RunStore`), so an interrupted run resumes where it stopped.

No verl import.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collabllm_verl.metrics import MetricSpec
from collabllm_verl.recipe.core.forward_sampling import PolicyChat, TurnLimits, continue_conversation
from collabllm_verl.recipe.core.llm_client import LLMCallError, usage_scope
from collabllm_verl.recipe.core.multiturn_reward import ForwardSamples, RewardSettings, score_sample
from collabllm_verl.recipe.core.run_store import RunStore, stable_key

from .tasks import EvalTask

__all__ = [
    "CONVERSATIONS_FILE",
    "END_POLICY_FAILURE",
    "RUN_FILE",
    "STATUS_FAILED",
    "STATUS_SCORED",
    "USAGE_KEYS",
    "EvalProtocol",
    "EvaluationRunner",
    "PolicyFactory",
    "open_run_store",
    "run_conversation",
]

logger = logging.getLogger(__name__)

CONVERSATIONS_FILE = "conversations.jsonl"
RUN_FILE = "run.json"
STATUS_SCORED = "scored"
STATUS_FAILED = "conversation_failed"
END_POLICY_FAILURE = "policy_failure"  # the model under test failed after the LLM layer's retries
_UNFINISHED = frozenset({"simulator_failure", END_POLICY_FAILURE})
# LLM-layer counters kept per conversation and role (see collabllm_verl.recipe.core.llm_client.llm_stats).
USAGE_KEYS = ("requests", "retries", "failures", "prompt_tokens", "completion_tokens", "cost_usd", "cost_unknown")

PolicyFactory = Callable[[EvalTask, int], PolicyChat]
"""Builds the model under test's side of one conversation, given the task and the sample index."""


@dataclass(frozen=True)
class EvalProtocol:
    """The conversation settings of an evaluation.

    Attributes:
        max_messages: most messages per conversation, user and assistant together (>= 2, even; the paper's
            14 = 7 user + 7 assistant turns). The loop runs whole exchanges, so a terminating user message
            (when the loop keeps it) is always within the limit.
        samples_per_row: conversations per task (>= 1).

    Raises:
        ValueError: a value out of range.
    """

    max_messages: int = 14
    samples_per_row: int = 1

    def __post_init__(self) -> None:
        if self.max_messages < 2 or self.max_messages % 2:
            raise ValueError(f"--max_messages must be an even number >= 2, got {self.max_messages}")
        if self.samples_per_row < 1:
            raise ValueError(f"--samples_per_row must be >= 1, got {self.samples_per_row}")

    @property
    def limits(self) -> TurnLimits:
        """``max_messages // 2`` user turns and as many assistant turns."""
        half = self.max_messages // 2
        return TurnLimits(max_user_turns=half, max_assistant_turns=half)


def _usage(counters: Mapping[str, float]) -> dict[str, float]:
    return {key: float(counters.get(key, 0.0)) for key in USAGE_KEYS}


def _minus(total: Mapping[str, float], part: Mapping[str, float]) -> dict[str, float]:
    return {key: float(total.get(key, 0.0)) - float(part.get(key, 0.0)) for key in USAGE_KEYS}


class _MeteredPolicy:
    """A :class:`PolicyChat` that counts the LLM usage of the wrapped policy's replies."""

    def __init__(self, inner: PolicyChat) -> None:
        self.inner = inner
        self.usage = dict.fromkeys(USAGE_KEYS, 0.0)

    @property
    def tokens_after_prompt(self) -> int:
        return self.inner.tokens_after_prompt

    @property
    def last_reply_truncated(self) -> bool:
        return self.inner.last_reply_truncated

    async def add_user_message(self, content: str) -> None:
        await self.inner.add_user_message(content)

    async def reply(self, max_new_tokens: int | None = None) -> str | None:
        with usage_scope() as counters:
            try:
                return await self.inner.reply(max_new_tokens=max_new_tokens)
            finally:
                for key in USAGE_KEYS:
                    self.usage[key] += float(counters.get(key, 0.0))


async def run_conversation(
    task: EvalTask,
    sample_index: int,
    *,
    protocol: EvalProtocol,
    make_policy: PolicyFactory,
    interaction: Any,
    settings: RewardSettings,
    specs: Mapping[str, MetricSpec],
) -> dict[str, Any]:
    """Run and score one evaluation conversation; returns its ``conversations.jsonl`` record.

    Record fields: ``key``, ``task_id``, ``sample_index``, ``row``, ``data_source``, ``goal``, ``status``
    (``"scored"`` or ``"conversation_failed"``), ``end_reason`` (``terminated``, ``turn_limit``,
    ``context_limit``, ``simulator_failure``, ``policy_failure``, or another reason of the conversation
    loop), ``error``, ``messages``, ``num_messages``, ``user_turns``, ``assistant_turns``, ``metrics``
    (metric -> value, None where it failed or was not scored), ``metric_failures`` (names), ``usage``
    (per role ``policy``/``user_simulator``/``judge``: :data:`USAGE_KEYS`, tokens as the servers report
    them, cost in USD from litellm's price map), ``cost_usd`` (all roles) and ``seconds``
    (``conversation``, ``scoring``).

    Raises:
        RuntimeError: a metric raised an error that is not a metric failure (bad data or configuration),
            naming the task's source row.
    """
    messages: list[dict[str, str]] = []
    policy = _MeteredPolicy(make_policy(task, sample_index))
    started = time.perf_counter()
    error: str | None = None
    with usage_scope() as conversation_usage:
        try:
            result = await continue_conversation(
                messages=messages,
                policy=policy,
                interaction=interaction,
                interaction_kwargs=task.interaction_kwargs,
                limits=protocol.limits,
            )
            end_reason, error = result.end_reason, result.error
        except LLMCallError as exc:
            end_reason, error = END_POLICY_FAILURE, str(exc)
    conversation_seconds = time.perf_counter() - started

    metrics: dict[str, float | None] = dict.fromkeys(specs)
    judge_usage: dict[str, float] = dict.fromkeys(USAGE_KEYS, 0.0)
    scoring_seconds = 0.0
    finished = end_reason not in _UNFINISHED and bool(messages)
    if finished:
        started = time.perf_counter()
        with usage_scope() as counters:
            try:
                score = await score_sample(
                    settings,
                    specs,
                    ForwardSamples(conversations=[messages], num_history_messages=0),
                    ground_truth=task.ground_truth,
                    extra_info=task.extra_info,
                    data_source=task.data_source,
                )
            except Exception as exc:
                raise RuntimeError(
                    f"{task.data_source}: row {task.row}: scoring failed ({type(exc).__name__}: {exc})"
                ) from exc
        judge_usage = _usage(counters)
        scoring_seconds = time.perf_counter() - started
        metrics = {name: score.per_conversation[name][0] for name in specs}

    usage = {
        "policy": _usage(policy.usage),
        "user_simulator": _minus(conversation_usage, policy.usage),
        "judge": judge_usage,
    }
    return {
        "key": stable_key(task.task_id, sample_index),
        "task_id": task.task_id,
        "sample_index": sample_index,
        "row": task.row,
        "data_source": task.data_source,
        "goal": task.goal,
        "status": STATUS_SCORED if finished else STATUS_FAILED,
        "end_reason": end_reason,
        "error": error,
        "messages": messages,
        "num_messages": len(messages),
        "user_turns": sum(m["role"] == "user" for m in messages),
        "assistant_turns": sum(m["role"] == "assistant" for m in messages),
        "metrics": metrics,
        "metric_failures": [name for name, value in metrics.items() if finished and value is None],
        "usage": usage,
        "cost_usd": sum(role["cost_usd"] for role in usage.values()),
        "seconds": {"conversation": conversation_seconds, "scoring": scoring_seconds},
    }


def open_run_store(out_dir: Path, run_settings: Mapping[str, Any], *, overwrite: bool = False) -> RunStore:
    """The resumable record file of a run folder, after checking that an earlier run used the same settings.

    ``run.json`` holds the settings that change what a conversation means (data, models, protocol,
    metrics, system prompt, sampling); a folder written with other settings is refused rather than mixed.

    Args:
        out_dir: the ``--out`` folder (created).
        run_settings: JSON-serialisable settings (no secrets).
        overwrite: delete the earlier records and settings first.

    Raises:
        ValueError: the folder holds a run with different settings (the message names the first ones).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_file = out_dir / RUN_FILE
    records_file = out_dir / CONVERSATIONS_FILE
    wanted = json.loads(json.dumps(run_settings, default=str))
    if overwrite:
        records_file.unlink(missing_ok=True)
        settings_file.unlink(missing_ok=True)
    if settings_file.exists():
        earlier = json.loads(settings_file.read_text(encoding="utf-8"))
        changed = sorted(key for key in set(earlier) | set(wanted) if earlier.get(key) != wanted.get(key))
        if changed:
            details = "; ".join(f"{k}: {earlier.get(k)!r} -> {wanted.get(k)!r}" for k in changed[:4])
            raise ValueError(
                f"{out_dir} holds a run made with other settings ({details}); resume it with the same "
                "settings, choose another --out, or pass --overwrite to start over"
            )
    else:
        tmp = settings_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(settings_file)
    return RunStore(records_file)


class EvaluationRunner:
    """Runs every missing (task, sample) conversation of a run with bounded concurrency.

    Args:
        tasks: the tasks.
        protocol: conversation settings.
        make_policy: builds the model under test's side of each conversation.
        interaction: the user simulator (one object for all conversations).
        settings, specs: the metrics (``RewardSettings`` with every metric weighted 1, and their specs).
        store: the run's records; conversations already scored there are skipped, failed ones run again.
        concurrency: conversations in flight at once (>= 1). The LLM layer's per-model limits
            (``max_concurrency``, ``requests_per_minute``) apply on top, shared by the whole process.
        progress: show a progress bar (tqdm, on stderr) with running means, failures and cost.
    """

    def __init__(
        self,
        tasks: Sequence[EvalTask],
        *,
        protocol: EvalProtocol,
        make_policy: PolicyFactory,
        interaction: Any,
        settings: RewardSettings,
        specs: Mapping[str, MetricSpec],
        store: RunStore,
        concurrency: int = 64,
        progress: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
        self.tasks = list(tasks)
        self.protocol = protocol
        self.make_policy = make_policy
        self.interaction = interaction
        self.settings = settings
        self.specs = dict(specs)
        self.store = store
        self.concurrency = concurrency
        self.progress = progress

    def pending(self) -> list[tuple[EvalTask, int]]:
        """(task, sample index) pairs without a scored record, in task order."""
        done = {r["key"] for r in self.store.records() if r.get("status") == STATUS_SCORED}
        return [
            (task, k)
            for task in self.tasks
            for k in range(self.protocol.samples_per_row)
            if stable_key(task.task_id, k) not in done
        ]

    async def run(self) -> dict[str, int]:
        """Run the pending conversations; returns ``{"skipped", "run", "scored", "conversation_failed"}``
        counts of this invocation.

        Raises:
            RuntimeError: from :func:`run_conversation` (other conversations are cancelled; the records
                written so far are kept).
        """
        todo = self.pending()
        total = len(self.tasks) * self.protocol.samples_per_row
        counts = {"skipped": total - len(todo), "run": 0, STATUS_SCORED: 0, STATUS_FAILED: 0}
        queue: asyncio.Queue = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)
        bar = _ProgressBar(total=total, done=counts["skipped"], records=self.store.records(), enabled=self.progress)

        async def worker() -> None:
            while True:
                try:
                    task, k = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                record = await run_conversation(
                    task,
                    k,
                    protocol=self.protocol,
                    make_policy=self.make_policy,
                    interaction=self.interaction,
                    settings=self.settings,
                    specs=self.specs,
                )
                await asyncio.to_thread(self.store.append, record)
                counts["run"] += 1
                counts[record["status"]] += 1
                bar.add(record)

        workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(todo)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        finally:
            bar.close()
        return counts


class _ProgressBar:
    """tqdm bar whose postfix shows running means (over scored conversations), failures and cost."""

    def __init__(self, *, total: int, done: int, records, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.failed = 0
        self.cost = 0.0
        self.bar = tqdm(total=total, initial=done, desc="conversations", unit="conv", disable=not enabled)
        for record in records:
            if record.get("status") == STATUS_SCORED:
                self._count(record)

    def _count(self, record: Mapping[str, Any]) -> None:
        self.cost += float(record.get("cost_usd") or 0.0)
        if record["status"] != STATUS_SCORED:
            self.failed += 1
            return
        for name, value in (record.get("metrics") or {}).items():
            if value is not None:
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
                self.counts[name] = self.counts.get(name, 0) + 1

    def add(self, record: Mapping[str, Any]) -> None:
        self._count(record)
        self.failed += len(record.get("metric_failures") or [])
        postfix = {name: f"{self.sums[name] / self.counts[name]:.3g}" for name in self.sums}
        postfix["failures"] = self.failed
        postfix["cost"] = f"${self.cost:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
