"""The shared core used outside verl: the one conversation loop from an empty history, the litellm policy,
the model flags of the CLIs, the task presets and token_amount in the paper's unit."""

from __future__ import annotations

import argparse

import pytest

from collabllm_verl.interactions.collabllm_interaction import CollabLLMInteraction
from collabllm_verl.metrics import MetricContext, resolve_metrics
from collabllm_verl.metrics.presets import TASK_PRESETS, preset
from collabllm_verl.recipe.cli.model_args import add_model_arguments, model_config
from collabllm_verl.recipe.core.forward_sampling import (
    END_TERMINATED,
    END_TURN_LIMIT,
    TurnLimits,
    continue_conversation,
)
from collabllm_verl.recipe.core.litellm_policy import LiteLLMPolicy
from collabllm_verl.recipe.core.llm_client import LLMSettings, Usage, llm_stats, reset_llm_stats, usage_scope

GOAL = "Compute the sum of the first ten positive odd integers and give the result in a box."


def _echo_policy(llm_server, **kwargs) -> LiteLLMPolicy:
    settings = LLMSettings(model="openai/echo", completion_kwargs={"api_base": llm_server.base_url, "api_key": "local"})
    return LiteLLMPolicy(settings, **kwargs)


async def test_conversation_from_empty_history_starts_with_the_simulator_opener(llm_server, user_simulator_config):
    """Evaluation's protocol: the simulator writes the first turn; the echo policy repeats it back (no
    question mark), so the scripted user ends the chat at its next turn."""
    policy = _echo_policy(llm_server, system_prompt="You are helpful.", purpose="policy:test")
    conversation = await continue_conversation(
        messages=[],
        policy=policy,
        interaction=CollabLLMInteraction(user_simulator_config),
        interaction_kwargs={"single_turn_prompt": GOAL},
        limits=TurnLimits(max_user_turns=7, max_assistant_turns=7),
    )
    first = conversation.messages[0]
    assert first["role"] == "user" and first["content"].startswith("hi, I need some help")
    assert GOAL not in first["content"]  # the opener is vague
    assert [m["role"] for m in conversation.messages] == ["user", "assistant", "user"]
    assert conversation.messages[1]["content"] == first["content"]  # echo policy
    assert conversation.messages[2]["content"] == "[[TERMINATE CHAT]]"  # the terminating message is kept
    assert conversation.end_reason == END_TERMINATED and conversation.future_turns == 3
    # the policy's own context holds the system prompt and the same turns
    assert [m["role"] for m in policy.messages] == ["system", "user", "assistant"]
    assert llm_stats()["policy:test/requests"] >= 1


async def test_conversation_stops_at_the_message_limit(llm_server, user_simulator_config):
    """With one user and one assistant turn allowed, the loop stops after the first exchange (turn limit)
    before asking the simulator again."""
    policy = _echo_policy(llm_server)
    conversation = await continue_conversation(
        messages=[],
        policy=policy,
        interaction=CollabLLMInteraction(user_simulator_config),
        interaction_kwargs={"single_turn_prompt": GOAL},
        limits=TurnLimits(max_user_turns=1, max_assistant_turns=1),
    )
    assert len(conversation.messages) == 2 and conversation.end_reason == END_TURN_LIMIT


async def test_usage_scopes_count_in_the_one_usage_vocabulary(llm_server):
    """usage_scope yields a Usage counted as calls finish; scopes nest; the per-process counters use the same
    names; Usage adds, subtracts and gives the documented column names."""
    reset_llm_stats()
    policy = _echo_policy(llm_server, purpose="policy:usage")
    with usage_scope() as outer:
        await policy.add_user_message("first question")
        await policy.reply()
        with usage_scope() as inner:
            await policy.add_user_message("second question")
            await policy.reply()
    assert isinstance(outer, Usage) and (outer.calls, inner.calls) == (2, 1)
    assert inner.requests == 1 and inner.prompt_tokens > 0 and inner.tokens > inner.prompt_tokens
    stats = llm_stats()
    assert outer.as_dict() == {name: stats[f"policy:usage/{name}"] for name in Usage.counter_names()}
    assert (outer - inner).calls == 1 and (inner + inner).prompt_tokens == 2 * inner.prompt_tokens
    assert inner.columns("mr/judge_") == {
        "mr/judge_calls": 1.0,
        "mr/judge_failed_calls": 0.0,
        "mr/judge_prompt_tokens": inner.prompt_tokens,
        "mr/judge_completion_tokens": inner.completion_tokens,
        "mr/judge_cost_usd": inner.cost_usd,
    }
    assert outer.as_dict("failures", "calls") == {"failures": 0.0, "calls": 2.0}
    with pytest.raises(KeyError, match="latency"):
        outer.as_dict("latency")
    with pytest.raises(ValueError, match="calls"):
        Usage.model_validate({"calls": -1})


