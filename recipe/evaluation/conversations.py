"""Running the evaluation conversations: one simulated conversation per (task, sample), scored once.

The protocol (the paper's experiments and the authors' evaluation script; docs/evaluation.md):

1. the conversation starts **empty**; the user simulator, which knows the hidden goal, writes the first
   turn (by its rules a vague one). A task with a fixed opener (:attr:`EvalTask.opener`) starts with it
   as the first user turn instead;
2. simulator and model under test alternate through the project's one conversation loop
   (:func:`collabllm_verl.recipe.core.forward_sampling.continue_conversation`) until the simulator sends its
   termination signal or ``max_messages`` messages (``max_messages // 2`` exchanges; 14 by default) are
   reached;
3. the task's metrics are computed **once on the finished conversation** with the reward core's per-metric
   scoring (:func:`collabllm_verl.recipe.core.multiturn_reward.score_conversation`,
   ``num_history_messages=0``: every message counts as conversation, so ``token_amount`` counts all
   assistant turns).

A conversation that the user simulator or the model under test could not finish (an LLM call that failed
after the LLM layer's retries) is recorded with ``status: "conversation_failed"``, is not scored, and is run
again on the next invocation; a metric that fails on a finished conversation is recorded as None and left
out of that metric's mean. The conversations run through the project's task runner
(:class:`collabllm_verl.recipe.core.task_runner.TaskRunner`: bounded concurrency, retries, failure budget);
records are appended to ``conversations.jsonl`` as they finish
(:class:`collabllm_verl.recipe.core.run_store.RunStore`), so an interrupted run resumes where it stopped.

No verl import.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collabllm_verl.metrics import MetricSpec
from collabllm_verl.recipe.core.forward_sampling import PolicyChat, TurnLimits, continue_conversation
from collabllm_verl.recipe.core.llm_client import LLMCallError, LLMSettings, Usage, usage_scope
from collabllm_verl.recipe.core.multiturn_reward import score_conversation
from collabllm_verl.recipe.core.run_store import RunStore, stable_key
from collabllm_verl.recipe.core.task_runner import TaskFailed, TaskOutcome, TaskRunner, TaskRunnerSettings

from .tasks import EvalTask

__all__ = [
    "CONVERSATIONS_FILE",
    "END_POLICY_FAILURE",
    "RUN_FILE",
    "STATUS_FAILED",
    "STATUS_SCORED",
    "USAGE_KEYS",
    "ConversationSlot",
    "EvalProtocol",
    "EvalScoring",
    "PolicyFactory",
    "open_run_store",
    "run_conversation",
    "run_conversations",
]

logger = logging.getLogger(__name__)

CONVERSATIONS_FILE = "conversations.jsonl"
RUN_FILE = "run.json"
STATUS_SCORED = "scored"
STATUS_FAILED = "conversation_failed"
END_POLICY_FAILURE = "policy_failure"  # the model under test failed after the LLM layer's retries
_UNFINISHED = frozenset({"simulator_failure", END_POLICY_FAILURE})
# The LLM usage counters (collabllm_verl.recipe.core.llm_client.Usage) kept per conversation and role.
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


@dataclass(frozen=True)
class EvalScoring:
    """The metrics of an evaluation, computed once on each finished conversation.

    Attributes:
        specs: metric name -> spec, in report order
            (:func:`~collabllm_verl.recipe.core.multiturn_reward.resolve_metric_specs`).
        options: metric name -> options (absent: none).
        judge: the LLM judges' settings, or None when no metric needs a judge.
    """

    specs: Mapping[str, MetricSpec]
    options: Mapping[str, Mapping[str, Any]]
    judge: LLMSettings | None = None


@dataclass(frozen=True)
class ConversationSlot:
    """One conversation of a run: sample ``index`` (0-based, < k) of ``task``."""

    task: EvalTask
    index: int

    @property
    def key(self) -> str:
        """Its record's key: a hash of the task id and the sample index."""
        return stable_key(self.task.task_id, self.index)


def _usage(usage: Usage) -> dict[str, float]:
    return usage.as_dict(*USAGE_KEYS)


class _MeteredPolicy:
    """A :class:`PolicyChat` that counts the LLM usage of the wrapped policy's replies."""

    def __init__(self, inner: PolicyChat) -> None:
        self.inner = inner
        self.usage = Usage()

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
                self.usage = self.usage + counters


async def _score_finished(
    task: EvalTask, messages: list[dict[str, str]], scoring: EvalScoring
) -> tuple[dict[str, float | None], list[str], dict[str, float], float]:
    """Score a finished conversation once: ``(metric values, failed metrics, judge usage, seconds)``.

    Raises:
        RuntimeError: a metric raised an error that is not a metric failure, naming the task's source row.
    """
    started = time.perf_counter()
    with usage_scope() as counters:
        try:
            score = await score_conversation(
                scoring.specs,
                messages,
                judge=scoring.judge,
                metric_kwargs=scoring.options,
                ground_truth=task.ground_truth,
                extra_info=task.extra_info,
                data_source=task.data_source,
            )
        except Exception as exc:
            raise RuntimeError(
                f"{task.data_source}: row {task.row}: scoring failed ({type(exc).__name__}: {exc})"
            ) from exc
    return score.values, list(score.failures), _usage(counters), time.perf_counter() - started


