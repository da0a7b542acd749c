"""Shared pieces of the LLM-judge metrics: the judge prompts and one call helper.

Every judge call goes through :mod:`collabllm_verl.recipe.core.llm_client` (JSON repair, bounded retries,
per-process limits, counters) with ``purpose="judge:<metric>"``. The prompts are written for this
project. Each asks for one JSON object; :data:`JUDGE_TASKS` lists the keys each task must return (the
offline stand-in judges of :mod:`collabllm_verl.recipe.offline.scripted_judges` recognise a task by them).

The conversation is shown to the judge as ``[user]`` / ``[assistant]`` blocks between ``<conversation>``
tags (system messages dropped), the user's goal between ``<task>`` tags, the reference between
``<reference>`` tags and a code task's entry point between ``<entry_point>`` tags. What each judge sees
follows the original recipe (docs/design.md §1): accuracy sees the goal, the reference and the
conversation; interactivity and document extraction the conversation only; code extraction the task text,
the entry point and the conversation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .registry import MetricContext, MetricError

__all__ = [
    "ACCURACY_STRICT_RULES",
    "JUDGE_TASKS",
    "ask_judge",
    "build_judge_messages",
    "reference_text",
    "render_conversation",
    "unit_interval",
]

# task -> the JSON keys (and types) the judge must return.
JUDGE_TASKS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "accuracy": {"thought": str, "accuracy": (int, float, bool, str)},
    "interactivity": {
        "thought": str,
        "understanding": (int, float),
        "clarification": (int, float),
        "suggestion": (int, float),
    },
    "extract_document": {"thought": str, "final_document": str},
    "extract_code": {"thought": str, "final_code": str},
    # one overall score on the coarse 1 / 0.5 / 0 scale (metrics/interactivity.py, option rubric=coarse)
    "interactivity_coarse": {"thought": str, "interactivity": (int, float)},
}

_JSON_ONLY = "Answer with one JSON object and nothing else, in exactly this shape:\n"

# Grading rules this project wrote on top of the original accuracy criterion; used only with the accuracy
# option ``grading: strict`` (docs/fidelity.md 3.3). They close three gaps a lenient judge falls into: an
# early draft that was later corrected, an equivalent form read as a mismatch, and a conversation that
# only asked questions being credited with the reference.
ACCURACY_STRICT_RULES = (
    "Additional grading rules:\n"
    "- Only the assistant's last committed answer counts; earlier drafts or corrected attempts do not.\n"
    "- Judge substance, not wording: equivalent forms are correct (0.5 and 1/2, the same set in another "
    "order, an equivalent expression).\n"
    "- If the assistant never gives an answer (e.g. it only asks questions), the answer is wrong."
)

_SYSTEM_PROMPTS = {
    # The original criterion only (docs/fidelity.md 3.3); ACCURACY_STRICT_RULES is the opt-in addition.
    "accuracy": (
        "You grade the outcome of a conversation between a user and an AI assistant. You are given the "
        "user's target question, a reference answer for it, and the conversation. Decide whether the "
        "assistant's final response to the target question is factually correct and consistent with the "
        "reference: 1 when it agrees with the reference, 0 when it contradicts the reference or misses it.\n"
        + _JSON_ONLY
        + '{"thought": "<one or two sentences of reasoning>", "accuracy": <1 if correct, otherwise 0>}'
    ),
    # Sees the conversation only (no goal, no reference); four anchors per criterion (docs/design.md §1).
    "interactivity": (
        "You rate how well an AI assistant collaborated with a user in a conversation. Users often begin "
        "with an incomplete request and reveal what they need along the way. Rate the assistant on three "
        "criteria; for each one, give the value whose description fits best.\n"
        "understanding (does the assistant understand the user, and is it clear?):\n"
        "  1.0 = it grasps what the user is after and communicates clearly throughout;\n"
        "  0.7 = it understands the user for the most part and is generally clear;\n"
        "  0.3 = it partly misreads the user, or its replies are hard to follow;\n"
        "  0.0 = it misreads the user, or its replies are unclear or beside the point.\n"
        "clarification (does it ask the questions the situation calls for?):\n"
        "  1.0 = it asks precise questions about exactly the information that is needed;\n"
        "  0.7 = its questions help but leave gaps;\n"
        "  0.3 = it asks only generic questions, such as 'does that help?';\n"
        "  0.0 = it asks nothing although questions were needed.\n"
        "suggestion (does it offer suggestions that move the user forward?):\n"
        "  1.0 = its suggestions are useful and concrete enough to act on;\n"
        "  0.7 = its suggestions help somewhat but are limited;\n"
        "  0.3 = its suggestions are vague or generic;\n"
        "  0.0 = it offers none although they would clearly have helped.\n"
        + _JSON_ONLY
        + '{"thought": "<short justification>", "understanding": <1.0, 0.7, 0.3 or 0.0>, '
        '"clarification": <1.0, 0.7, 0.3 or 0.0>, "suggestion": <1.0, 0.7, 0.3 or 0.0>}'
    ),
    # Sees the conversation only; one overall score with three anchors (the paper's runs; option rubric=coarse).
    "interactivity_coarse": (
        "You rate how interactive an AI assistant was in a conversation with a user. Consider how well it "
        "engaged with the user, how clearly it communicated, and whether it worked out what the user needed "
        "(asking about what was missing, offering ways forward) instead of guessing. Give one number from 0 "
        "to 1, using these anchors:\n"
        "  1 = highly interactive: it engages fully, asks every question that matters and clearly moves "
        "the user's understanding and work forward;\n"
        "  0.5 = moderately interactive: it engages to some degree, but misses questions it should have "
        "asked or leaves parts of the need unexplored;\n"
        "  0 = not interactive: it barely engages, asks nothing needed and does little for the user's "
        "actual need.\n"
        "Values between the anchors are allowed.\n"
        + _JSON_ONLY
        + '{"thought": "<short justification>", "interactivity": <a number from 0 to 1>}'
    ),
    "extract_document": (
        "You are given a conversation in which an AI assistant helps a user write or revise a document. "
        "Rebuild the final, complete document: start from the most recent version the assistant wrote, "
        "then fold in every later revision and every section that was written elsewhere in the "
        "conversation, so that the result is one whole text as it stands at the end. Keep the assistant's "
        "wording; leave out greetings, explanations and questions around the document. If the assistant "
        "never produced the document, return an empty string.\n"
        + _JSON_ONLY
        + '{"thought": "<which versions and revisions you merged>", "final_document": "<the document text>"}'
    ),
    "extract_code": (
        "You are given a programming task, the name of the function its tests call (the entry point) and "
        "a conversation in which an AI assistant writes code for the task. Write out the final solution as "
        "one complete, runnable Python program: every import, helper function and class it needs, each in "
        "the latest version found in the conversation. The main function must be named exactly as the entry "
        "point: if the assistant named it otherwise, rename it and its calls. Leave out tests, example "
        "usage and any `if __name__ == \"__main__\":` block. Do not otherwise change the code's logic, and do "
        "not wrap it in Markdown fences. If the assistant never wrote code, return an empty string. When a "
        "starting code is given between <code_prompt> tags, the program must begin with it: its imports "
        "and the function's signature exactly as written there.\n"
        + _JSON_ONLY
        + '{"thought": "<where the final code is and what you renamed>", "final_code": "<the code>"}'
    ),
}

# Which sections each task's user message carries, in this order. "task" is the hidden goal
# (single_turn_prompt), "reference" the ground truth; other sections are given by the caller.
_SECTIONS = {
    "accuracy": ("task", "reference", "conversation"),
    "interactivity": ("conversation",),
    "interactivity_coarse": ("conversation",),
    "extract_document": ("conversation",),
    "extract_code": ("task", "entry_point", "code_prompt", "conversation"),
}
# Sections left out when the caller does not give them (BigCodeBench's code_prompt, as the TRL code asks).
_OPTIONAL_SECTIONS = frozenset({"code_prompt"})


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


def build_judge_messages(
    task: str,
    ctx: MetricContext,
    sections: Mapping[str, str] | None = None,
    *,
    extra_rules: str | None = None,
) -> list[dict[str, str]]:
    """The system + user messages asking the judge to perform ``task`` (a key of :data:`JUDGE_TASKS`).

    Args:
        task: the judge task.
        ctx: the conversation and row fields.
        sections: texts of sections that the context does not hold (``entry_point`` for ``extract_code``;
            the optional ``code_prompt`` is left out when absent or empty).
        extra_rules: text inserted into the system prompt before the answer format (e.g.
            :data:`ACCURACY_STRICT_RULES`); None: the task's prompt unchanged.

    Raises:
        ValueError: a section the task needs is neither in the context nor in ``sections``.
    """
    sections = dict(sections or {})
    blocks = []
    for name in _SECTIONS[task]:
        if name in _OPTIONAL_SECTIONS and not sections.get(name):
            continue
        if name in sections:
            body = sections[name]
        elif name == "task":
            body = ctx.single_turn_prompt or "(not given)"
        elif name == "reference":
            body = reference_text(ctx.ground_truth)
        elif name == "conversation":
            body = render_conversation(ctx.messages)
        else:
            raise ValueError(f"judge task {task!r} needs the section {name!r}")
        blocks.append(f"<{name}>\n{body}\n</{name}>")
    system = _SYSTEM_PROMPTS[task]
    if extra_rules:
        head, sep, answer_format = system.partition(_JSON_ONLY)
        system = f"{head}{extra_rules.rstrip()}\n{sep}{answer_format}"
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "\n\n".join(blocks)},
    ]


async def ask_judge(
    task: str,
    metric: str,
    ctx: MetricContext,
    *,
    sections: Mapping[str, str] | None = None,
    extra_rules: str | None = None,
    validate: Callable[[dict], str | None] | None = None,
) -> dict[str, Any]:
    """Run one judge task for ``metric`` on ``ctx`` and return the parsed JSON object.

    ``sections`` and ``extra_rules`` as in :func:`build_judge_messages`; ``validate`` as in
    :func:`~collabllm_verl.recipe.core.llm_client.acomplete_json` (an answer it rejects is retried).

    Raises:
        LLMCallError: the call failed after the LLM layer's retries, or its answer never had the required
            keys/types; :meth:`MetricSpec.score <collabllm_verl.metrics.registry.MetricSpec.score>` turns it
            into a :class:`MetricError` with ``judge_failure=True``.
        ValueError: no judge is configured (``llm_judge_kwargs`` missing), or a section is missing.
    """
    from collabllm_verl.recipe.core.llm_client import acomplete_json

    if ctx.judge is None:
        raise ValueError(f"metric {metric!r} needs an LLM judge; set reward_kwargs.llm_judge_kwargs.model")
    messages = build_judge_messages(task, ctx, sections, extra_rules=extra_rules)
    return await acomplete_json(
        messages, ctx.judge, required=JUDGE_TASKS[task], purpose=f"judge:{metric}", validate=validate
    )


def unit_interval(metric: str, key: str, value: Any) -> float:
    """``value`` as a float in [0, 1].

    Raises:
        MetricError: (``judge_failure=True``) the judge gave a value outside [0, 1].
    """
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise MetricError(metric, f"judge answered {key}={value!r}, outside [0, 1]", judge_failure=True)
    return number
