"""Candidate replies for one assistant turn and their multiturn-aware reward (MR).

For the conversation so far (ending with a user turn), K candidates are proposed concurrently by the
assistant model (:class:`~collabllm_verl.recipe.core.litellm_policy.LiteLLMPolicy`), a configurable share of
them with a proactive instruction. Each candidate's MR is estimated exactly as in training: S forward-
sampled conversations (:func:`~collabllm_verl.recipe.core.forward_sampling.sample_future_conversation`, the
assistant model playing the assistant) scored by the metric registry
(:func:`~collabllm_verl.recipe.core.multiturn_reward.score_sample`).

Aggregation (``EngineConfig.score_aggregation``): by default a candidate's ``score`` is the original data
engine's, the mean over the S conversations of the unclamped weighted sum ``sum of weight * value``
(:attr:`ScoredCandidate.session_mr`, the original's ``MR`` list; conversations where a metric failed are
left out). ``training`` uses the RL reward instead, ``sum over metrics of clamp(weight * mean over the S
conversations, -1, 1)``. Both can be recomputed from the raw per-conversation values kept in
:attr:`ScoredCandidate.metric_values`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from collabllm_verl.interactions.simulator_prompt import strip_reasoning
from collabllm_verl.recipe.core.forward_sampling import (
    END_SIMULATOR_FAILURE,
    FutureConversation,
    sample_future_conversation,
    unusable_response_reason,
)
from collabllm_verl.recipe.core.litellm_policy import LiteLLMPolicy
from collabllm_verl.recipe.core.multiturn_reward import ForwardSamples, SampleScore, score_sample

from .config import Engine
from .task import EngineTask, TaskFailure

__all__ = [
    "PURPOSE_CANDIDATE",
    "PURPOSE_FUTURE",
    "ScoredCandidate",
    "best_index",
    "candidate_score",
    "scored_candidates",
]

T = TypeVar("T")

PURPOSE_CANDIDATE = "assistant:candidate"  # llm_stats() label of candidate replies
PURPOSE_FUTURE = "assistant:future"  # llm_stats() label of the assistant's turns in forward sampling


@dataclass
class ScoredCandidate:
    """One candidate reply with its MR.

    Attributes:
        completion: the reply as the assistant model returned it.
        proactive: it was generated with the proactive instruction.
        score: the candidate's MR (see the module docstring); ``skip_penalty`` when the reply was unusable.
        sessions: the forward-sampled conversations (history without system messages, the reply with
            reasoning removed, the future turns), as scored.
        end_reasons: why each conversation ended (``terminated``, ``turn_limit``, ...).
        metric_values: metric -> one raw value per conversation, None where the metric failed.
        session_mr: per conversation, ``sum of weight * value`` over the metrics (no clamp), None where a
            metric failed.
        skip_reason: why forward sampling was skipped (``malformed_think``, ``empty``), else None.
        judge_cost_usd: cost of this candidate's judge calls.
    """

    completion: str
    proactive: bool
    score: float
    sessions: list[list[dict[str, str]]] = field(default_factory=list)
    end_reasons: list[str] = field(default_factory=list)
    metric_values: dict[str, list[float | None]] = field(default_factory=dict)
    session_mr: list[float | None] = field(default_factory=list)
    skip_reason: str | None = None
    judge_cost_usd: float = 0.0


def best_index(candidates: list[ScoredCandidate]) -> int:
    """Index of the highest-scoring candidate, the first one on ties.

    Raises:
        ValueError: no candidates.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    return max(range(len(candidates)), key=lambda i: candidates[i].score)


async def _future(engine: Engine, task: EngineTask, history: list[dict], reply: str) -> FutureConversation:
    policy = LiteLLMPolicy(
        engine.assistant,
        system_prompt=engine.config.system_prompt,
        history=[*history, {"role": "assistant", "content": strip_reasoning(reply)}],
        purpose=PURPOSE_FUTURE,
    )
    return await sample_future_conversation(
        history=history,
        response=reply,
        policy=policy,
        interaction=engine.interaction,
        interaction_kwargs=task.interaction_kwargs,
        limits=engine.config.future_limits(),
    )


