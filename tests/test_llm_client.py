"""The LLM-call layer against the local server over real HTTP (litellm -> 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from omegaconf import OmegaConf

from collabllm_verl.recipe.core import llm_client
from collabllm_verl.recipe.core.llm_client import (
    LLMCallError,
    LLMSettings,
    acomplete_json,
    acomplete_text,
    extract_json,
    llm_stats,
    redact_secrets,
)

SECRET = "sk-test-DO-NOT-LOG-0123456789abcdef"


def _settings(server, model="openai/echo", **kw) -> LLMSettings:
    fields = {"timeout": 5.0, "num_retries": 3, "backoff_initial": 0.01, "backoff_max": 0.2}
    fields.update(kw)
    return LLMSettings(model=model, completion_kwargs={"api_base": server.base_url, "api_key": "local"}, **fields)


def _msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------ settings and secrets
def test_settings_from_config_maps_keys_and_drops_nulls():
    cfg = OmegaConf.create(
        {
            "user_model": "hosted_vllm/Qwen/Qwen2.5-7B-Instruct",
            "base_url": "http://10.0.0.1:8000/v1",
            "api_key": None,
            "temperature": 1.0,
            "max_tokens": 512,
            "num_retries": "5",
            "timeout": 30,
            "requests_per_minute": 600,
            "completion_kwargs": {"top_p": 0.9},
            "termination_signal": "[[TERMINATE CHAT]]",  # not an LLM key: ignored here
        }
    )
    s = LLMSettings.from_config(cfg, model_key="user_model")
    assert s.model == "hosted_vllm/Qwen/Qwen2.5-7B-Instruct"
    assert s.completion_kwargs == {
        "api_base": "http://10.0.0.1:8000/v1",
        "temperature": 1.0,
        "max_tokens": 512,
        "top_p": 0.9,
    }
    assert (s.num_retries, s.timeout, s.requests_per_minute) == (5, 30.0, 600.0)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"temperature": 0}, "model: required"),
        ({"model": "m", "timeout": 0}, "timeout"),
        ({"model": "m", "num_retries": -1}, "num_retries"),
        ({"model": "m", "max_concurrency": 0}, "max_concurrency"),
        ({"model": "m", "completion_kwargs": {"stream": True}}, "stream"),
        ({"model": "m", "timeout": "soon"}, "timeout: Input should be a valid number"),
    ],
)
def test_settings_reject_bad_values(cfg, match):
    with pytest.raises(ValueError, match=match):
        LLMSettings.from_config(cfg)


def test_redact_secrets_masks_keys_everywhere():
    cfg = OmegaConf.create(
        {
            "user_model": "gpt-4o-mini",
            "api_key": SECRET,
            "max_tokens": 512,
            "nested": [{"OPENAI_API_KEY": "abc"}, f"Bearer {SECRET}"],
            "empty_key": {"api_key": None},
        }
    )
    red = redact_secrets(cfg)
    text = json.dumps(red)
    assert SECRET not in text and "abc" not in text
    assert red["api_key"] == "***" and red["max_tokens"] == 512 and red["user_model"] == "gpt-4o-mini"
    assert red["empty_key"] == {"api_key": None}
    settings = LLMSettings(model="gpt-4o-mini", completion_kwargs={"api_key": SECRET})
    assert SECRET not in repr(settings) and SECRET not in str(settings)


# ------------------------------------------------------------------ lenient JSON
@pytest.mark.parametrize(
    "text, expected",
    [
        ('```json\n{"response": "hi", "n": 2}\n```', {"response": "hi", "n": 2}),
        ("{'response': 'hi', 'n': 2,}", {"response": "hi", "n": 2}),
        ('Sure! Here it is: {"response": "hi", "n": 2} Hope this helps.', {"response": "hi", "n": 2}),
        ('{"response": "hi", "n": 2', {"response": "hi", "n": 2}),
    ],
)
def test_extract_json_is_lenient(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize(
    "text, kind", [("I cannot answer in JSON.", "str"), ("", "str"), ("[1, 2, 3]", "list")]
)
def test_extract_json_rejects_non_objects(text, kind):
    with pytest.raises(ValueError, match=rf"^answer holds no JSON object \(got {kind}\)$"):
        extract_json(text)


# ------------------------------------------------------------------ calls
async def test_text_and_json_happy_path_counts_usage(llm_server):
    llm_client.reset_llm_stats()
    s = _settings(llm_server)
    assert await acomplete_text(_msg("hello there"), s, purpose="t:text") == "hello there"
    obj = await acomplete_json(
        _msg('{"score": 0.5, "why": "ok"}'), s, required={"score": (int, float)}, purpose="t:json"
    )
    assert obj == {"score": 0.5, "why": "ok"}
    stats = llm_stats()
    assert stats["calls"] == 2 and stats["requests"] == 2 and stats["retries"] == 0 and stats["failures"] == 0
    assert stats["t:text/calls"] == 1 and stats["t:json/calls"] == 1
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0
    assert stats["cost_unknown"] == 2  # the local models are not in litellm's price map
    assert stats["latency_s_mean"] > 0


@pytest.mark.parametrize(
    "fault", ["rate_limit", "server_error", "bad_body", "malformed_json", "missing_keys", "empty", "hang"]
)
async def test_each_fault_is_retried_and_recovered(llm_server, fault):
    llm_client.reset_llm_stats()
    llm_server.configure(retry_after_s=0.05)
    llm_server.inject(fault)
    s = _settings(llm_server, timeout=0.5)
    obj = await acomplete_json(_msg('{"response": "fine"}'), s, required={"response": str}, purpose="t")
    assert obj == {"response": "fine"}
    assert llm_stats()["retries"] == 1 and llm_stats()["requests"] == 2
    assert llm_server.stats()[f"fault:{fault}"] == 1


async def test_truncated_json_is_repaired_or_retried(llm_server):
    llm_client.reset_llm_stats()
    llm_server.inject("truncated_json", "truncated_json")
    s = _settings(llm_server)
    # Cut after 25 characters: '{"response": "fine", "n":' repairs to an object that still has the key.
    assert (await acomplete_json(_msg('{"response": "fine", "n": 1}'), s, required={"response": str}, purpose="t"))[
        "response"
    ] == "fine"
    # Here the cut falls before "response": the answer is unusable, so the layer retries.
    obj = await acomplete_json(
        _msg('{"thought": "long thought ...", "response": "x"}'), s, required={"response": str}, purpose="t"
    )
    assert obj["response"] == "x" and llm_stats()["retries"] == 1


async def test_wrong_value_type_exhausts_retries_with_typed_error(llm_server):
    llm_client.reset_llm_stats()
    s = _settings(llm_server, num_retries=2)
    with pytest.raises(LLMCallError) as info:
        await acomplete_json(_msg('{"score": true}'), s, required={"score": (int, float)}, purpose="t:judge")
    err = info.value
    assert err.attempts == 3 and err.purpose == "t:judge" and "bool" in err.reason
    assert llm_server.stats()["requests"] == 3
    assert llm_stats()["t:judge/failures"] == 1 and llm_stats()["t:judge/retries"] == 2


async def test_server_errors_exhaust_retries(llm_server):
    llm_server.inject(*["server_error"] * 3)
    with pytest.raises(LLMCallError, match="InternalServerError") as info:
        await acomplete_text(_msg("x"), _settings(llm_server, num_retries=2), purpose="t")
    assert info.value.attempts == 3


async def test_non_retryable_error_fails_at_once(llm_server):
    with pytest.raises(LLMCallError, match="NotFoundError") as info:
        await acomplete_text(_msg("x"), _settings(llm_server, model="openai/no-such-model"), purpose="t")
    assert info.value.attempts == 1 and llm_server.stats()["requests"] == 1


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The back-off waits of the LLM layer, recorded instead of slept (jitter fixed at its lower end, 1.0)."""
    recorded: list[float] = []

    async def record(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(llm_client, "_sleep", record)
    monkeypatch.setattr(llm_client, "_jitter", lambda: 1.0)
    return recorded


@pytest.mark.parametrize(
    "jitter, backoff_max, expected",
    [
        (1.0, 5.0, [0.1, 0.2, 0.4]),  # backoff_initial * 2**(k-1)
        (1.5, 5.0, [0.15, 0.3, 0.6]),  # times the jitter, at most 1.5
        (1.5, 0.25, [0.15, 0.25, 0.25]),  # never above backoff_max
    ],
)
async def test_exponential_backoff_waits(llm_server, waits, monkeypatch, jitter, backoff_max, expected):
    monkeypatch.setattr(llm_client, "_jitter", lambda: jitter)
    llm_server.inject(*["server_error"] * 3)
    s = _settings(llm_server, num_retries=3, backoff_initial=0.1, backoff_max=backoff_max)
    assert await acomplete_text(_msg("x"), s, purpose="t") == "x"
    assert waits == pytest.approx(expected)


def test_jitter_stays_in_its_range():
    draws = [llm_client._jitter() for _ in range(200)]
    assert all(1.0 <= d <= 1.5 for d in draws) and len(set(draws)) > 1


async def test_retry_after_is_honoured(llm_server, waits):
    llm_server.configure(retry_after_s=0.6)  # sent as retry-after-ms: 600 (and Retry-After: 1)
    llm_server.inject("rate_limit")
    await acomplete_text(_msg("x"), _settings(llm_server, backoff_initial=0.01, backoff_max=5.0), purpose="t")
    assert waits == [0.6]  # the server's delay, not the 0.01 s of the exponential back-off


async def test_backoff_is_bounded_even_when_server_asks_for_long_waits(llm_server, waits):
    llm_server.configure(retry_after_s=120)
    llm_server.inject("rate_limit", "rate_limit")
    await acomplete_text(_msg("x"), _settings(llm_server, backoff_initial=0.01, backoff_max=0.2), purpose="t")
    assert waits == [0.2, 0.2]


class _HeaderError(Exception):
    def __init__(self, headers):
        super().__init__("rate limited")
        self.headers = headers


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise header wins
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "soon"}, 0.0),  # malformed: exponential back-off only
        ({"retry-after": "-4"}, 0.0),
        ({}, 0.0),
    ],
)
def test_retry_after_header_parsing(headers, expected):
    assert llm_client._retry_after_seconds(_HeaderError(headers)) == expected


