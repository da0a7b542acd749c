"""``math_accuracy`` on real MATH-500 answers (data/math/math500.jsonl): correct, equivalent forms, wrong."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from collabllm_verl.metrics import MetricContext, get_metric

MATH500 = Path(__file__).resolve().parents[1] / "data" / "math" / "math500.jsonl"
ROWS = [json.loads(line) for line in MATH500.read_text().splitlines() if line.strip()]
HISTORY = [{"role": "user", "content": "Can you help me with a math problem?"}]


def ctx(future: list[str], ground_truth: str, history=HISTORY) -> MetricContext:
    """A conversation whose future part alternates assistant/user, starting with the trained response."""
    roles = ["assistant", "user"]
    messages = list(history) + [{"role": roles[i % 2], "content": c} for i, c in enumerate(future)]
    return MetricContext(messages=messages, num_history_messages=len(history), ground_truth=ground_truth)


async def score_all(contexts: list[MetricContext]) -> list[float]:
    spec = get_metric("math_accuracy")
    return list(await asyncio.gather(*(spec.score(c) for c in contexts)))


def test_metadata():
    spec = get_metric("math_accuracy")
    assert spec.value_range == (0.0, 1.0) and spec.unit == "0/1" and not spec.needs_judge


async def test_reference_answers_are_correct_against_answer_and_solution():
    rows = ROWS[::5]  # 100 real problems of every subject and level
    by_answer = [
        ctx([f"Here is my work.\n\nSo the answer is $\\boxed{{{r['answer']}}}$."], r["answer"]) for r in rows
    ]
    # multi-turn rows carry the worked solution as the reference: its last \boxed{} is the answer
    by_solution = [ctx([f"The answer is \\boxed{{{r['answer']}}}"], r["solution"]) for r in rows]
    assert await score_all(by_answer) == [1.0] * len(rows)
    assert await score_all(by_solution) == [1.0] * len(rows)


async def test_equivalent_forms_are_accepted():
    fractions = [r["answer"] for r in ROWS if re.fullmatch(r"\\frac\{\d+\}\{\d+\}", r["answer"])]
    integers = [r["answer"] for r in ROWS if re.fullmatch(r"\d+", r["answer"])][:20]
    assert len(fractions) >= 20
    contexts = []
    for answer in fractions:
        a, b = re.findall(r"\d+", answer)
        for form in (f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}", f"\\frac{{{2 * int(a)}}}{{{2 * int(b)}}}"):
            contexts.append(ctx([f"\\boxed{{{form}}}"], answer))
    for answer in integers:
        contexts.append(ctx([f"\\boxed{{{answer}.0}}"], answer))
        contexts.append(ctx([f"\\boxed{{x = {answer}}}"], answer))
    assert await score_all(contexts) == [1.0] * len(contexts)


async def test_wrong_answers_are_rejected():
    integers = [r["answer"] for r in ROWS if re.fullmatch(r"-?\d+", r["answer"])][:60]
    fractions = [r["answer"] for r in ROWS if re.fullmatch(r"\\frac\{\d+\}\{\d+\}", r["answer"])][:20]
    contexts = [ctx([f"\\boxed{{{int(a) + 1}}}"], a) for a in integers]
    contexts += [ctx([f"\\boxed{{{a.replace('frac', 'frac{1}+').split('+')[0]}}}"], a) for a in fractions]
    assert await score_all(contexts) == [0.0] * len(contexts)


async def test_which_answer_counts():
    row = next(r for r in ROWS if r["answer"] == "\\frac{14}{3}")
    gt = row["answer"]
    cases = {
        # the last \boxed{} of the last assistant message that has one
        "later box wins": (ctx(["\\boxed{3} no wait, \\boxed{\\frac{14}{3}}"], gt), 1.0),
        "earlier box overridden": (
            ctx(["\\boxed{\\frac{14}{3}}", "are you sure?", "Actually \\boxed{5}"], gt),
            0.0,
        ),
        "box survives a chatty ending": (
            ctx(["\\boxed{\\frac{14}{3}}", "thanks!", "You're welcome."], gt),
            1.0,
        ),
        "no boxed answer": (ctx(["What have you tried so far?", "nothing", "The answer is 14/3."], gt), 0.0),
        "user's box does not count": (ctx(["What is the answer?", "\\boxed{\\frac{14}{3}}"], gt), 0.0),
        "history does not count": (
            ctx(
                ["Let me ask first: which part?"],
                gt,
                history=[
                    *HISTORY,
                    {"role": "assistant", "content": "\\boxed{\\frac{14}{3}}"},
                    {"role": "user", "content": "why?"},
                ],
            ),
            0.0,
        ),
    }
    scores = await score_all([c for c, _ in cases.values()])
    assert dict(zip(cases, scores, strict=True)) == {name: expected for name, (_, expected) in cases.items()}


async def test_bad_ground_truth_is_an_error():
    with pytest.raises(ValueError, match="ground_truth"):
        await get_metric("math_accuracy").score(ctx(["\\boxed{1}"], ""))
