"""Shared pieces of the LLM-judge metrics: the judge prompts and one call helper.

Every judge call goes through :mod:`collabllm_verl.recipe.llm_client` (JSON repair, bounded retries,
per-process limits, counters) with ``purpose="judge:<metric>"``. The prompts are written for this
project. Each asks for one JSON object; :data:`JUDGE_TASKS` lists the keys each task must return (the
offline stand-in judges of :mod:`collabllm_verl.recipe.offline.scripted_judges` recognise a task by them).

The conversation is shown to the judge as ``[user]`` / ``[assistant]`` blocks between ``<conversation>``
tags (system messages dropped), the user's goal between ``<task>`` tags and the reference between
``<reference>`` tags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .registry import MetricContext, MetricError

__all__ = [
    "JUDGE_TASKS",
    "ask_judge",
    "build_judge_messages",
    "reference_text",
    "render_conversation",
    "unit_interval",
]

# task -> the JSON keys (and types) the judge must return.
JUDGE_TASKS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "accuracy": {"thought": str, "accuracy": (int, float, bool)},
    "interactivity": {
        "thought": str,
        "understanding": (int, float),
        "clarification": (int, float),
        "suggestion": (int, float),
    },
    "extract_document": {"thought": str, "final_document": str},
    "extract_code": {"thought": str, "final_code": str},
}

_JSON_ONLY = "Answer with one JSON object and nothing else, in exactly this shape:\n"

_SYSTEM_PROMPTS = {
    "accuracy": (
        "You grade the outcome of a conversation between a user and an AI assistant. You are given the "
        "user's underlying task, a reference answer for it, and the conversation. Decide whether the final "
        "answer the assistant committed to is correct with respect to the reference.\n"
        "- Only the assistant's last committed answer counts; earlier drafts or corrected attempts do not.\n"
        "- Judge substance, not wording: equivalent forms are correct (0.5 and 1/2, the same set in another "
        "order, an equivalent expression).\n"
        "- If the assistant never gives an answer (e.g. it only asks questions), the answer is wrong.\n"
        + _JSON_ONLY
        + '{"thought": "<one or two sentences of reasoning>", "accuracy": <1 if correct, otherwise 0>}'
    ),
    "interactivity": (
        "You assess how well an AI assistant collaborated with a user over a conversation. Users often "
        "start with an incomplete request and reveal what they need along the way. Score the assistant on "
        "three criteria, each a number from 0 (poor) through 0.5 (adequate) to 1 (excellent):\n"
        "- understanding: did it grasp what the user actually wanted, and communicate clearly?\n"
        "- clarification: when the request was ambiguous or missing information, did it ask focused "
        "questions, while not asking needless ones when the request was already clear?\n"
        "- suggestion: did it offer helpful, relevant suggestions or next steps that move the user "
        "towards their goal?\n"
        + _JSON_ONLY
        + '{"thought": "<short justification>", "understanding": <0..1>, "clarification": <0..1>, '
        '"suggestion": <0..1>}'
    ),
    "extract_document": (
        "You are given a conversation in which an AI assistant helps a user write or revise a document. "
        "Copy out the final version of the document exactly as the assistant last presented it. Leave out "
        "greetings, explanations and questions around it. If parts of the final version are spread over "
        "several messages, assemble the latest version of each part. If the assistant never produced the "
        "document, return an empty string.\n"
        + _JSON_ONLY
        + '{"thought": "<where the final version is>", "final_document": "<the document text>"}'
    ),
    "extract_code": (
        "You are given a conversation in which an AI assistant writes code for a user. Copy out the final "
        "solution code exactly as the assistant last presented it, as one self-contained Python program "
        "including its imports. If the final solution is spread over several messages, assemble the latest "
        "version of each piece. Do not fix, complete or comment on the code, and do not wrap it in Markdown "
        "fences. If the assistant never wrote code, return an empty string.\n"
        + _JSON_ONLY
        + '{"thought": "<where the final code is>", "final_code": "<the code>"}'
    ),
}

# Which sections each task's user message carries.
_SECTIONS = {
    "accuracy": ("task", "reference", "conversation"),
    "interactivity": ("task", "conversation"),
    "extract_document": ("conversation",),
    "extract_code": ("conversation",),
}


def render_conversation(messages: Sequence[Mapping[str, Any]]) -> str:
    """Render chat messages as ``[role]`` blocks for a judge prompt; system messages are left out."""
    blocks = []
    for message in messages:
        role = str(message.get("role") or "")
        if role == "system":
            continue
        blocks.append(f"[{role}]\n{str(message.get('content') or '').strip()}")
    return "\n\n".join(blocks)


def reference_text(ground_truth: Any) -> str:
    """The reference as text: strings unchanged, mappings/lists as their ``str()`` form."""
    return ground_truth if isinstance(ground_truth, str) else str(ground_truth)


def build_judge_messages(task: str, ctx: MetricContext) -> list[dict[str, str]]:
    """The system + user messages asking the judge to perform ``task`` (a key of :data:`JUDGE_TASKS`)."""
    sections = []
    for name in _SECTIONS[task]:
        if name == "task":
            body = ctx.single_turn_prompt or "(not given)"
        elif name == "reference":
            body = reference_text(ctx.ground_truth)
        else:
            body = render_conversation(ctx.messages)
        sections.append(f"<{name}>\n{body}\n</{name}>")
    return [
        {"role": "system", "content": _SYSTEM_PROMPTS[task]},
        {"role": "user", "content": "\n\n".join(sections)},
    ]


async def ask_judge(task: str, metric: str, ctx: MetricContext) -> dict[str, Any]:
    """Run one judge task for ``metric`` on ``ctx`` and return the parsed JSON object.

    Raises:
        MetricError: (``judge_failure=True``) the call failed after the LLM layer's retries, or its answer
            never had the required keys/types.
        ValueError: no judge is configured (``llm_judge_kwargs`` missing).
    """
    from collabllm_verl.recipe.llm_client import LLMCallError, acomplete_json

    if ctx.judge is None:
        raise ValueError(f"metric {metric!r} needs an LLM judge; set reward_kwargs.llm_judge_kwargs.model")
    try:
        return await acomplete_json(
            build_judge_messages(task, ctx), ctx.judge, required=JUDGE_TASKS[task], purpose=f"judge:{metric}"
        )
    except LLMCallError as exc:
        raise MetricError(metric, exc.reason, judge_failure=True) from None


def unit_interval(metric: str, key: str, value: Any) -> float:
    """``value`` as a float in [0, 1].

    Raises:
        MetricError: (``judge_failure=True``) the judge gave a value outside [0, 1].
    """
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise MetricError(metric, f"judge answered {key}={value!r}, outside [0, 1]", judge_failure=True)
    return number
