"""CollabLLMInteraction (the user simulator) and the interaction loader, over real HTTP to the scripted user."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import textwrap

import pytest

from collabllm_verl.interactions.base import BaseInteraction
from collabllm_verl.interactions.collabllm_interaction import CollabLLMInteraction
from collabllm_verl.interactions.loader import load_interactions
from collabllm_verl.interactions.simulator_prompt import (
    clean_history,
    parse_simulator_prompt,
    strip_reasoning,
)
from collabllm_verl.recipe.core import llm_client
from collabllm_verl.recipe.offline.scripted_user import vague_opener

SIGNAL = "[[TERMINATE CHAT]]"
GOAL = "What is the sum of all prime numbers below 30? Reference answer: 129."


def _last_prompt(server) -> str:
    return server.received[-1]["messages"][-1]["content"]


async def test_conversation_happy_path_and_termination(user_simulator_config, llm_server):
    sim = CollabLLMInteraction(user_simulator_config)
    iid = await sim.start_interaction(single_turn_prompt=GOAL, task_desc="math problem solving")

    done, first, score, meta = await sim.generate_response(iid, [])
    assert not done and score == 0.0 and meta == {"simulator_failed": False, "terminated_by_user": False, "turn": 1}
    assert first == vague_opener(GOAL) and GOAL not in first  # vague: only the first words of the goal

    chat = [{"role": "user", "content": first}, {"role": "assistant", "content": "Sure - which numbers exactly?"}]
    done, second, _, meta = await sim.generate_response(iid, chat)
    assert not done and GOAL in second and meta["turn"] == 2

    chat += [{"role": "user", "content": second}, {"role": "assistant", "content": "2+3+5+7+11+13+17+19+23+29 = 129."}]
    done, third, _, meta = await sim.generate_response(iid, chat)
    assert done and third == SIGNAL and meta["terminated_by_user"] is True
    assert await sim.calculate_score(iid) == 0.0
    await sim.finalize_interaction(iid)
    await sim.finalize_interaction(iid)  # idempotent
    with pytest.raises(KeyError):
        await sim.generate_response(iid, chat)
    # forgotten: the id can start a new conversation (an active one is refused)
    assert await sim.start_interaction(iid, single_turn_prompt=GOAL) == iid
    with pytest.raises(ValueError, match="already active"):
        await sim.start_interaction(iid, single_turn_prompt=GOAL)


async def test_termination_after_max_turns(user_simulator_config):
    cfg = {**user_simulator_config, "extra_body": {"scripted_user": {"max_turns": 1}}}
    sim = CollabLLMInteraction(cfg)
    iid = await sim.start_interaction(single_turn_prompt=GOAL)
    chat = [{"role": "user", "content": "help with primes"}, {"role": "assistant", "content": "Which ones?"}]
    done, response, _, _ = await sim.generate_response(iid, chat)
    assert done and response == SIGNAL


async def test_history_sent_without_system_messages_and_reasoning(user_simulator_config, llm_server):
    sim = CollabLLMInteraction(user_simulator_config)
    iid = await sim.start_interaction(single_turn_prompt=GOAL, task_desc="math")
    chat = [
        {"role": "system", "content": "SYSTEM-PROMPT-MARKER be helpful"},
        {"role": "user", "content": "primes question"},
        {"role": "assistant", "content": "<think>PRIVATE-REASONING-MARKER</think>Do you mean primes below 30?"},
        {"role": "user", "content": "yes"},
        {"role": "assistant", "content": "<think>UNCLOSED-REASONING-MARKER and it was cut"},
    ]
    await sim.generate_response(iid, chat)
    prompt = _last_prompt(llm_server)
    for marker in ("SYSTEM-PROMPT-MARKER", "PRIVATE-REASONING-MARKER", "UNCLOSED-REASONING-MARKER", "<think>"):
        assert marker not in prompt
    parsed = parse_simulator_prompt(prompt)
    assert parsed["goal"] == GOAL and parsed["termination_signal"] == SIGNAL
    assert parsed["history"] == [
        {"role": "user", "content": "primes question"},
        {"role": "assistant", "content": "Do you mean primes below 30?"},
        {"role": "user", "content": "yes"},
    ]


def test_prompt_states_every_rule_of_the_simulated_user():
    """The nine behaviours of the original simulator, in our words, and the five ordered private checks."""
    from collabllm_verl.interactions.simulator_prompt import build_simulator_messages

    _system, user = build_simulator_messages(goal=GOAL, task_desc="math", history=[], termination_signal=SIGNAL)
    text = user["content"]
    rules = text.split("How to play the user:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [rule.split(".", 1)[0] for rule in rules] == [str(i) for i in range(1, 10)]
    for phrase in (
        "never the assistant",  # 1. a human, one personality
        "one consistent personality",
        "as little effort as you can",  # 2. minimal effort first
        "may not notice when the assistant gets something wrong",  # 3. a user's limited knowledge
        "your questions show both what you follow and what puzzles you",
        "a typo, a wrong detail or date",  # 4. slips
        "preference or constraint",  # 5.
        "no small talk",  # 6.
        "If the conversation has not started, open it with your request",  # 7.
        "Never copy the goal or its reference answer",  # 8.
        "end the chat by sending the end signal",  # 9.
    ):
        assert phrase in text, phrase
    thought = text.split('"thought": "', 1)[1].split('",\n', 1)[0]
    checks = [thought.index(f"({letter})") for letter in "abcde"]
    assert checks == sorted(checks)
    for phrase in ("am I satisfied", "stuck on", "ask me a question", "misunderstanding", "word my next message"):
        assert phrase in thought, phrase
    assert parse_simulator_prompt(text)["termination_signal"] == SIGNAL  # the scripted user still reads it


def test_reasoning_stripping_rules():
    assert strip_reasoning("<think>a</think> answer <THINK>b</THINK>!") == "answer !"
    assert strip_reasoning("reasoning without opening tag</think>final") == "final"
    assert strip_reasoning("visible <think>truncated") == "visible"
    mixed = [{"role": "tool", "content": "t"}, {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]
    assert clean_history(mixed) == [{"role": "assistant", "content": "hi"}]
    with pytest.raises(ValueError, match="chat message 0"):
        clean_history([{"content": "no role"}])


async def test_many_concurrent_conversations_do_not_share_goals(user_simulator_config, llm_server):
    """>= 200 conversations on one object at once: each request and answer holds only its own goal."""
    n = 256
    sim = CollabLLMInteraction({**user_simulator_config, "max_concurrency": 64})
    llm_server.configure(latency_ms=20)
    goals = [f"Goal number {i}: compute {i} times {i + 7} (marker GOAL-{i:04d}-END)" for i in range(n)]
    ids = await asyncio.gather(*(sim.start_interaction(f"conv-{i}", single_turn_prompt=g) for i, g in enumerate(goals)))
    chat = [
        {"role": "user", "content": "can you help me compute something"},
        {"role": "assistant", "content": "Sure, what exactly?"},
    ]
    results = await asyncio.gather(*(sim.generate_response(iid, chat) for iid in ids))
    for i, (done, response, _, meta) in enumerate(results):
        assert not done and not meta["simulator_failed"]
        assert re.findall(r"GOAL-\d{4}-END", response) == [f"GOAL-{i:04d}-END"]
    prompts = [req["messages"][-1]["content"] for req in list(llm_server.received)[-n:]]
    assert len(prompts) == n
    assert all(len(re.findall(r"GOAL-\d{4}-END", p)) == 1 for p in prompts)
    assert sorted(re.findall(r"GOAL-\d{4}-END", "".join(prompts))) == sorted(f"GOAL-{i:04d}-END" for i in range(n))
    assert llm_server.stats()["max_in_flight"] <= 64
    await asyncio.gather(*(sim.finalize_interaction(iid) for iid in ids))
    for iid in ids:  # every conversation was forgotten
        with pytest.raises(KeyError, match="unknown instance_id"):
            await sim.generate_response(iid, chat)


@pytest.mark.parametrize("fault", ["malformed_json", "missing_keys", "truncated_json", "rate_limit", "hang", "empty"])
async def test_simulator_recovers_from_faults(user_simulator_config, llm_server, fault):
    sim = CollabLLMInteraction({**user_simulator_config, "timeout": 0.5})
    llm_server.configure(retry_after_s=0.05)
    llm_server.inject(fault)
    iid = await sim.start_interaction(single_turn_prompt=GOAL)
    chat = [{"role": "user", "content": "primes?"}, {"role": "assistant", "content": "Which primes?"}]
    done, response, _, meta = await sim.generate_response(iid, chat)
    assert not done and GOAL in response and meta["simulator_failed"] is False
    assert llm_server.stats()["requests"] == 2


async def test_simulator_failure_ends_conversation_and_is_reported(user_simulator_config, llm_server, caplog):
    llm_client.reset_llm_stats()
    sim = CollabLLMInteraction(user_simulator_config)  # num_retries = 2 -> 3 attempts
    llm_server.inject("server_error", "malformed_json", "server_error")
    iid = await sim.start_interaction(single_turn_prompt=GOAL)
    done, response, score, meta = await sim.generate_response(iid, [{"role": "user", "content": "hi"}])
    assert done and response == "" and score == 0.0
    assert meta["simulator_failed"] is True and meta["attempts"] == 3 and "InternalServerError" in meta["error"]
    assert llm_client.llm_stats()["user_simulator/failures"] == 1
    assert "user simulator failed" in caplog.text


# ------------------------------------------------------------------ config and loader
def test_config_defaults_and_validation():
    sim = CollabLLMInteraction({"name": "collabllm"})
    assert sim.llm.model == "gpt-4o-mini"
    assert sim.llm.completion_kwargs == {"temperature": 1.0, "max_tokens": 512}
    assert sim.termination_signal == SIGNAL and sim.llm.num_retries == 3
    with pytest.raises(ValueError, match="user_modle"):
        CollabLLMInteraction({"user_modle": "gpt-4o"})


async def test_start_interaction_validates_goal_and_ids(user_simulator_config):
    sim = CollabLLMInteraction(user_simulator_config)
    with pytest.raises(ValueError, match="single_turn_prompt"):
        await sim.start_interaction(task_desc="no goal")
    iid = await sim.start_interaction(single_turn_prompt="g")
    assert isinstance(iid, str) and len(iid) > 8
    with pytest.raises(ValueError, match="already active"):
        await sim.start_interaction(iid, single_turn_prompt="g")


async def test_shipped_yaml_with_the_runs_settings(monkeypatch, llm_server, caplog):
    """The packaged YAML holds only the class: the simulator's settings are the run's (the trainer config's
    ``actor_rollout_ref.rollout.custom.user_simulator``) over SimulatorSettings' defaults."""
    from importlib.resources import files

    secret = "sk-env-SECRET-abcdef123456"
    monkeypatch.setenv("SIM_KEY", secret)
    caplog.set_level(logging.DEBUG)
    path = files("collabllm_verl.config") / "collabllm_interaction_config.yaml"
    run_settings = {"model": "openai/scripted-user", "api_base": llm_server.base_url, "api_key_env": "SIM_KEY"}
    interactions = load_interactions(str(path), config_overrides=run_settings)
    sim = interactions["collabllm"]
    assert isinstance(sim, CollabLLMInteraction) and sim.name == "collabllm"
    assert sim.llm.api_base == llm_server.base_url and sim.llm.completion_kwargs["temperature"] == 1.0
    iid = await sim.start_interaction(single_turn_prompt=GOAL)
    done, response, _, _ = await sim.generate_response(iid, [])
    assert not done and response
    assert "collabllm" in caplog.text and secret not in caplog.text and secret not in repr(sim)


