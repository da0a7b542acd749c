"""LLM-judge metrics (accuracy, interactivity, bleu_score) against the local OpenAI-compatible server.

Every call goes through litellm over real HTTP to the ``scripted-judge`` responder (an offline,
rule-based stand-in, see ``recipe/offline/scripted_judges.py``), so prompt building, JSON parsing, retries and
failure handling are exercised end to end; the scores themselves are the stand-in's rules.
"""

from __future__ import annotations

import pytest
import sacrebleu

from collabllm_verl.metrics import MetricContext, MetricError, get_metric
from collabllm_verl.recipe.llm_client import llm_stats, reset_llm_stats
from collabllm_verl.recipe.offline.scripted_judges import MALFORMED_MARKER, OUT_OF_RANGE_MARKER

GOAL = "Compute 7 * 6 and explain the steps briefly."


def ctx(judge, *assistant_and_user: str, ground_truth="42", system=True) -> MetricContext:
    history = [{"role": "system", "content": "You are a helpful assistant. SYSTEM-SECRET"}] if system else []
    history.append({"role": "user", "content": "can you do a multiplication for me"})
    roles = ["assistant", "user"]
    future = [{"role": roles[i % 2], "content": c} for i, c in enumerate(assistant_and_user)]
    return MetricContext(
        messages=history + future,
        num_history_messages=len(history),
        ground_truth=ground_truth,
        extra_info={
            "interaction_kwargs": {"name": "collabllm", "single_turn_prompt": GOAL, "task_desc": "math"}
        },
        judge=judge,
    )


async def test_accuracy_correct_and_wrong(judge, llm_server):
    spec = get_metric("accuracy")
    right = ctx(judge, "Which numbers?", "7 and 6", "7 * 6 = 42, so the answer is 42.")
    wrong = ctx(judge, "7 * 6 = 48.")
    boxed_reference = ctx(judge, "It is \\frac{1}{2}.", ground_truth="Half of it, so \\boxed{\\frac{1}{2}}")
    assert await spec.score(right) == 1.0
    assert await spec.score(wrong) == 0.0
    assert await spec.score(boxed_reference) == 1.0
    # what the judge was shown: our prompt with task, reference and conversation, no system message
    request = llm_server.received[-1]
    assert request["model"] == "scripted-judge" and request["temperature"] == 0
    system, user = request["messages"]
    assert '"accuracy"' in system["content"]
    assert "<task>\n" + GOAL in user["content"] and "<reference>" in user["content"]
    assert "[assistant]\nIt is \\frac{1}{2}." in user["content"]
    assert "SYSTEM-SECRET" not in user["content"]


async def test_interactivity_mean_of_three_criteria(judge):
    spec = get_metric("interactivity")
    collaborative = ctx(judge, "Do you want the steps too?", "yes", "42. I suggest checking it with 6 * 7.")
    terse = ctx(judge, "42.")
    assert await spec.score(collaborative) == 1.0
    assert await spec.score(terse) == pytest.approx(1 / 3)  # understood, no question, no suggestion


async def test_bleu_of_the_extracted_document(judge):
    spec = get_metric("bleu_score")
    reference = "The quarterly report shows revenue grew by twelve percent while costs stayed flat."
    exact = ctx(judge, "What should it say?", "revenue details", reference, ground_truth=reference)
    partial_text = "The quarterly report shows revenue grew by ten percent and costs rose."
    partial = ctx(judge, partial_text, ground_truth=reference)
    unrelated = ctx(judge, "Bananas are yellow.", ground_truth=reference)
    assert await spec.score(exact) == pytest.approx(1.0)
    assert await spec.score(partial) == pytest.approx(
        sacrebleu.sentence_bleu(partial_text, [reference]).score / 100
    )
    assert 0.1 < await spec.score(partial) < 0.9
    assert await spec.score(unrelated) < 0.05


async def test_malformed_judge_answer_fails_after_retries(judge, llm_server):
    reset_llm_stats()
    with pytest.raises(MetricError) as err:
        await get_metric("accuracy").score(ctx(judge, f"42 {MALFORMED_MARKER}"))
    assert err.value.judge_failure and err.value.metric == "accuracy"
    assert llm_server.stats()["requests"] == 2  # first attempt + num_retries=1
    stats = llm_stats()
    assert stats["judge:accuracy/failures"] == 1 and stats["judge:accuracy/retries"] == 1


@pytest.mark.parametrize("metric", ["accuracy", "interactivity"])
async def test_out_of_range_judge_answer_is_a_judge_failure(judge, llm_server, metric):
    with pytest.raises(MetricError, match=r"outside|expected 0 or 1") as err:
        await get_metric(metric).score(ctx(judge, f"42 {OUT_OF_RANGE_MARKER}"))
    assert err.value.judge_failure
    assert llm_server.stats()["requests"] == 1


@pytest.mark.parametrize(
    "fault", ["malformed_json", "truncated_json", "missing_keys", "server_error", "empty"]
)
async def test_one_bad_answer_is_retried(judge, llm_server, fault):
    llm_server.inject(fault)
    assert await get_metric("accuracy").score(ctx(judge, "The answer is 42.")) == 1.0
    assert llm_server.stats()["requests"] == 2


async def test_request_level_malformed_mode(judge, llm_server):
    noisy = judge.model_copy(
        update={
            "completion_kwargs": {
                **judge.completion_kwargs,
                "extra_body": {"scripted_judge": {"answer": "malformed"}},
            }
        }
    )
    with pytest.raises(MetricError):
        await get_metric("interactivity").score(ctx(noisy, "Do you want steps?"))


async def test_judge_metric_without_judge_settings_is_an_error():
    with pytest.raises(ValueError, match="llm_judge_kwargs"):
        await get_metric("accuracy").score(ctx(None, "42"))
