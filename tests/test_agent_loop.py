"""Tests of the CollabLLM agent loop (recipe/verl_adapters/agent_loop.py, recipe/core/forward_sampling.py).

The loop runs in-process through verl's real ``AgentLoopWorker.generate_sequences`` (agent-loop YAML
loading, hydra instantiation per sample, padding and batching), with

* a scripted policy standing in for verl's server manager (``recipe/testing/agent_loop_harness.py``): it returns
  token ids of scripted replies (the tiny model's real tokenizer) and per-token log-probs, and records
  every request;
* the real user simulator (``CollabLLMInteraction``) calling the local OpenAI-compatible server's
  scripted user (``openai/scripted-user``) over HTTP through litellm.

The scripted user answers a clarifying question (a message containing "?") with the full goal and ends
the chat when the assistant gives an answer (no "?").
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker, _agent_loop_registry
from verl.protocol import DataProto

from collabllm_verl.interactions.simulator_prompt import parse_simulator_prompt
from collabllm_verl.recipe.core.forward_sampling import (
    TurnLimits,
    reasoning_is_well_formed,
    unusable_response_reason,
)
from collabllm_verl.recipe.cpu.tiny_model import build_tiny_model
from collabllm_verl.recipe.testing.agent_loop_harness import (
    ScriptedPolicy,
    compose_trainer_config,
    rows_to_batch,
)
from collabllm_verl.recipe.verl_adapters import agent_loop as agent_loop_module
from collabllm_verl.recipe.verl_adapters.agent_loop import resolve_interaction_config_path

RESPONSE_LENGTH = 48
QUESTION = "Could you tell me more about what you need?"
ANSWER = "Here is the final answer: 42."
SYSTEM = "You are a helpful assistant."


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def write_configs(tmp_path, server, *, num_retries: int = 1) -> str:
    """An interaction YAML pointing at the local scripted user, and an agent-loop YAML naming it by a path
    relative to the agent-loop YAML's directory. Returns the agent-loop YAML's path."""
    folder = tmp_path / "configs"
    folder.mkdir(exist_ok=True)
    (folder / "interaction.yaml").write_text(
        "interaction:\n"
        "  - name: collabllm\n"
        "    class_name: collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction\n"
        f"    config: {{user_model: openai/scripted-user, api_base: '{server.base_url}', api_key: local,\n"
        f"             timeout: 5, num_retries: {num_retries}, backoff_initial: 0.01, backoff_max: 0.05}}\n"
    )
    (folder / "agent.yaml").write_text(
        "- name: collabllm_agent\n"
        "  _target_: collabllm_verl.recipe.verl_adapters.agent_loop.CollabLLMAgentLoop\n"
        "  interaction_config_path: interaction.yaml\n"
    )
    return str(folder / "agent.yaml")


def trainer_config(model_dir: str, agent_yaml: str, *, s=3, max_user_turns=2, max_assistant_turns=3,
                   budget: int | None = 4096, extra=()):
    """verl's full PPO trainer config (composed from verl's own YAML) with this test's rollout settings.

    ``budget`` sets ``rollout.custom.future_token_budget`` (large by default, so that the tests of turn shapes
    are not cut by it); None leaves it unset (the default: ``response_length``)."""
    def value(v):
        return "null" if v is None else v

    if budget is not None:
        extra = [f"+actor_rollout_ref.rollout.custom.future_token_budget={budget}", *extra]

    return compose_trainer_config([
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.prompt_length=512",
        f"actor_rollout_ref.rollout.response_length={RESPONSE_LENGTH}",
        "actor_rollout_ref.rollout.calculate_log_probs=True",
        f"actor_rollout_ref.rollout.multi_turn.num_repeat_rollouts={value(s)}",
        f"actor_rollout_ref.rollout.multi_turn.max_user_turns={value(max_user_turns)}",
        f"actor_rollout_ref.rollout.multi_turn.max_assistant_turns={value(max_assistant_turns)}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_yaml}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        *extra,
    ])


def goal_of(i: int) -> str:
    return f"Find the sum of the first {10 + i} positive odd integers and explain the pattern."


def make_batch(n: int, *, system: bool = True) -> DataProto:
    """``n`` dataset rows as verl's agent-loop worker receives them."""
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"hi, can you help me with task {i}"}]
        rows.append({
            "raw_prompt": ([{"role": "system", "content": SYSTEM}] if system else []) + messages,
            "agent_name": "collabllm_agent",
            "extra_info": {"index": i, "interaction_kwargs": {
                "name": "collabllm", "single_turn_prompt": goal_of(i), "task_desc": "math problem solving"}},
            "index": i,
        })
    return rows_to_batch(rows)