async def test_blog_style_yaml_with_a_literal_key_never_logs_it(tmp_path, llm_server, caplog):
    """The verl blog writes the simulator's key into the interaction YAML. The file is read by the agent
    loop only (verl's config holds its path, not its content); no log line, repr or error shows the key,
    also with enable_log on and a failing endpoint."""
    secret = "sk-yaml-DoNotPrint0123456789"
    path = tmp_path / "collabllm_interaction_config.yaml"
    path.write_text(textwrap.dedent(f"""
        interaction:
          - name: "collabllm"
            class_name: "collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction"
            config: {{
              "user_model": "openai/scripted-user",
              "base_url": "{llm_server.base_url}",
              "api_key": "{secret}",
              "num_retries": 1,
              "backoff_initial": 0.01,
              "max_tokens": 512,
              "temperature": 1.0,
              "enable_log": True
            }}
    """))
    caplog.set_level(logging.DEBUG)
    sim = load_interactions(str(path))["collabllm"]
    assert sim.llm.completion_kwargs["api_key"] == secret
    iid = await sim.start_interaction(single_turn_prompt=GOAL)
    done, response, _, _ = await sim.generate_response(iid, [])  # logged: enable_log
    assert not done and response
    llm_server.configure(fault_rate=1.0, fault_modes=["server_error"])
    done, _, _, meta = await sim.generate_response(iid, [{"role": "assistant", "content": "hi"}])
    assert done and meta["simulator_failed"]
    assert "user simulator" in caplog.text and secret not in caplog.text
    assert secret not in repr(sim) and secret not in str(meta) and secret not in sim.llm.describe()


