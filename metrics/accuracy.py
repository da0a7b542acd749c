"""``accuracy``: an LLM judge decides whether the conversation's final answer matches the reference.

The judge sees the user's goal (``interaction_kwargs.single_turn_prompt``), the reference
(``reward_model.ground_truth``) and the whole conversation, and answers 1 (correct) or 0. For math with
``\\boxed{}`` answers, ``math_accuracy`` is a deterministic alternative without a judge.
"""

from __future__ import annotations

from .judge import ask_judge
from .registry import MetricContext, MetricError, register_metric


@register_metric(
    "accuracy",
    value_range=(0.0, 1.0),
    unit="0/1",
    description="LLM judge: the conversation's final answer matches the reference",
    needs_judge=True,
)
async def accuracy(ctx: MetricContext) -> float:
    """1.0 when the judge says the final answer is correct, 0.0 otherwise.

    Raises:
        MetricError: (``judge_failure=True``) the judge call failed or answered something other than 0/1.
    """
    answer = await ask_judge("accuracy", "accuracy", ctx)
    value = answer["accuracy"]
    if float(value) not in (0.0, 1.0):
        raise MetricError(
            "accuracy", f"judge answered accuracy={value!r}, expected 0 or 1", judge_failure=True
        )
    return float(value)
