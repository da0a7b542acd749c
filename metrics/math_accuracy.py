"""``math_accuracy``: rule-based check of the final ``\\boxed{}`` answer with ``math-verify`` (no judge).

Deterministic and free, unlike ``accuracy`` (an LLM judge). The prediction is the last ``\\boxed{...}``
of the last assistant message that contains one, searched from the trained response onwards (answers
that were already in the prompt history do not count). The reference is ``reward_model.ground_truth``:
a bare answer (``\\frac{14}{3}``) or a worked solution whose last ``\\boxed{}`` is the answer.
Equivalent forms (``0.5`` vs ``\\frac12``, ``\\dfrac``, reordered sets, ...) are accepted by
``math_verify.verify``. Parsing and verification run in a small per-process pool of worker processes,
so the event loop is never blocked and ``math-verify``'s signal-based timeouts (5 s each) work.
A timed-out check counts as "not verified" (0), as in ``math-verify``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .registry import MetricContext, MetricError, register_metric

_BOXED = "\\boxed"
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ProcessPoolExecutor:
    """The per-process worker pool (``COLLABLLM_MATH_VERIFY_WORKERS`` processes, default min(2, cpus))."""
    global _pool
    with _pool_lock:
        if _pool is None:
            workers = int(os.environ.get("COLLABLLM_MATH_VERIFY_WORKERS", min(2, os.cpu_count() or 1)))
            _pool = ProcessPoolExecutor(
                max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn")
            )
        return _pool


def _discard_pool(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def _from_last_box(text: str) -> str:
    """``text`` from its last ``\\boxed`` on, so that only that box can be extracted (math-verify would
    otherwise merge nearby boxes such as ``\\boxed{3}, no: \\boxed{4}`` into the set {3, 4})."""
    return text[text.rfind(_BOXED) :]


def grade_boxed_answer(prediction: str, reference: str, timeout_s: int = 5) -> bool:
    """True when the last ``\\boxed{}`` of ``prediction`` is mathematically equal to ``reference``.

    ``reference`` may be a bare answer (wrapped in ``\\boxed{}`` here) or text holding a ``\\boxed{}``.
    Runs ``math_verify.parse`` / ``math_verify.verify`` with signal-based timeouts of ``timeout_s``
    seconds each, so call it from a process's main thread (the worker pool does).
    """
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]
    gold_text = _from_last_box(reference) if _BOXED in reference else f"{_BOXED}{{{reference}}}"
    gold = parse(gold_text, extraction_config=config, parsing_timeout=timeout_s)
    pred = parse(_from_last_box(prediction), extraction_config=config, parsing_timeout=timeout_s)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout_s))


def final_boxed_message(ctx: MetricContext) -> str | None:
    """The last future assistant message containing ``\\boxed``, or None."""
    for message in reversed(ctx.future_messages):
        content = str(message.get("content") or "")
        if message.get("role") == "assistant" and _BOXED in content:
            return content
    return None


@register_metric(
    "math_accuracy",
    value_range=(0.0, 1.0),
    unit="0/1",
    description="math-verify equivalence of the final \\boxed{} answer with the ground truth (no judge)",
)
async def math_accuracy(ctx: MetricContext) -> float:
    """1.0 if the final boxed answer equals the ground truth, else 0.0 (also when there is none).

    Raises:
        ValueError: ``ground_truth`` is not a non-empty string.
        MetricError: the worker pool died (the pool is rebuilt for the next call).
    """
    reference = ctx.ground_truth
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(
            f"math_accuracy needs reward_model.ground_truth to be a non-empty string, got {reference!r:.80}"
        )
    prediction = final_boxed_message(ctx)
    if prediction is None:
        return 0.0
    pool = _executor()
    try:
        ok = await asyncio.get_running_loop().run_in_executor(pool, grade_boxed_answer, prediction, reference)
    except BrokenProcessPool as exc:
        _discard_pool(pool)
        raise MetricError("math_accuracy", f"math-verify worker pool died: {exc}") from None
    return 1.0 if ok else 0.0
