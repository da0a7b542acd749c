"""``accuracy``: an LLM judge decides whether the conversation's final answer matches the reference.

The judge sees the user's goal (``interaction_kwargs.single_turn_prompt``), the reference
(``reward_model.ground_truth``) and the whole conversation. By default it is asked the original question
only (is the final response correct and consistent with the reference, 1 or 0) and its answer is read as
the verl recipe reads it: any number (``0.8``, ``1``, ``"1"``, ``true``) is taken as the value. The option
``grading: strict`` adds this project's three grading rules (:data:`~.judge.ACCURACY_STRICT_RULES`) and
accepts only 0 or 1 (docs/fidelity.md 3.3). For math with ``\\boxed{}`` answers, ``math_accuracy`` is a
deterministic alternative without a judge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .judge import ACCURACY_STRICT_RULES, ask_judge, unit_interval
from .registry import MetricContext, MetricError, register_metric

__all__ = ["GRADINGS", "parse_accuracy"]

GRADINGS = ("original", "strict")


def _check_options(options: Mapping[str, Any]) -> None:
    if options.get("grading", "original") not in GRADINGS:
        raise ValueError(f"accuracy option grading={options.get('grading')!r}; expected one of {GRADINGS}")


def parse_accuracy(value: Any) -> float | None:
    """The judge's ``accuracy`` value as the verl recipe reads it (``float(value)``), or None when that fails.

    Numbers, booleans and numeric strings (``"0.8"``, ``" 1 "``) convert; words such as ``"yes"``, NaN and
    infinities do not.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _readable(answer: dict) -> str | None:
    """``validate`` hook of the judge call: an unreadable value is an unusable answer (retried)."""
    if parse_accuracy(answer.get("accuracy")) is None:
        return f"key 'accuracy' is {answer.get('accuracy')!r}, not a number"
    return None


@register_metric(
    "accuracy",
    value_range=(0.0, 1.0),
    unit="0/1 (any number in [0, 1] the judge gives)",
    description="LLM judge: the conversation's final answer matches the reference",
    needs_judge=True,
    options={
        "grading": "'original' (default: the originals' criterion, any number in [0, 1] accepted) or 'strict' "
        "(adds three grading rules: last committed answer, equivalent forms, asking only is wrong; 0 or 1 only)",
    },
    validate=_check_options,
)
async def accuracy(ctx: MetricContext) -> float:
    """The judge's value in [0, 1]: 1.0 correct, 0.0 wrong (a fraction if the judge gives one).

    Raises:
        ValueError: an unknown ``grading`` option.
        MetricError: (``judge_failure=True``) the judge call failed, its value was never a number (after the
            LLM layer's retries), lies outside [0, 1], or is not 0/1 under ``grading: strict``.
    """
    _check_options(ctx.options)
    strict = ctx.options.get("grading", "original") == "strict"
    answer = await ask_judge(
        "accuracy", "accuracy", ctx, extra_rules=ACCURACY_STRICT_RULES if strict else None, validate=_readable
    )
    value = answer["accuracy"]
    number = unit_interval("accuracy", "accuracy", value)  # readable: checked by _readable before
    if strict and number not in (0.0, 1.0):
        raise MetricError(
            "accuracy",
            f"judge answered accuracy={value!r}, expected 0 or 1 (grading: strict)",
            judge_failure=True,
        )
    return number
