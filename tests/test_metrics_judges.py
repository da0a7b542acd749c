"""LLM-judge metrics (accuracy, interactivity, bleu_score) against the local OpenAI-compatible server.

Every call goes through litellm over real HTTP to the ``scripted-judge`` responder (an offline,
rule-based stand-in, see ``recipe/offline/scripted_judges.py``), so prompt building, JSON parsing, retries and
failure handling are exercised end to end; the scores themselves are the stand-in's rules.
"""

from __future__ import annotations

import json

import pytest
import sacrebleu
from nltk.translate.bleu_score import sentence_bleu

from collabllm_verl.metrics import MetricContext, MetricError, get_metric
from collabllm_verl.metrics.bleu_score import document_bleu
from collabllm_verl.metrics.judge import ACCURACY_STRICT_RULES
from collabllm_verl.recipe.core.llm_client import llm_stats, reset_llm_stats
from collabllm_verl.recipe.offline.scripted_judges import MALFORMED_MARKER, OUT_OF_RANGE_MARKER
from collabllm_verl.recipe.offline.server import register_responder

GOAL = "Compute 7 * 6 and explain the steps briefly."


def ctx(judge, *assistant_and_user: str, ground_truth="42", system=True, **options) -> MetricContext:
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
        options=options,
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


async def test_interactivity_mean_of_three_criteria(judge, llm_server):
    spec = get_metric("interactivity")
    collaborative = ctx(judge, "Do you want the steps too?", "yes", "42. I suggest checking it with 6 * 7.")
    terse = ctx(judge, "42.")
    assert await spec.score(collaborative) == 1.0
    assert await spec.score(terse) == pytest.approx(1 / 3)  # understood, no question, no suggestion
    # what the judge was shown: the conversation only (as the verl recipe), the four anchors per criterion
    system, user = llm_server.received[-1]["messages"]
    assert user["content"].startswith("<conversation>\n") and user["content"].endswith("</conversation>")
    assert GOAL not in user["content"] and "<task>" not in user["content"]
    assert "SYSTEM-SECRET" not in user["content"]
    for criterion in ("understanding", "clarification", "suggestion"):
        block = system["content"].split(f"{criterion} (", 1)[1].split("\n", 5)
        assert [line.strip()[:3] for line in block[1:5]] == ["1.0", "0.7", "0.3", "0.0"], criterion


async def test_interactivity_averages_anchor_values(judge):
    """A judge answering on the four anchors (1 / 0.7 / 0.3 / 0): the metric is the plain mean."""
    import json

    from collabllm_verl.recipe.offline.server import register_responder

    anchors = {"thought": "t", "understanding": 0.7, "clarification": 0.3, "suggestion": 1.0}
    register_responder("anchor-judge", lambda messages, request: json.dumps(anchors))
    anchor_judge = judge.model_copy(update={"model": "openai/anchor-judge"})
    assert await get_metric("interactivity").score(ctx(anchor_judge, "42.")) == pytest.approx(2.0 / 3)


# Two pairs of our own. The originals compute NLTK's sentence_bleu([reference], hypothesis) on raw strings,
# i.e. over characters; word-level BLEU gives far lower numbers for the same texts.
REFERENCE_DOC = (
    "Our team spent the spring rebuilding the checkout page. Customers had told us that the old form asked for "
    "the same address twice, so we merged the steps and cut the time to pay by almost half."
)
UNRELATED_DOC = (
    "The mountain trail starts behind the old mill and climbs through pine forest for about three miles. "
    "Hikers should bring water, because the spring near the summit dries up in late summer."
)
PARAPHRASE_DOC = (
    "This spring our team rebuilt the checkout page. Customers told us the old form asked for their address "
    "twice, so we combined the steps and nearly halved the time it takes to pay."
)


def test_default_bleu_is_the_originals_character_level_nltk_value():
    for hypothesis in (UNRELATED_DOC, PARAPHRASE_DOC):
        assert document_bleu(hypothesis, REFERENCE_DOC) == sentence_bleu([REFERENCE_DOC], hypothesis)
        words = document_bleu(hypothesis, REFERENCE_DOC, unit="words")
        assert words == pytest.approx(sacrebleu.sentence_bleu(hypothesis, [REFERENCE_DOC]).score / 100)
    # the gap the issue measured: unrelated texts 0.22 vs 0.03, a paraphrase 0.73 vs 0.08 (their pairs)
    unrelated, paraphrase = (document_bleu(h, REFERENCE_DOC) for h in (UNRELATED_DOC, PARAPHRASE_DOC))
    assert 0.2 < unrelated < 0.5 and document_bleu(UNRELATED_DOC, REFERENCE_DOC, unit="words") < 0.05
    assert 0.7 < paraphrase < 0.8 and document_bleu(PARAPHRASE_DOC, REFERENCE_DOC, unit="words") < 0.4
    assert document_bleu(REFERENCE_DOC, REFERENCE_DOC) == 1.0
    assert document_bleu("", REFERENCE_DOC) == 0.0 and document_bleu("abc", "xyz") == 0.0
    with pytest.raises(ValueError, match="unit"):
        document_bleu("a", "b", unit="tokens")