async def run_batch(config, policy: ScriptedPolicy, n: int, **batch_kwargs) -> DataProto:
    worker = AgentLoopWorker(config, llm_client=policy)
    return await worker.generate_sequences(make_batch(n, **batch_kwargs))


def simulator_requests(server) -> list[dict]:
    """Goal and visible history of every user-simulator request the local server received."""
    parsed = []
    for body in list(server.received):
        text = "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
        parsed.append({**parse_simulator_prompt(text), "raw": text})
    return parsed


def payloads(output: DataProto) -> list[dict]:
    return list(output.non_tensor_batch["collabllm"])


# --------------------------------------------------------------------------------------------------
# forward sampling through verl's AgentLoopWorker
# --------------------------------------------------------------------------------------------------
async def test_future_conversations_structure_tokens_and_goals(tmp_path, llm_server, model_dir, tokenizer):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server))
    policy = ScriptedPolicy(tokenizer, first=QUESTION, future=QUESTION)
    output = await run_batch(config, policy, n=2)

    # the trained tokens: the scripted response, mask 1 on it, its log-probs, right padding
    expected_ids = policy.script(QUESTION)
    n_tokens = len(expected_ids)
    for i in range(2):
        responses = output.batch["responses"][i].tolist()
        assert responses[:n_tokens] == expected_ids
        assert output.batch["response_mask"][i].tolist() == [1] * n_tokens + [0] * (RESPONSE_LENGTH - n_tokens)
        logprobs = output.batch["rollout_log_probs"][i].tolist()
        assert logprobs[:n_tokens] == pytest.approx([-0.01 * (k + 1) for k in range(n_tokens)])
        assert logprobs[n_tokens:] == [0.0] * (RESPONSE_LENGTH - n_tokens)
        prompt_text = tokenizer.decode(output.batch["prompts"][i], skip_special_tokens=False)
        assert prompt_text.endswith(f"task {i}<|im_end|>\n<|im_start|>assistant\n")
    assert list(output.non_tensor_batch["max_global_steps"]) == [5, 5]
    assert list(output.non_tensor_batch["min_global_steps"]) == [5, 5]

    for i, payload in enumerate(payloads(output)):
        assert payload["forward_sampling_skipped"] is False and payload["skip_reason"] is None
        assert payload["num_history_messages"] == 1
        assert len(payload["future_conversations"]) == 3
        assert payload["future_turns"] == [4, 4, 4]
        assert payload["end_reasons"] == ["turn_limit"] * 3
        assert payload["early_terminations"] == 0 and payload["simulator_failures"] == 0
        assert payload["forward_sampling_seconds"] > 0
        # the simulator's usage for this response: 3 conversations x 2 user turns, no failure
        assert payload["simulator_usage"]["calls"] == 6 and payload["simulator_usage"]["failures"] == 0
        assert payload["simulator_usage"]["prompt_tokens"] > 0
        assert payload["simulator"] == f"openai/scripted-user at {llm_server.base_url}"
        assert payload["simulator_error"] is None
        for conversation in payload["future_conversations"]:
            roles = [m["role"] for m in conversation]
            assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]
            assert conversation[0]["content"] == f"hi, can you help me with task {i}"  # no system message
            assert conversation[1]["content"] == QUESTION  # the trained response
            assert conversation[2]["content"] == f"Sure, here is exactly what I need: {goal_of(i)}"

    # 2 samples x 3 conversations x 2 user turns, each carrying its own row's goal
    requests = simulator_requests(llm_server)
    assert len(requests) == 12
    for request in requests:
        task = int(request["history"][0]["content"].rsplit(" ", 1)[-1])
        assert request["goal"] == goal_of(task)
        assert SYSTEM not in request["raw"]

    # future policy turns: the chat template's rendering of the conversation, no log-probs, token budget
    future_calls = [c for c in policy.calls if not c["first"]]
    assert len(future_calls) == 12
    assert len({c["request_id"] for c in future_calls}) == 6  # one sticky request id per conversation
    for call in future_calls:
        assert call["sampling_params"]["logprobs"] is False
        assert call["sampling_params"]["max_tokens"] == RESPONSE_LENGTH
        assert call["sampling_params"]["temperature"] == config.actor_rollout_ref.rollout.temperature
        task = int(call["prompt_text"].split("task ", 1)[1][0])
        turns = call["prompt_text"].count("<|im_start|>user") - 1
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"hi, can you help me with task {task}"}]
        for _ in range(turns):
            messages += [{"role": "assistant", "content": QUESTION},
                         {"role": "user", "content": f"Sure, here is exactly what I need: {goal_of(task)}"}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert call["prompt_text"] == rendered


async def test_early_termination_when_the_policy_answers(tmp_path, llm_server, model_dir, tokenizer):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server))
    output = await run_batch(config, ScriptedPolicy(tokenizer, first=QUESTION, future=ANSWER), n=1)
    payload = payloads(output)[0]
    assert payload["end_reasons"] == ["terminated"] * 3
    assert payload["early_terminations"] == 3
    assert payload["future_turns"] == [3, 3, 3]
    for conversation in payload["future_conversations"]:
        # the terminating message is kept as the last user turn (judges and token_amount see it)
        assert conversation[1:] == [
            {"role": "assistant", "content": QUESTION},
            {"role": "user", "content": f"Sure, here is exactly what I need: {goal_of(0)}"},
            {"role": "assistant", "content": ANSWER},
            {"role": "user", "content": "[[TERMINATE CHAT]]"},
        ]

    # an answer as the trained response: the user ends the chat at once
    llm_server.reset()
    output = await run_batch(config, ScriptedPolicy(tokenizer, first=ANSWER), n=1)
    payload = payloads(output)[0]
    assert payload["future_turns"] == [1, 1, 1] and payload["early_terminations"] == 3
    assert [c[-1] for c in payload["future_conversations"]] == [{"role": "user", "content": "[[TERMINATE CHAT]]"}] * 3


