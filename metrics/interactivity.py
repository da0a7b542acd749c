"""``interactivity``: an LLM judge rates how well the assistant collaborated (intrinsic reward, paper §3).

The judge scores three criteria in [0, 1] (understanding & clarity, clarification, suggestion
helpfulness); the metric is their mean.
"""

from __future__ import annotations

from .judge import ask_judge, unit_interval
from .registry import MetricContext, register_metric

CRITERIA = ("understanding", "clarification", "suggestion")


@register_metric(
    "interactivity",
    value_range=(0.0, 1.0),
    unit="rubric score (mean of three judge scores in [0, 1])",
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
