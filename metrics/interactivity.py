"""``interactivity``: an LLM judge rates how well the assistant collaborated (intrinsic reward, paper §3).

The judge sees the conversation only (system messages dropped; no hidden goal, no reference). Two rubrics,
chosen by the option ``rubric``:

* ``anchors`` (default, as the verl recipe): three criteria on four anchors each, 1.0 / 0.7 / 0.3 / 0.0
  (understanding & clarity, clarification, suggestion helpfulness; docs/design.md §1); the metric is the
  mean of the three values;
* ``coarse`` (as the authors' TRL code, used by the paper's evaluation runs): one overall score with the
  anchors 1 / 0.5 / 0 (values between them allowed); ``evaluate.py --protocol paper`` uses it.

Any value in [0, 1] is accepted; one outside is a judge failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .judge import ask_judge, unit_interval
from .registry import MetricContext, register_metric

__all__ = ["CRITERIA", "RUBRICS", "interactivity"]

CRITERIA = ("understanding", "clarification", "suggestion")
RUBRICS = ("anchors", "coarse")
"""``anchors``: three criteria on 1 / 0.7 / 0.3 / 0 (the verl recipe); ``coarse``: one score on 1 / 0.5 / 0."""


def _check_options(options: Mapping[str, Any]) -> None:
    rubric = options.get("rubric", "anchors")
    if rubric not in RUBRICS:
        raise ValueError(f"interactivity option rubric={rubric!r}; expected one of {RUBRICS}")


@register_metric(
    "interactivity",
    value_range=(0.0, 1.0),
    unit="rubric score in [0, 1] (anchors: mean of three judge scores on 1 / 0.7 / 0.3 / 0; coarse: 1 / 0.5 / 0)",
    description="LLM judge: mean of understanding & clarity, clarification, suggestion helpfulness",
    needs_judge=True,
    options={
        "rubric": "'anchors' (default, three criteria on four anchors) or 'coarse' (one score, 1 / 0.5 / 0)"
    },
    validate=_check_options,
)
async def interactivity(ctx: MetricContext) -> float:
    """The judge's interactivity score in [0, 1]: the mean of its three criterion scores (``rubric=anchors``)
    or its one overall score (``rubric=coarse``).

    Raises:
        ValueError: an unknown ``rubric``.
        MetricError: (``judge_failure=True``) the judge call failed or a score is outside [0, 1].
    """
    _check_options(ctx.options)
    if ctx.options.get("rubric", "anchors") == "coarse":
        answer = await ask_judge("interactivity_coarse", "interactivity", ctx)
        return unit_interval("interactivity", "interactivity", answer["interactivity"])
    answer = await ask_judge("interactivity", "interactivity", ctx)
    scores = [unit_interval("interactivity", key, answer[key]) for key in CRITERIA]
    return sum(scores) / len(scores)
