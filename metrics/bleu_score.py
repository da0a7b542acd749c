"""``bleu_score``: an LLM extracts the final document from the conversation; BLEU against the reference.

Two units, chosen with ``+reward.reward_kwargs.metric_kwargs.bleu_score.unit=...``:

* ``characters`` (default, as both original implementations): NLTK's
  ``sentence_bleu([reference], hypothesis)`` called on the raw strings, so its "tokens" are characters,
  spaces included: character-level BLEU-4, equal weights, no smoothing. This reproduces the originals'
  numbers; it is much higher than word-level BLEU for the same texts (measured: two unrelated paragraphs
  0.37 here vs 0.03 word-level; a close paraphrase 0.73 vs 0.33).
* ``words``: sacrebleu's sentence-level BLEU (13a tokenisation, exponential smoothing) divided by 100, the
  usual word-level BLEU.

Both values are in [0, 1]. The reference is ``reward_model.ground_truth`` (the target document). An empty
extraction (the assistant never produced the document) scores 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import sacrebleu
from nltk.translate.bleu_score import sentence_bleu

from .judge import ask_judge, reference_text
from .registry import MetricContext, register_metric

UNITS = ("characters", "words")


def document_bleu(hypothesis: str, reference: str, *, unit: str = "characters") -> float:
    """BLEU of ``hypothesis`` against one ``reference``, in [0, 1].

    Args:
        hypothesis: the extracted document.
        reference: the target document.
        unit: ``"characters"`` (NLTK ``sentence_bleu`` on the raw strings, as the originals) or ``"words"``
            (sacrebleu sentence BLEU / 100).

    Raises:
        ValueError: an unknown ``unit``.
    """
    if unit not in UNITS:
        raise ValueError(f"bleu_score unit={unit!r}; expected one of {UNITS}")
    if not hypothesis.strip() or not reference.strip():
        return 0.0
    if unit == "characters":
        with warnings.catch_warnings():
            # NLTK warns whenever some n-gram order has no match (the score is then 0); expected here.
            warnings.simplefilter("ignore", UserWarning)
            score = float(sentence_bleu([reference], hypothesis))
    else:
        score = sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100.0
    return min(1.0, max(0.0, score))  # sacrebleu can return 100.00000000000004 for identical texts


def _check_options(options: Mapping[str, Any]) -> None:
    if options.get("unit", "characters") not in UNITS:
        raise ValueError(f"bleu_score option unit={options.get('unit')!r}; expected one of {UNITS}")


@register_metric(
    "bleu_score",
    value_range=(0.0, 1.0),
    unit="BLEU in [0, 1] (default: character-level NLTK sentence BLEU, as the originals; option unit=words)",
    description="LLM extracts the final document; BLEU against the reference document",
    needs_judge=True,
    options={
        "unit": "'characters' (default: NLTK sentence_bleu on raw strings, as the originals) or 'words' "
        "(sacrebleu sentence BLEU / 100)",
    },
    validate=_check_options,
)
async def bleu_score(ctx: MetricContext) -> float:
    """BLEU of the judge-extracted final document against the ground truth, in [0, 1].

    Raises:
        MetricError: (``judge_failure=True``) the extraction call failed.
        ValueError: an unknown ``unit`` option.
    """
    _check_options(ctx.options)
    answer = await ask_judge("extract_document", "bleu_score", ctx)
    return document_bleu(
        answer["final_document"], reference_text(ctx.ground_truth), unit=ctx.options.get("unit", "characters")
    )
