"""``bleu_score``: an LLM extracts the final document from the conversation; BLEU against the reference.

BLEU is sacrebleu's sentence-level BLEU (default 13a tokenisation, exponential smoothing) divided by 100,
so the value is in [0, 1]. The reference is ``reward_model.ground_truth`` (the target document). An empty
extraction (the assistant never produced the document) scores 0.
"""

from __future__ import annotations

import sacrebleu

from .judge import ask_judge, reference_text
from .registry import MetricContext, register_metric


def document_bleu(hypothesis: str, reference: str) -> float:
    """Sentence BLEU of ``hypothesis`` against one ``reference``, in [0, 1] (sacrebleu score / 100)."""
    if not hypothesis.strip() or not reference.strip():
        return 0.0
    score = sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100.0
    return min(1.0, max(0.0, score))  # sacrebleu can return 100.00000000000004 for identical texts


@register_metric(
    "bleu_score",
    value_range=(0.0, 1.0),
    unit="BLEU / 100 (sacrebleu sentence BLEU)",
    description="LLM extracts the final document; BLEU against the reference document",
    needs_judge=True,
)
async def bleu_score(ctx: MetricContext) -> float:
    """BLEU of the judge-extracted final document against the ground truth, in [0, 1].

    Raises:
        MetricError: (``judge_failure=True``) the extraction call failed.
    """
    answer = await ask_judge("extract_document", "bleu_score", ctx)
    return document_bleu(answer["final_document"], reference_text(ctx.ground_truth))