def test_loader_errors_name_the_entry(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        interaction:
          - name: a
            class_name: collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction
          - name: a
            class_name: collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction
    """))
    with pytest.raises(ValueError, match=r"bad.yaml: interaction entry 1: duplicate interaction name 'a'"):
        load_interactions(bad)
    with pytest.raises(TypeError, match=r"entry 0: collections\.OrderedDict is not a subclass"):
        load_interactions([{"class_name": "collections.OrderedDict"}])
    with pytest.raises(ImportError, match="entry 0: cannot import module"):
        load_interactions([{"class_name": "no_such_pkg.Thing"}])
    with pytest.raises(ValueError, match="entry 0: unknown field"):
        load_interactions([{"class_name": "x.Y", "kwargs": {}}])
    with pytest.raises(ValueError, match=r"entry 0 \(collabllm\): unknown user simulator config key 'temprature'"):
        load_interactions([{"class_name": "collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction",
                            "config": {"temprature": 0.5}}])
    with pytest.raises(FileNotFoundError):
        load_interactions(tmp_path / "missing.yaml")


def test_loader_default_name_and_base_class():
    out = load_interactions([{"class_name": "collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction"}])
    assert list(out) == ["collabllm"] and isinstance(out["collabllm"], BaseInteraction)
    assert json.dumps(out["collabllm"].config) == json.dumps({"name": "collabllm"})