@pytest.mark.parametrize(
    "max_user_turns, max_assistant_turns, shape",
    [
        (1, None, "A1 U1 A2"),
        (2, 3, "A1 U1 A2 U2 A3"),  # the recipe default: the original TRL code's futures
        (2, 2, "A1 U1 A2 U2"),  # the futures the verl recipe judged
        (3, 2, "A1 U1 A2 U2"),
        (None, 2, "A1 U1 A2 U2"),
        (2, 5, "A1 U1 A2 U2 A3"),
    ],
)
async def test_turn_limits(tmp_path, llm_server, model_dir, tokenizer, max_user_turns, max_assistant_turns, shape):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=2,
                            max_user_turns=max_user_turns, max_assistant_turns=max_assistant_turns)
    output = await run_batch(config, ScriptedPolicy(tokenizer, first=QUESTION, future=QUESTION), n=1)
    payload = payloads(output)[0]
    future_turns = len(shape.split()) - 1
    assert payload["future_turns"] == [future_turns] * 2
    assert payload["end_reasons"] == ["turn_limit"] * 2
    for conversation in payload["future_conversations"]:
        assert " ".join(m["role"][0].upper() for m in conversation[1:]) == " ".join(t[0] for t in shape.split())
    assert llm_server.stats()["model:scripted-user"] == 2 * shape.count("U")


@pytest.mark.parametrize(
    "first, reason",
    [
        ("cut", "truncated"),
        ("", "empty"),
        ("<think>the user wants a proof, start with", "malformed_think"),
        ("some reasoning</think>Here you go.", "malformed_think"),
        ("<think>plan</think>   ", "empty"),
        ("<think></think>Here you go.", "empty_think"),
        ("<think>a</think>Here<think>b</think> you go.", "repeated_think"),
    ],
)
async def test_unusable_response_skips_forward_sampling(tmp_path, llm_server, model_dir, tokenizer, first, reason):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server))
    if first == "cut":  # the whole budget, no stop token
        first = tokenizer.encode(" word", add_special_tokens=False)[:1] * RESPONSE_LENGTH
    policy = ScriptedPolicy(tokenizer, first=first)
    output = await run_batch(config, policy, n=2)
    for payload in payloads(output):
        assert payload["forward_sampling_skipped"] is True
        assert payload["skip_reason"] == reason
        assert payload["future_conversations"] == [] and payload["future_turns"] == []
        assert payload["forward_sampling_seconds"] == 0.0
    assert len(policy.calls) == 2  # only the trained responses
    assert llm_server.stats().get("requests", 0) == 0
    # the response itself is still a trained sample
    n_tokens = len(policy.script(first))
    assert output.batch["response_mask"].sum(dim=1).tolist() == [n_tokens, n_tokens]