async def test_bleu_of_the_extracted_document(judge, llm_server):
    spec = get_metric("bleu_score")
    exact = ctx(judge, "What should it say?", "revenue details", REFERENCE_DOC, ground_truth=REFERENCE_DOC)
    partial = ctx(judge, PARAPHRASE_DOC, ground_truth=REFERENCE_DOC)
    words = ctx(judge, PARAPHRASE_DOC, ground_truth=REFERENCE_DOC, unit="words")
    assert await spec.score(exact) == pytest.approx(1.0)
    assert await spec.score(partial) == sentence_bleu([REFERENCE_DOC], PARAPHRASE_DOC)
    word_bleu = sacrebleu.sentence_bleu(PARAPHRASE_DOC, [REFERENCE_DOC]).score / 100
    assert await spec.score(words) == pytest.approx(word_bleu)
    # the extraction judge sees the conversation only and is asked to merge every revision
    system, user = llm_server.received[-1]["messages"]
    assert user["content"].startswith("<conversation>\n") and "<reference>" not in user["content"]
    assert "complete document" in system["content"] and "every later revision" in system["content"]
    spec.check_options({"unit": "words"})
    with pytest.raises(ValueError, match="unit"):
        spec.check_options({"unit": "tokens"})


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


# --- accuracy: the original criterion and the verl recipe's reading of the value (fidelity.md 3.3) ---

FIXED_JUDGE = "fid-fixed-accuracy-judge"


def _fixed_answer(messages: list, request: dict) -> str:
    """Responder answering every request with the ``accuracy`` value given in the request's extra body."""
    return json.dumps({"thought": "fixed answer for a parsing test", "accuracy": request["fixed_accuracy"]})


def fixed_judge(judge, value) -> object:
    register_responder(FIXED_JUDGE, _fixed_answer)
    kwargs = {**judge.completion_kwargs, "extra_body": {"fixed_accuracy": value}}
    return judge.model_copy(update={"model": f"openai/{FIXED_JUDGE}", "completion_kwargs": kwargs})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.8", 0.8), ("1", 1.0), (" 0 ", 0.0), (0.8, 0.8), (1, 1.0), (True, 1.0), (False, 0.0)],
)
async def test_accuracy_reads_any_number_as_the_verl_recipe(judge, llm_server, value, expected):
    assert await get_metric("accuracy").score(ctx(fixed_judge(judge, value), "42")) == pytest.approx(expected)
    assert llm_server.stats()["requests"] == 1


@pytest.mark.parametrize("value", ["yes", "correct", None, "nan"])
async def test_accuracy_value_that_is_no_number_is_a_judge_failure(judge, llm_server, value):
    reset_llm_stats()
    with pytest.raises(MetricError) as err:
        await get_metric("accuracy").score(ctx(fixed_judge(judge, value), "42"))
    assert err.value.judge_failure
    assert llm_server.stats()["requests"] == 2  # unusable answer: retried once (num_retries=1), then failed
    assert llm_stats()["judge:accuracy/failures"] == 1


async def test_default_accuracy_prompt_is_the_original_criterion_and_strict_adds_the_rules(judge, llm_server):
    spec = get_metric("accuracy")
    assert await spec.score(ctx(judge, "7 * 6 = 42.")) == 1.0
    default_system = llm_server.received[-1]["messages"][0]["content"]
    assert await spec.score(ctx(judge, "7 * 6 = 42.", grading="strict")) == 1.0
    strict_system = llm_server.received[-1]["messages"][0]["content"]
    for rule in ACCURACY_STRICT_RULES.splitlines()[1:]:
        assert rule not in default_system and rule in strict_system
    assert "last committed answer" not in default_system and "only asks" not in default_system
    assert "consistent with the reference" in default_system and "contradicts" in default_system
    # the answer format stays last in both prompts
    assert default_system.rstrip().endswith("otherwise 0>}") and strict_system.rstrip().endswith(
        "otherwise 0>}"
    )
    # strict accepts 0 or 1 only; the default takes the fraction
    assert await spec.score(ctx(fixed_judge(judge, 0.5), "42")) == 0.5
    with pytest.raises(MetricError, match="expected 0 or 1") as err:
        await spec.score(ctx(fixed_judge(judge, 0.5), "42", grading="strict"))
    assert err.value.judge_failure
    spec.check_options({"grading": "strict"})
    with pytest.raises(ValueError, match="grading"):
        spec.check_options({"grading": "lenient"})