async def run_conversation(
    task: EvalTask,
    sample_index: int,
    *,
    protocol: EvalProtocol,
    make_policy: PolicyFactory,
    interaction: Any,
    scoring: EvalScoring,
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
            if task.opener is not None:  # the policy answers the fixed opener first (continue_conversation)
                messages.append({"role": "user", "content": task.opener})
                await policy.add_user_message(task.opener)
            result = await continue_conversation(
                messages=messages,
                policy=policy,
                interaction=interaction,
                interaction_kwargs=task.interaction_kwargs,
                limits=protocol.limits,
                user_turns=0 if task.opener is None else 1,  # the opener is the first user turn
            )
            end_reason, error = result.end_reason, result.error
        except LLMCallError as exc:
            end_reason, error = END_POLICY_FAILURE, str(exc)
    conversation_seconds = time.perf_counter() - started

    metrics: dict[str, float | None] = dict.fromkeys(scoring.specs)
    metric_failures: list[str] = []
    judge_usage = _usage(Usage())
    scoring_seconds = 0.0
    finished = end_reason not in _UNFINISHED and bool(messages)
    if finished:
        metrics, metric_failures, judge_usage, scoring_seconds = await _score_finished(task, messages, scoring)

    usage = {
        "policy": _usage(policy.usage),
        "user_simulator": _usage(conversation_usage - policy.usage),
        "judge": judge_usage,
    }
    return {
        "key": stable_key(task.task_id, sample_index),
        "task_id": task.task_id,
        "sample_index": sample_index,
        "row": task.row,
        "data_source": task.data_source,
        "goal": task.goal,
        "ambiguous": task.extra_info.get("ambiguous"),  # ambiguity-family rows; None for other tasks
        "status": STATUS_SCORED if finished else STATUS_FAILED,
        "end_reason": end_reason,
        "error": error,
        "messages": messages,
        "num_messages": len(messages),
        "user_turns": sum(m["role"] == "user" for m in messages),
        "assistant_turns": sum(m["role"] == "assistant" for m in messages),
        "metrics": metrics,
        "metric_failures": metric_failures,
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


async def run_conversations(
    tasks: Sequence[EvalTask],
    *,
    protocol: EvalProtocol,
    make_policy: PolicyFactory,
    interaction: Any,
    scoring: EvalScoring,
    store: RunStore,
    runner: TaskRunnerSettings,
) -> dict[str, int]:
    """Run every (task, sample) conversation without a scored record in ``store``, through the task runner.

    A conversation that could not be finished is stored (``status: "conversation_failed"``), counted
    against the failure budget, tried again ``runner.retries`` times in this run and again by the next run.

    Args:
        tasks: the tasks; each gets ``protocol.samples_per_row`` conversations.
        protocol: conversation settings.
        make_policy: builds the model under test's side of each conversation.
        interaction: the user simulator (one object for all conversations).
        scoring: the metrics.
        store: the run's records.
        runner: concurrency (conversations in flight), retries, failure budget, progress bar. The LLM
            layer's per-model limits (``max_concurrency``, ``requests_per_minute``) apply on top.

    Returns:
        This invocation's counts: ``{"skipped", "run", "scored", "conversation_failed"}``.

    Raises:
        FailureBudgetExceeded: too many conversations could not be finished (the run stopped; records kept).
        RuntimeError: from :func:`run_conversation` (other conversations are cancelled; records kept).
    """
    slots = [ConversationSlot(task, k) for task in tasks for k in range(protocol.samples_per_row)]

    async def work(slot: ConversationSlot, attempt: int) -> dict[str, Any]:
        record = await run_conversation(
            slot.task, slot.index, protocol=protocol, make_policy=make_policy, interaction=interaction, scoring=scoring
        )
        if record["status"] != STATUS_SCORED:
            raise TaskFailed(f"{record['end_reason']}: {record['error']}", record=record)
        return record

    task_runner = TaskRunner(
        runner,
        store=store,
        key=lambda slot: slot.key,
        describe=lambda slot: f"task row {slot.task.row} sample {slot.index}",
        is_finished=lambda record: record.get("status") == STATUS_SCORED,
    )
    means = _RunningMeans(store.records())
    summary = await task_runner.run(slots, work, postfix=means.add)
    return {
        "skipped": summary.resumed,
        "run": summary.finished + summary.failed,
        STATUS_SCORED: summary.finished,
        STATUS_FAILED: summary.failed,
    }


class _RunningMeans:
    """The progress bar's postfix: running metric means over scored conversations (earlier runs' included),
    metric failures and cost of this run."""

    def __init__(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.metric_failures = 0
        self.cost = 0.0
        for record in records:
            if record.get("status") == STATUS_SCORED:
                self._count(record)

    def _count(self, record: Mapping[str, Any]) -> None:
        self.cost += float(record.get("cost_usd") or 0.0)
        if record.get("status") != STATUS_SCORED:
            return
        for name, value in (record.get("metrics") or {}).items():
            if value is not None:
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
                self.counts[name] = self.counts.get(name, 0) + 1

    def add(self, outcome: TaskOutcome[ConversationSlot]) -> dict[str, Any]:
        """Count one conversation's record; returns the postfix."""
        if outcome.record is not None:
            self._count(outcome.record)
            self.metric_failures += len(outcome.record.get("metric_failures") or [])
        postfix: dict[str, Any] = {name: f"{self.sums[name] / self.counts[name]:.3g}" for name in self.sums}
        postfix["metric_failures"] = self.metric_failures
        postfix["cost"] = f"${self.cost:.4f}"
        return postfix