async def test_reasoning_is_hidden_from_the_simulator(tmp_path, llm_server, model_dir, tokenizer):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=1, max_user_turns=1)
    first = "<think>secret plan: ask about the domain</think>Which area is this about?"
    output = await run_batch(config, ScriptedPolicy(tokenizer, first=first, future=ANSWER), n=1)
    payload = payloads(output)[0]
    assert payload["forward_sampling_skipped"] is False
    assert payload["future_conversations"][0][1] == {"role": "assistant", "content": "Which area is this about?"}
    requests = simulator_requests(llm_server)
    assert len(requests) == 1
    assert "secret plan" not in requests[0]["raw"] and "<think>" not in requests[0]["raw"]
    assert requests[0]["history"][-1]["content"] == "Which area is this about?"


async def test_reasoning_opened_by_the_chat_template(tmp_path, llm_server, model_dir, tokenizer):
    """Templates of reasoning models end the generation prompt with ``<think>``: a response holding only the
    closing tag is then well formed, and its reasoning is hidden from the simulator."""
    import shutil

    thinking_dir = tmp_path / "thinking_model"
    shutil.copytree(model_dir, thinking_dir)
    template = (thinking_dir / "chat_template.jinja").read_text()
    assert "'<|im_start|>assistant\\n'" in template
    (thinking_dir / "chat_template.jinja").write_text(
        template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'"))
    config = trainer_config(str(thinking_dir), write_configs(tmp_path, llm_server), s=1, max_user_turns=1)
    first = "the user is vague; ask.</think>Which area is this about?"
    output = await run_batch(config, ScriptedPolicy(tokenizer, first=first, future=ANSWER), n=1)
    payload = payloads(output)[0]
    assert payload["forward_sampling_skipped"] is False
    assert payload["future_conversations"][0][1]["content"] == "Which area is this about?"
    assert "the user is vague" not in simulator_requests(llm_server)[0]["raw"]


async def test_simulator_failure_ends_only_that_conversation(tmp_path, llm_server, model_dir, tokenizer):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server, num_retries=0))
    llm_server.inject("server_error")  # exactly one simulator request fails, with no retry left
    output = await run_batch(config, ScriptedPolicy(tokenizer, first=QUESTION, future=QUESTION), n=1)
    payload = payloads(output)[0]
    assert payload["simulator_failures"] == 1
    assert sorted(payload["end_reasons"]) == ["simulator_failure", "turn_limit", "turn_limit"]
    failed = payload["end_reasons"].index("simulator_failure")
    assert payload["future_turns"][failed] in (0, 2)
    assert sorted(payload["future_turns"])[1:] == [4, 4]
    # the failure and its endpoint are reported for the failure budget; 1 of the 6 calls failed
    assert "InternalServerError" in payload["simulator_error"]
    assert payload["simulator_usage"]["failures"] == 1 and payload["simulator_usage"]["calls"] in (5, 6)

    # every request fails: the batch still completes, with every conversation reported as failed
    llm_server.reset()
    llm_server.configure(fault_rate=1.0, fault_modes=["server_error"])
    output = await run_batch(config, ScriptedPolicy(tokenizer, first=QUESTION), n=2)
    for payload in payloads(output):
        assert payload["simulator_failures"] == 3
        assert payload["future_turns"] == [0, 0, 0]
        assert payload["end_reasons"] == ["simulator_failure"] * 3
    assert output.batch["responses"].shape == (2, RESPONSE_LENGTH)


async def test_goals_stay_with_their_conversations_under_concurrency(tmp_path, llm_server, model_dir, tokenizer):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server))
    llm_server.configure(latency_ms=20)
    policy = ScriptedPolicy(tokenizer, first=QUESTION, future=QUESTION, delay_s=0.02, future_rendezvous=3)
    output = await run_batch(config, policy, n=4, system=False)
    requests = simulator_requests(llm_server)
    assert len(requests) == 4 * 3 * 2
    for request in requests:
        task = int(request["history"][0]["content"].rsplit(" ", 1)[-1])
        assert request["goal"] == goal_of(task)
    for i, payload in enumerate(payloads(output)):
        for conversation in payload["future_conversations"]:
            user_turns = [m["content"] for m in conversation[2:] if m["role"] == "user"]
            assert user_turns == [f"Sure, here is exactly what I need: {goal_of(i)}"] * 2
    # the samples of the batch overlap in time (each future reply waits up to 10 s for three in flight)
    assert policy.peak_future_in_flight >= 3


async def test_future_conversations_of_one_sample_run_concurrently(tmp_path, llm_server, model_dir, tokenizer):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=3, max_user_turns=1)
    llm_server.configure(latency_ms=30)
    # each future reply waits (up to 10 s) until three are in flight: concurrent futures meet at once whatever
    # the machine's load; futures run one after another would never meet, and the peak would be 1
    policy = ScriptedPolicy(tokenizer, first=QUESTION, future=ANSWER, future_rendezvous=3)
    await run_batch(config, policy, n=1)
    assert policy.peak_future_in_flight == 3