def test_retry_after_http_date():
    import email.utils

    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < llm_client._retry_after_seconds(_HeaderError({"retry-after": date})) <= 30


async def test_concurrency_limit_is_shared_across_callers(llm_server):
    llm_server.configure(latency_ms=60)
    s = _settings(llm_server, max_concurrency=3)
    # Separate settings objects with equal limits share one limiter (e.g. one per agent-loop object).
    copies = [LLMSettings(**s.__dict__) for _ in range(12)]
    await asyncio.gather(*(acomplete_text(_msg(f"m{i}"), c, purpose="t") for i, c in enumerate(copies)))
    assert llm_server.stats()["max_in_flight"] == 3


async def test_requests_per_minute_limit_spaces_requests(llm_server):
    s = _settings(llm_server, requests_per_minute=600)  # one request per 0.1 s
    start = time.perf_counter()
    await asyncio.gather(*(acomplete_text(_msg(f"m{i}"), s, purpose="t") for i in range(5)))
    assert time.perf_counter() - start >= 0.4


def test_layer_works_from_successive_event_loops(llm_server):
    s = _settings(llm_server, max_concurrency=2)
    for i in range(3):  # a fresh loop each time, as verl workers and tests do
        out = asyncio.run(asyncio.wait_for(acomplete_text(_msg(f"loop {i}"), s, purpose="t"), 10))
        assert out == f"loop {i}"


async def test_secrets_never_reach_logs_or_errors(llm_server, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    s = LLMSettings(
        model="openai/echo",
        completion_kwargs={"api_base": llm_server.base_url, "api_key": SECRET},
        num_retries=1,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    llm_server.inject("server_error", "server_error")
    with pytest.raises(LLMCallError) as info:
        await acomplete_text(_msg("x"), s, purpose="t")
    bad = LLMSettings(model="openai/missing", completion_kwargs=dict(s.completion_kwargs))
    with pytest.raises(LLMCallError) as info2:
        await acomplete_text(_msg("x"), bad, purpose="t")
    out = capsys.readouterr()
    assert "retry" in caplog.text.lower()  # the failures were logged ...
    for text in (caplog.text, out.out, out.err, str(info.value), str(info2.value), repr(s)):
        assert SECRET not in text  # ... without the key
