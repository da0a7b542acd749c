"""``must_contain``: rule-based task success for rows that list the strings a correct answer contains.

1.0 when the **last assistant answer** of the conversation contains every string of the row's
``must_contain`` list (case-insensitive substring match), else 0.0. The last assistant answer is the last
assistant message that does not ask for information (:func:`~.asks_question.asks_a_question`); a
conversation whose assistant messages all ask scores 0.0, as one without any assistant message does. In
training the conversation is the trained response and its forward-sampled future (with forward window
w = 0: the response alone); in evaluation the whole conversation. No judge is called.

The list is read from ``extra_info.must_contain`` (rows of the ambiguity-controlled family,
:mod:`collabllm_verl.recipe.dataset.ambiguity_family`), else from ``ground_truth`` when it is a list of
strings. A row with neither is a data error (``ValueError`` naming the field), not a metric failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .asks_question import asks_a_question
from .registry import MetricContext, register_metric

__all__ = ["contains_all", "last_answer", "must_contain_strings"]


def contains_all(text: str, strings: Iterable[str]) -> bool:
    """True when ``text`` contains every one of ``strings``, ignoring case."""
    lowered = text.casefold()
    return all(str(s).casefold() in lowered for s in strings)


def last_answer(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The content of the last assistant message that gives an answer (does not ask), or None."""
    for message in reversed(messages):
        if message.get("role") == "assistant":
            text = str(message.get("content") or "")
            if not asks_a_question(text):
                return text
    return None


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        return None
    items = list(value)  # a list, or the numpy array a parquet row holds
    if not items or not all(isinstance(s, str) and s for s in items):
        return None
    return items


def must_contain_strings(extra_info: Mapping[str, Any] | None, ground_truth: Any = None) -> list[str]:
    """The row's required strings: ``extra_info["must_contain"]``, else a list-of-strings ``ground_truth``.

    Raises:
        ValueError: neither holds a non-empty list of non-empty strings.
    """
    found = _strings((extra_info or {}).get("must_contain"))
    if found is None:
        found = _strings(ground_truth)
    if found is None:
        raise ValueError(
            "metric 'must_contain' needs extra_info.must_contain (or a ground truth that is a list of strings); "
            f"this row has neither (ground_truth {ground_truth!r:.60})"
        )
    return found


@register_metric(
    "must_contain",
    value_range=(0.0, 1.0),
    unit="0/1",
    description="1 when the last assistant answer contains every must_contain string (case-insensitive, no judge)",
)
async def must_contain(ctx: MetricContext) -> float:
    """1.0 / 0.0 as the module docstring says.

    Raises:
        ValueError: the row has no ``must_contain`` list (:func:`must_contain_strings`).
    """
    strings = must_contain_strings(ctx.extra_info, ctx.ground_truth)
    answer = last_answer(ctx.future_messages)
    return 1.0 if answer is not None and contains_all(answer, strings) else 0.0