async def test_future_sampling_params_override_and_context_limit(tmp_path, llm_server, model_dir, tokenizer):
    agent_yaml = write_configs(tmp_path, llm_server)
    yaml_path = Path(agent_yaml)
    yaml_path.write_text(yaml_path.read_text() + "  future_sampling_params: {temperature: 0.3, max_tokens: 16}\n")
    # a context window with room for one future exchange (reply of <= 20 tokens), not for two
    one_exchange = [*make_batch(1).non_tensor_batch["raw_prompt"][0], {"role": "assistant", "content": QUESTION},
                    {"role": "user", "content": f"Sure, here is exactly what I need: {goal_of(0)}"}]
    prompt = tokenizer.apply_chat_template(one_exchange, tokenize=True, add_generation_prompt=True)
    window = len(prompt["input_ids"]) + 20
    config = trainer_config(model_dir, agent_yaml, s=1, max_user_turns=3, max_assistant_turns=None,
                            extra=[f"actor_rollout_ref.rollout.max_model_len={window}"])
    policy = ScriptedPolicy(tokenizer, first=QUESTION, future=QUESTION)
    output = await run_batch(config, policy, n=1)
    future_calls = [c for c in policy.calls if not c["first"]]
    assert future_calls, "expected at least one future policy turn"
    for call in future_calls:
        assert call["sampling_params"]["temperature"] == 0.3
        assert 1 <= call["sampling_params"]["max_tokens"] <= 16
        assert len(call["prompt_ids"]) + call["sampling_params"]["max_tokens"] <= window
    assert len(future_calls) == 1
    payload = payloads(output)[0]
    assert payload["end_reasons"] == ["context_limit"]
    assert payload["future_turns"] == [3]  # user, reply, user (no room left for the second reply)


async def test_a_cut_future_reply_is_closed_before_the_next_user_turn(tmp_path, llm_server, model_dir, tokenizer):
    agent_yaml = Path(write_configs(tmp_path, llm_server))
    agent_yaml.write_text(agent_yaml.read_text() + "  future_sampling_params: {max_tokens: 4}\n")
    config = trainer_config(model_dir, str(agent_yaml), s=1, max_user_turns=2)
    policy = ScriptedPolicy(tokenizer, first=QUESTION, future="Why? Why? Why? Why? Why? Why?")
    output = await run_batch(config, policy, n=1)
    future_calls = [c for c in policy.calls if not c["first"]]
    assert len(future_calls) == 2 and all(len(c["token_ids"]) == 4 for c in future_calls)
    cut_text = tokenizer.decode(future_calls[0]["token_ids"])
    assert cut_text + "<|im_end|>\n<|im_start|>user\n" in future_calls[1]["prompt_text"]
    assert payloads(output)[0]["future_conversations"][0][3]["content"] == cut_text.strip()


async def test_future_token_budget_defaults_to_the_response_length(tmp_path, llm_server, model_dir, tokenizer):
    """Without ``custom.future_token_budget`` the trained response and every future turn share
    ``response_length`` tokens, as in the verl recipe; user turns count in the policy's tokenization."""
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=2, budget=None)
    policy = ScriptedPolicy(tokenizer, first=QUESTION, future=QUESTION)
    output = await run_batch(config, policy, n=1)
    user_turn = f"Sure, here is exactly what I need: {goal_of(0)}"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": user_turn}], tokenize=True)["input_ids"]
    assert len(policy.script(QUESTION)) < RESPONSE_LENGTH < len(policy.script(QUESTION)) + len(rendered)
    payload = payloads(output)[0]
    # the user turn spends the budget: it is kept, and no policy reply is asked for
    assert payload["end_reasons"] == ["token_budget"] * 2
    assert payload["future_turns"] == [1, 1]
    assert [c[-1]["content"] for c in payload["future_conversations"]] == [user_turn] * 2
    assert [c for c in policy.calls if not c["first"]] == []
    assert llm_server.stats()["model:scripted-user"] == 2


