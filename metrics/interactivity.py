"""``interactivity``: an LLM judge rates how well the assistant collaborated (intrinsic reward, paper §3).

The judge sees the conversation only (system messages dropped; no hidden goal, no reference), as in the
verl recipe, and rates three criteria on four anchors each, 1.0 / 0.7 / 0.3 / 0.0 (understanding &
clarity, clarification, suggestion helpfulness; docs/design.md §1). The metric is the mean of the three
values. Any value in [0, 1] is accepted; one outside is a judge failure.
"""

from __future__ import annotations

from .judge import ask_judge, unit_interval
from .registry import MetricContext, register_metric

CRITERIA = ("understanding", "clarification", "suggestion")


@register_metric(
    "interactivity",
    value_range=(0.0, 1.0),
    unit="rubric score (mean of three judge scores on anchors 1 / 0.7 / 0.3 / 0)",
    description="LLM judge: mean of understanding & clarity, clarification, suggestion helpfulness",
    needs_judge=True,
)
async def interactivity(ctx: MetricContext) -> float:
    """Mean of the judge's three criterion scores, in [0, 1].

    Raises:
        MetricError: (``judge_failure=True``) the judge call failed or a score is outside [0, 1].
    """
    answer = await ask_judge("interactivity", "interactivity", ctx)
    scores = [unit_interval("interactivity", key, answer[key]) for key in CRITERIA]
    return sum(scores) / len(scores)
