"""``token_amount``: whitespace words (default, verl recipe) or policy-tokenizer tokens (paper)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from collabllm_verl.metrics import MetricContext, get_metric
from collabllm_verl.recipe.cpu.tiny_model import build_tiny_model

MESSAGES = [
    {"role": "user", "content": "please write a haiku about rain"},  # history: never counted
    {"role": "assistant", "content": "Do you want it  sad\nor hopeful?"},  # trained response: 7 words
    {"role": "user", "content": "hopeful please"},  # 2 words
    {"role": "assistant", "content": "Soft rain on tin roofs /\tgardens drink"},  # 8 words ("/" counts)
]


def ctx(options=None, tokenizer=None) -> MetricContext:
    return MetricContext(
        messages=MESSAGES, num_history_messages=1, options=options or {}, tokenizer=tokenizer
    )


async def test_whitespace_words_of_all_future_messages_by_default():
    assert await get_metric("token_amount").score(ctx()) == 17.0


async def test_assistant_messages_only():
    assert await get_metric("token_amount").score(ctx({"roles": "assistant"})) == 15.0


async def test_policy_tokenizer_tokens(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    spec = get_metric("token_amount")
    all_tokens = await spec.score(ctx({"unit": "tokens"}, tokenizer))
    assistant_tokens = await spec.score(ctx({"unit": "tokens", "roles": "assistant"}, tokenizer))
    expected_assistant = sum(
        len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
        for m in (MESSAGES[1], MESSAGES[3])
    )
    assert assistant_tokens == expected_assistant
    assert all_tokens == expected_assistant + len(
        tokenizer(MESSAGES[2]["content"], add_special_tokens=False)["input_ids"]
    )
    assert all_tokens > 17  # a small BPE vocabulary splits words into several tokens


async def test_tokens_without_tokenizer_and_bad_options_are_errors():
    spec = get_metric("token_amount")
    with pytest.raises(ValueError, match="tokenizer"):
        await spec.score(ctx({"unit": "tokens"}))
    with pytest.raises(ValueError, match="unit"):
        spec.check_options({"unit": "characters"})
    with pytest.raises(ValueError, match="no option"):
        spec.check_options({"per_thousand": True})


async def test_session_scope_counts_the_history_too():
    """fidelity.md 4.1: the authors' data engine counts the whole session (history included)."""
    history = [
        {"role": "user", "content": "help with rain"},
        {"role": "assistant", "content": "What kind of text?"},  # 4 words, counted only with scope=session
    ]
    messages = [*history, *MESSAGES]  # the history: 3 messages, then the response
    spec = get_metric("token_amount")
    assert await spec.score(MetricContext(messages=messages, num_history_messages=3)) == 17.0
    scoped = MetricContext(messages=messages, num_history_messages=3, options={"scope": "session"})
    assert await spec.score(scoped) == 17.0 + 3 + 4 + 6
    assistant = dict(scoped.options, roles="assistant")
    scoped_assistant = MetricContext(messages=messages, num_history_messages=3, options=assistant)
    assert await spec.score(scoped_assistant) == 15.0 + 4
    with pytest.raises(ValueError, match="scope"):
        spec.check_options({"scope": "history"})