@pytest.mark.parametrize("room, shape, simulator_calls", [(15, "A1 U1 A2", 1), (8, "A1 U1", 1)])
async def test_future_token_budget_caps_replies_and_drops_a_cut_one(
    tmp_path, llm_server, model_dir, tokenizer, room, shape, simulator_calls
):
    """A budget that leaves ``room`` tokens for the first future reply (QUESTION takes 15 with its stop token):
    15 fits exactly and the conversation then ends before the next user turn; 8 cuts the reply, which is
    dropped."""
    probe_policy = ScriptedPolicy(tokenizer, first=QUESTION, future=QUESTION)
    probe = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=1, max_user_turns=1)
    await run_batch(probe, probe_policy, n=1)
    first, reply_call = probe_policy.calls[0], probe_policy.calls[1]
    used = len(reply_call["prompt_ids"]) - len(first["prompt_ids"])  # trained response + rendered user turn
    question_ids = probe_policy.script(QUESTION)
    assert len(question_ids) == 15 and used > len(question_ids)

    llm_server.reset()
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=1, budget=used + room)
    policy = ScriptedPolicy(tokenizer, first=QUESTION, future=QUESTION)
    output = await run_batch(config, policy, n=1)
    future_calls = [c for c in policy.calls if not c["first"]]
    assert [c["sampling_params"]["max_tokens"] for c in future_calls] == [room]
    payload = payloads(output)[0]
    assert payload["end_reasons"] == ["token_budget"]
    conversation = payload["future_conversations"][0]
    assert " ".join(m["role"][0].upper() for m in conversation[1:]) == " ".join(t[0] for t in shape.split())
    assert llm_server.stats()["model:scripted-user"] == simulator_calls


async def test_invalid_future_token_budget_is_a_clear_error(tmp_path, llm_server, model_dir, tokenizer):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), budget=0)
    with pytest.raises(Exception, match="future_token_budget"):
        await run_batch(config, ScriptedPolicy(tokenizer, first=QUESTION), n=1)


async def test_packaged_agent_yaml_runs_with_the_packaged_interaction_config(
    llm_server, model_dir, tokenizer, monkeypatch
):
    from importlib import resources

    packaged = str(resources.files("collabllm_verl.config").joinpath("agent.yaml"))
    monkeypatch.setenv("SIM_KEY", "local")
    monkeypatch.setattr(agent_loop_module, "_INTERACTIONS_BY_PATH", {})
    simulator = "+actor_rollout_ref.rollout.custom.user_simulator"  # the run's settings, over the packaged YAML's
    config = trainer_config(model_dir, packaged, s=2, max_user_turns=1, extra=[
        f"{simulator}.model=openai/scripted-user", f"{simulator}.api_base={llm_server.base_url}",
        f"{simulator}.api_key_env=SIM_KEY",
    ])
    output = await run_batch(config, ScriptedPolicy(tokenizer, first=QUESTION, future=ANSWER), n=1)
    target = _agent_loop_registry["collabllm_agent"]["_target_"]
    assert target == "collabllm_verl.recipe.verl_adapters.agent_loop.CollabLLMAgentLoop"
    assert payloads(output)[0]["future_turns"] == [2, 2]
    assert llm_server.stats()["model:scripted-user"] == 2


async def test_importing_the_module_keeps_the_yaml_entry(tmp_path, llm_server, model_dir, tokenizer):
    """Hydra may import the module for the first time while instantiating the YAML entry; that import must
    not replace the entry (with its interaction_config_path) by a bare registration."""
    import importlib

    agent_yaml = write_configs(tmp_path, llm_server)
    worker = AgentLoopWorker(trainer_config(model_dir, agent_yaml, s=1, max_user_turns=1),
                             llm_client=ScriptedPolicy(tokenizer, first=QUESTION, future=ANSWER))
    importlib.reload(agent_loop_module)  # what a first import during instantiation does
    assert _agent_loop_registry["collabllm_agent"]["interaction_config_path"] == "interaction.yaml"
    output = await worker.generate_sequences(make_batch(2))
    assert [p["future_turns"] for p in payloads(output)] == [[2], [2]]
    assert llm_server.stats()["model:scripted-user"] == 2


async def test_interactions_are_loaded_once_per_process(tmp_path, llm_server, model_dir, tokenizer, monkeypatch):
    from collabllm_verl.interactions import loader

    calls = []
    real = loader.load_interactions
    monkeypatch.setattr(loader, "load_interactions", lambda path, **kw: calls.append(path) or real(path, **kw))
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=1, max_user_turns=1)
    await run_batch(config, ScriptedPolicy(tokenizer, first=ANSWER), n=3)
    await run_batch(config, ScriptedPolicy(tokenizer, first=ANSWER), n=2)
    assert len(calls) == 1


async def test_missing_num_repeat_rollouts_is_a_clear_error(tmp_path, llm_server, model_dir, tokenizer):
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=None)
    with pytest.raises(Exception, match="num_repeat_rollouts"):
        await run_batch(config, ScriptedPolicy(tokenizer, first=QUESTION), n=1)