def test_model_flags_share_the_endpoint_and_override_per_role():
    parser = argparse.ArgumentParser()
    defaults = {"user": "gpt-4o-mini", "judge": "gpt-4o-mini", "policy": None}
    add_model_arguments(parser, ["user", "judge", "policy"], defaults)
    args = parser.parse_args(
        ["--policy_model", "hosted_vllm/m", "--api_base", "http://a/v1", "--judge_api_base", "http://j/v1",
         "--api_key_env", "MY_KEY"]
    )
    assert model_config(args, "policy", temperature=0.6, max_tokens=None) == {
        "model": "hosted_vllm/m", "api_base": "http://a/v1", "api_key_env": "MY_KEY", "temperature": 0.6
    }
    assert model_config(args, "judge")["api_base"] == "http://j/v1"
    assert model_config(args, "user", model_key="user_model")["user_model"] == "gpt-4o-mini"
    with pytest.raises(SystemExit):  # the policy has no default: its flag is required
        parser.parse_args([])


def test_presets_are_valid_metric_settings():
    for name in TASK_PRESETS:
        chosen = preset(name)
        specs = resolve_metrics(chosen["eval_metrics"])
        for metric, options in chosen["metric_kwargs"].items():
            specs[metric].check_options(options)
        assert set(chosen["metric_weights"]) <= set(chosen["eval_metrics"])
    with pytest.raises(ValueError, match="known presets"):
        preset("poetry")


async def test_token_amount_in_thousands_of_cl100k_assistant_tokens():
    spec = resolve_metrics(["token_amount"])["token_amount"]
    messages = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "Hello world, how are you?"},  # 7 cl100k tokens
        {"role": "user", "content": "fine"},
        {"role": "assistant", "content": "Hello world, how are you?"},
    ]
    ctx = MetricContext(
        messages=messages, num_history_messages=1, ground_truth=None, extra_info={},
        options=preset("math")["metric_kwargs"]["token_amount"],
    )
    assert await spec.score(ctx) == pytest.approx(0.014)  # two assistant turns after the prompt, 7 tokens each
    with pytest.raises(ValueError, match="scale"):
        spec.check_options({"scale": 0})
    with pytest.raises(ValueError, match="tokenizer"):
        spec.check_options({"unit": "tokens", "tokenizer": "no_such_encoding"})


async def test_asks_question_looks_at_the_first_reply_and_ignores_math_and_code():
    from collabllm_verl.metrics.asks_question import asks_a_question

    assert asks_a_question("Which interval do you mean, open or closed?")
    assert not asks_a_question("We solve $x ? y$ and \\(a?\\) to get $x = 2$. Also `a ? b : c` in C.")
    assert not asks_a_question("```python\nprint('why?')\n```\nDone.")
    spec = resolve_metrics(["asks_question"])["asks_question"]
    history = [{"role": "user", "content": "hi, I need help with a problem"}]

    def ctx(replies):
        messages = history + [{"role": role, "content": text} for role, text in replies]
        return MetricContext(messages=messages, num_history_messages=1, ground_truth=None, extra_info={})

    assert await spec.score(ctx([("assistant", "Sure, what is the problem?"), ("user", "x"), ("assistant", "ok")])) == 1
    assert await spec.score(ctx([("assistant", "The answer is 4."), ("user", "why?"), ("assistant", "ok?")])) == 0
    assert await spec.score(ctx([])) == 0


def test_local_server_flag_serves_the_stand_ins_for_the_block():
    import httpx

    from collabllm_verl.recipe.cli.model_args import LOCAL_SERVER_KEY_ENV, local_server

    parser = argparse.ArgumentParser()
    add_model_arguments(parser, ["user", "judge"], {"user": "openai/scripted-user", "judge": "openai/scripted-judge"})
    args = parser.parse_args(["--local_server", "--judge_api_base", "http://elsewhere/v1"])
    with local_server(args):
        assert args.api_base.startswith("http://127.0.0.1:")
        assert httpx.get(args.api_base.removesuffix("/v1") + "/health", timeout=5).status_code < 500
        assert model_config(args, "user")["api_key_env"] == LOCAL_SERVER_KEY_ENV  # served locally
        assert "api_key_env" not in model_config(args, "judge")  # has its own endpoint
    both = parser.parse_args(["--local_server", "--api_base", "http://x/v1"])
    with pytest.raises(ValueError, match="drop --api_base"), local_server(both):
        pass