def _session_mr(score: SampleScore, weights: dict[str, float], count: int) -> list[float | None]:
    totals: list[float | None] = []
    for i in range(count):
        values = {name: score.per_conversation[name][i] for name in weights}
        missing = any(v is None for v in values.values())
        totals.append(None if missing else sum(weights[name] * value for name, value in values.items()))
    return totals


def candidate_score(aggregation: str, score: SampleScore, session_mr: list[float | None], *, turn: int) -> float:
    """``score`` of a candidate under ``aggregation`` (module docstring).

    Raises:
        TaskFailure: ``original`` aggregation and no conversation has every metric.
    """
    if aggregation == "training" or not session_mr:  # no conversations: a skipped reply, skip_penalty
        return float(score.reward)
    complete = [value for value in session_mr if value is not None]
    if not complete:
        raise TaskFailure(f"no forward-sampled conversation of a candidate has every metric (turn {turn})")
    return sum(complete) / len(complete)


async def _scored(engine: Engine, task: EngineTask, history: list[dict], index: int) -> ScoredCandidate:
    system_prompt = engine.config.candidate_system_prompt(index)
    proposer = LiteLLMPolicy(engine.assistant, system_prompt=system_prompt, history=history, purpose=PURPOSE_CANDIDATE)
    reply = await proposer.reply()
    proactive = index < engine.config.num_proactive
    skip = unusable_response_reason(reply, truncated=False)
    if skip is not None:
        samples = ForwardSamples(conversations=[], num_history_messages=len(history), skipped=True, skip_reason=skip)
        futures: list[FutureConversation] = []
    else:
        futures = await gather_all(_future(engine, task, history, reply) for _ in range(engine.config.num_samples))
        failed = [f.error for f in futures if f.end_reason == END_SIMULATOR_FAILURE]
        if failed:
            raise TaskFailure(f"user simulator failed in forward sampling (turn {len(history)}): {failed[0]}")
        samples = ForwardSamples(
            conversations=[f.messages for f in futures],
            num_history_messages=len(history),
            future_turns=[f.future_turns for f in futures],
            end_reasons=[f.end_reason for f in futures],
        )
    score = await score_sample(
        engine.reward,
        engine.metrics,
        samples,
        ground_truth=task.reference,
        extra_info=task.extra_info,
        data_source=task.data_source,
    )
    empty = [name for name, values in score.per_conversation.items() if values and all(v is None for v in values)]
    if empty:
        raise TaskFailure(
            f"metric(s) {empty} failed on every forward-sampled conversation of a candidate (turn {len(history)})"
        )
    weights = {name: engine.reward.metric_weights[name] for name in engine.metrics}
    session_mr = _session_mr(score, weights, len(futures))
    return ScoredCandidate(
        completion=reply,
        proactive=proactive,
        score=candidate_score(engine.config.score_aggregation, score, session_mr, turn=len(history)),
        sessions=[f.messages for f in futures],
        end_reasons=[f.end_reason for f in futures],
        metric_values={name: list(score.per_conversation.get(name, [])) for name in engine.metrics},
        session_mr=session_mr,
        skip_reason=skip,
        judge_cost_usd=score.judge_usage.cost_usd,
    )


async def scored_candidates(engine: Engine, task: EngineTask, history: list[dict]) -> list[ScoredCandidate]:
    """Propose ``K`` candidates for ``history`` and score each by forward sampling, all concurrently.

    Args:
        engine: the shared objects and settings.
        task: the task (hidden goal, reference, metric inputs).
        history: the conversation so far (no system messages), ending with a user turn.

    Returns:
        The K scored candidates, in proposal order (proactive ones first).

    Raises:
        TaskFailure: the user simulator failed in a forward-sampled conversation, or a metric failed on
            every conversation of a candidate.
        LLMCallError: the assistant model failed after the LLM layer's retries.
        Exception: data or configuration errors of a metric (e.g. a task without tests for pass_rate).
    """
    return await gather_all(_scored(engine, task, history, i) for i in range(engine.config.num_candidates))


async def gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all concurrently; once every one has finished, raise the first exception (in input order) if
    any failed, so that no call is left running unobserved after a failure."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)