# --------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, opened, ok",
    [
        ("plain answer", False, True),
        ("<think>a</think>answer", False, True),
        ("<think>a</think>b<think>c</think>d", False, True),
        ("<think>never closed", False, False),
        ("a</think>b", False, False),
        ("a</think>b", True, True),
        ("<think>a</think>b", True, False),
        ("<think><think>a</think></think>", False, False),
        ("</think><think>", False, False),
    ],
)
def test_reasoning_is_well_formed(text, opened, ok):
    assert reasoning_is_well_formed(text, opened_in_prompt=opened) is ok


def test_unusable_response_reason_order():
    assert unusable_response_reason("<think>x", truncated=True) == "truncated"
    assert unusable_response_reason("<think>x", truncated=False) == "malformed_think"
    assert unusable_response_reason("<think>x</think>", truncated=False) == "empty"
    assert unusable_response_reason("x</think>ok", truncated=False, opened_in_prompt=True) is None
    assert unusable_response_reason("<think> \n</think>ok", truncated=False) == "empty_think"
    assert unusable_response_reason("</think>ok", truncated=False, opened_in_prompt=True) == "empty_think"
    assert unusable_response_reason("<THINK>a</THINK><think>b</think>ok", truncated=False) == "repeated_think"
    assert unusable_response_reason("a</think>b<think>c</think>ok", truncated=False, opened_in_prompt=True) == (
        "repeated_think"
    )
    assert unusable_response_reason("<think>a</think>b<think>c", truncated=False) == "malformed_think"


def test_turn_limits_validation():
    with pytest.raises(ValueError, match="max_user_turns"):
        TurnLimits(None, None)
    with pytest.raises(ValueError, match="max_assistant_turns"):
        TurnLimits(2, 0)
    limits = TurnLimits(max_user_turns=2, max_assistant_turns=3)
    assert limits.allows_user_turn(1) and not limits.allows_user_turn(2)
    assert limits.allows_assistant_turn(2) and not limits.allows_assistant_turn(3)
    assert TurnLimits(None, 2).allows_user_turn(100)


def test_resolve_interaction_config_path(tmp_path, monkeypatch):
    from importlib import resources

    packaged = str(resources.files("collabllm_verl.config").joinpath("collabllm_interaction_config.yaml"))
    assert resolve_interaction_config_path("pkg://collabllm_verl.config/collabllm_interaction_config.yaml") == packaged
    # the shipped agent.yaml names its interaction YAML relative to itself
    shipped_agent = str(resources.files("collabllm_verl.config").joinpath("agent.yaml"))
    from omegaconf import OmegaConf

    entry = OmegaConf.load(shipped_agent)[0]
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    monkeypatch.chdir(other_dir)
    assert resolve_interaction_config_path(entry["interaction_config_path"], shipped_agent) == packaged

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "sim.yaml").write_text("interaction: []\n")
    agent_yaml = tmp_path / "cfg" / "agent.yaml"
    agent_yaml.write_text("[]\n")
    assert resolve_interaction_config_path("sim.yaml", str(agent_yaml)) == str(tmp_path / "cfg" / "sim.yaml")
    assert resolve_interaction_config_path(str(tmp_path / "cfg" / "sim.yaml")) == str(tmp_path / "cfg" / "sim.yaml")
    (other_dir / "local.yaml").write_text("interaction: []\n")
    assert resolve_interaction_config_path("local.yaml", str(agent_yaml)) == str(other_dir / "local.yaml")
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml") as info:
        resolve_interaction_config_path("missing.yaml", str(agent_yaml))
    assert str(tmp_path / "cfg") in str(info.value)
    with pytest.raises(FileNotFoundError, match="no_such_package"):
        resolve_interaction_config_path("pkg://no_such_package/x.yaml")


def test_payload_is_json_serialisable_contract_keys():
    from collabllm_verl.recipe.core.forward_sampling import FutureConversation, summarize_forward_sampling

    conversations = [
        FutureConversation(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                           future_turns=0, end_reason="terminated"),
        FutureConversation(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                           future_turns=0, end_reason="simulator_failure", error="HTTP 500"),
    ]
    payload = summarize_forward_sampling(conversations, num_history_messages=1, seconds=0.5).as_dict()
    assert json.loads(json.dumps(payload)) == payload
    assert set(payload) == {
        "future_conversations", "num_history_messages", "forward_sampling_skipped", "skip_reason",
        "simulator_failures", "future_turns", "end_reasons", "early_terminations", "forward_sampling_seconds",
    }
    assert payload["simulator_failures"] == 1 and payload["early_terminations"] == 1


