"""The local OpenAI-compatible server: HTTP contract, scripted user, fault modes, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from collabllm_verl.interactions.simulator_prompt import build_simulator_messages
from collabllm_verl.recipe.offline import server as local_llm_server
from collabllm_verl.recipe.offline.scripted_user import scripted_user_reply, vague_opener
from collabllm_verl.recipe.offline.server import LocalLLMServer, register_responder

GOAL = "Write a haiku about autumn leaves falling on a quiet pond, and use the word amber in the second line."
SIGNAL = "[[TERMINATE CHAT]]"


def _post(server, model, messages, **extra) -> httpx.Response:
    body = {"model": model, "messages": messages, **extra}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=10)


def _sim_prompt(history):
    return build_simulator_messages(goal=GOAL, task_desc="creative writing", history=history, termination_signal=SIGNAL)


def _user_reply(server, history, **extra) -> dict:
    r = _post(server, "hosted_vllm/scripted-user", _sim_prompt(history), **extra)
    assert r.status_code == 200, r.text
    return json.loads(r.json()["choices"][0]["message"]["content"])


def test_openai_response_shape_and_usage(llm_server):
    r = _post(llm_server, "openai/echo", [{"role": "user", "content": "one two three"}])
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == "openai/echo"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "one two three"}
    assert data["usage"]["prompt_tokens"] == 3 and data["usage"]["completion_tokens"] == 3
    assert data["usage"]["total_tokens"] == 6
    models = httpx.get(f"{llm_server.base_url}/models").json()
    assert {"echo", "scripted-user"} <= {m["id"] for m in models["data"]}


def test_unknown_model_and_bad_requests(llm_server):
    assert _post(llm_server, "nope", [{"role": "user", "content": "x"}]).status_code == 404
    # The scripted user refuses requests that are not simulator prompts.
    assert _post(llm_server, "scripted-user", [{"role": "user", "content": "hello"}]).status_code == 400
    assert httpx.post(f"{llm_server.base_url}/chat/completions", content=b"{not json", timeout=5).status_code == 400


def test_custom_responder_receives_messages_and_request(llm_server):
    seen = {}

    def responder(messages, request):
        seen["n"] = len(messages)
        seen["temperature"] = request.get("temperature")
        return "custom answer"

    register_responder("test-custom", responder)
    r = _post(llm_server, "openai/test-custom", [{"role": "user", "content": "a"}] * 2, temperature=0.3)
    assert r.json()["choices"][0]["message"]["content"] == "custom answer"
    assert seen == {"n": 2, "temperature": 0.3}
    with pytest.raises(ValueError):
        register_responder("bad/name", responder)


# ------------------------------------------------------------------ scripted user
def test_scripted_user_is_vague_first_then_reveals_then_terminates(llm_server):
    first = _user_reply(llm_server, [])
    assert first["response"] == vague_opener(GOAL)
    assert GOAL not in first["response"] and GOAL.split()[0] in first["response"]
    assert set(first) == {"current_answer", "thought", "response"}

    history = [
        {"role": "user", "content": first["response"]},
        {"role": "assistant", "content": "Happy to! What topic?"},
    ]
    second = _user_reply(llm_server, history)
    assert GOAL in second["response"]

    history += [
        {"role": "user", "content": second["response"]},
        {
            "role": "assistant",
            "content": "Leaves drift down slowly / amber light on still water / the pond keeps its hush",
        },
    ]
    third = _user_reply(llm_server, history)
    assert third["response"] == SIGNAL
    assert third["current_answer"].startswith("Leaves drift down")


def test_scripted_user_max_turns(llm_server):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "What do you need?"}]
    assert GOAL in _user_reply(llm_server, history)["response"]
    assert _user_reply(llm_server, history, scripted_user={"max_turns": 1})["response"] == SIGNAL
    # Unit level: the rules in order.
    assert scripted_user_reply(GOAL, history * 3, SIGNAL, max_turns=3)["response"] == SIGNAL
    assert scripted_user_reply(GOAL, history, "<<END>>", max_turns=5)["response"].endswith(GOAL)


# ------------------------------------------------------------------ faults
def test_fault_modes_at_http_level(llm_server):
    msgs = [{"role": "user", "content": '{"a": 1}'}]
    llm_server.configure(retry_after_s=2.5)
    llm_server.inject("rate_limit", "server_error", "bad_body", "missing_keys", "empty", "malformed_json")
    r = _post(llm_server, "echo", msgs)
    assert r.status_code == 429 and r.headers["retry-after"] == "3" and r.headers["retry-after-ms"] == "2500"
    assert _post(llm_server, "echo", msgs).status_code == 500
    r = _post(llm_server, "echo", msgs)
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)
    assert json.loads(_post(llm_server, "echo", msgs).json()["choices"][0]["message"]["content"]) == {
        "note": "fault injection: the expected keys are missing"
    }
    assert _post(llm_server, "echo", msgs).json()["choices"][0]["message"]["content"] == ""
    assert "{" not in _post(llm_server, "echo", msgs).json()["choices"][0]["message"]["content"]
    assert _post(llm_server, "echo", msgs).json()["choices"][0]["message"]["content"] == '{"a": 1}'  # queue empty
    stats = llm_server.stats()
    assert stats["requests"] == 7 and stats["fault:rate_limit"] == 1 and stats["fault:empty"] == 1


def test_latency_hang_and_fault_rate(llm_server):
    msgs = [{"role": "user", "content": "x"}]
    llm_server.configure(latency_ms=150)
    start = time.perf_counter()
    _post(llm_server, "echo", msgs)
    assert time.perf_counter() - start >= 0.15
    llm_server.configure(latency_ms=0)
    llm_server.inject("hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{llm_server.base_url}/chat/completions", json={"model": "echo", "messages": msgs}, timeout=0.3)
    llm_server.configure(fault_rate=1.0, fault_modes=["server_error"])
    assert _post(llm_server, "echo", msgs).status_code == 500
    with pytest.raises(ValueError, match="unknown fault"):
        llm_server.inject("explode")


def test_optional_judges_module_absent_vs_broken(monkeypatch, tmp_path):
    """A missing optional module is tolerated; a present module with a broken import is an error."""
    (tmp_path / "broken_judges_for_test.py").write_text("import definitely_not_installed_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(local_llm_server, "_builtins_loaded", False)
    monkeypatch.setattr(local_llm_server, "_OPTIONAL_RESPONDER_MODULES", ("no_such_module_for_test_abc",))
    local_llm_server._load_builtin_responders()
    monkeypatch.setattr(local_llm_server, "_builtins_loaded", False)
    monkeypatch.setattr(local_llm_server, "_OPTIONAL_RESPONDER_MODULES", ("broken_judges_for_test",))
    with pytest.raises(ModuleNotFoundError, match="definitely_not_installed_pkg_xyz"):
        local_llm_server._load_builtin_responders()


def test_context_manager_releases_port():
    with LocalLLMServer(latency_ms=1) as server:
        port = server.port
        assert _post(server, "echo", [{"role": "user", "content": "x"}]).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, timeout=2)


def test_cli_runs_in_foreground_and_writes_ready_file(tmp_path):
    ready = tmp_path / "url"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "collabllm_verl.recipe.offline.server", "--port", "0", "--ready-file", str(ready),
         "--scripted-max-turns", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        url = ready.read_text().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        server = type("S", (), {"base_url": url})()
        history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "What do you need?"}]
        assert _user_reply(server, history)["response"] == SIGNAL  # --scripted-max-turns 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert f"LOCAL_LLM_SERVER_URL={url}" in out