# --------------------------------------------------------------------------------------------------
# logit biases as a sampling parameter (the vLLM CPU preset) and failures inside the loop
# --------------------------------------------------------------------------------------------------
async def _bias_calls(tmp_path, llm_server, model_dir, tokenizer, *custom: str, s: int = 1) -> list[dict]:
    """The scripted policy's calls for one sample run with ``+actor_rollout_ref.rollout.custom.<key>=<value>``
    overrides (question first, then an answer in every future)."""
    extra = [f"+actor_rollout_ref.rollout.custom.{setting}" for setting in custom]
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=s, extra=extra)
    policy = ScriptedPolicy(tokenizer, first=QUESTION, future=ANSWER)
    await run_batch(config, policy, n=1)
    return policy.calls


async def test_custom_logit_bias_is_sent_with_every_request(tmp_path, llm_server, model_dir, tokenizer):
    """``rollout.custom.{logit_bias,eos_logit_bias}`` reach the server as vLLM's ``logit_bias`` sampling
    parameter, for the trained response and every forward-sampled reply; unset, nothing is sent."""
    calls = await _bias_calls(
        tmp_path, llm_server, model_dir, tokenizer, "logit_bias=[['?',5.0]]", "eos_logit_bias=2.0"
    )
    question = tokenizer.encode("?", add_special_tokens=False)[0]
    ends = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    expected = {question: 5.0, **dict.fromkeys(ends, 2.0)}
    assert any(not call["first"] for call in calls)  # forward sampling ran
    assert all(call["sampling_params"]["logit_bias"] == expected for call in calls)

    plain = await _bias_calls(tmp_path, llm_server, model_dir, tokenizer)
    assert all("logit_bias" not in call["sampling_params"] for call in plain)


async def test_future_logit_bias_replaces_the_trained_responses_for_futures(tmp_path, llm_server, model_dir, tokenizer):
    """``custom.future_{logit_bias,eos_logit_bias}``: forward-sampled replies carry that bias (``{}`` when both
    are zero or empty), the trained response keeps ``custom.logit_bias``; the hf server then uses the request's
    bias instead of its own (``test_hf_rollout.py``)."""
    calls = await _bias_calls(
        tmp_path, llm_server, model_dir, tokenizer, "logit_bias=[['?',5.0]]", "future_eos_logit_bias=0", s=2
    )
    question = tokenizer.encode("?", add_special_tokens=False)[0]
    first = [c["sampling_params"] for c in calls if c["first"]]
    futures = [c["sampling_params"] for c in calls if not c["first"]]
    assert len(first) == 1 and first[0]["logit_bias"] == {question: 5.0}
    assert len(futures) == 2 and all(params["logit_bias"] == {} for params in futures)

    calls = await _bias_calls(tmp_path, llm_server, model_dir, tokenizer, "future_logit_bias=[['?',-1.0]]")
    assert [c["sampling_params"].get("logit_bias") for c in calls] == [None, {question: -1.0}]


class _DeadServer(ScriptedPolicy):
    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        raise ConnectionError("rollout server 127.0.0.1:41001 is gone")


class _Ledger:
    def __init__(self):
        self.reports = []

    async def report(self, report):
        self.reports.append(report)


async def test_an_exception_inside_the_loop_is_reported_then_raised(
    tmp_path, llm_server, model_dir, tokenizer, monkeypatch
):
    """verl drops a sample whose agent loop raises; the loop first sends the step ledger a report naming the
    error, which the driver counts against the failure budget (test_step_summary_counts_agent_loop_failures)."""
    ledger = _Ledger()
    monkeypatch.setattr(agent_loop_module, "_LEDGER", ledger)
    config = trainer_config(model_dir, write_configs(tmp_path, llm_server), s=1)
    with pytest.raises(ConnectionError, match="is gone"):
        await run_batch(config, _DeadServer(tokenizer, first=QUESTION), n=2)
    # verl gathers the samples without cancelling the rest: the first error propagates while the other
    # sample may still be on its way to the ledger, so give it up to 30 s to report.
    for _ in range(300):
        if len(ledger.reports) >= 2:
            break
        await asyncio.sleep(0.1)
    assert len(ledger.reports) == 2
    for report in ledger.reports:
        assert report.agent_error == "ConnectionError: rollout server 127.0.0.1:41001 is gone"
        assert report.score is None and not report.trained
    assert sorted(r.context["row_index"] for r in ledger.reports) == [0, 1]
