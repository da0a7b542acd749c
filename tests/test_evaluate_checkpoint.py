"""A real (tiny, random) Hugging Face checkpoint served on 127.0.0.1 by the transformers chat backend
(recipe/serving/hf_chat.py): batching concurrent requests, the OpenAI contract as the official ``openai``
client sees it (models, ``n``, token counts, streaming refused), and evaluate.py with --policy_checkpoint."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import evaluate
from collabllm_verl.recipe.cpu.tiny_model import build_tiny_model
from collabllm_verl.recipe.offline.server import registered_responders
from collabllm_verl.recipe.serving.chat_server import MAX_CHOICES
from collabllm_verl.recipe.serving.hf_chat import HFChatBackend, serve_checkpoint

KEY_ENV = "EVAL_TEST_API_KEY"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("eval_ckpt") / "tiny"))


def _prompt_ids(model_dir: str, messages: list[dict]) -> list[int]:
    """The chat-template rendering of ``messages`` (generation prompt added) by the checkpoint's tokenizer."""
    encoded = AutoTokenizer.from_pretrained(model_dir).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def _reference_greedy_ids(model_dir: str, messages: list[dict], max_new_tokens: int) -> list[int]:
    """The greedy reply tokens of plain transformers (end-of-turn token included), one unpadded prompt."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([_prompt_ids(model_dir, messages)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1]:].tolist()


def _reference_greedy(model_dir: str, messages: list[dict], max_new_tokens: int) -> str:
    """The greedy reply text of plain transformers, one unpadded prompt at a time."""
    tokens = _reference_greedy_ids(model_dir, messages, max_new_tokens)
    return AutoTokenizer.from_pretrained(model_dir).decode(tokens, skip_special_tokens=True)


async def test_backend_batches_concurrent_requests_and_matches_plain_transformers(tiny_checkpoint):
    backend = HFChatBackend(tiny_checkpoint, device="cpu", batch_wait_ms=200, max_batch_size=8)
    conversations = [
        [{"role": "user", "content": "hello there"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the answer to this?"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c d"}],
    ]
    replies = await asyncio.gather(
        *(backend.respond(messages, {"temperature": 0, "max_tokens": 6}) for messages in conversations)
    )
    stats = backend.stats()
    assert stats["batches"] == 1 and stats["requests"] == 3  # sampled together, left-padded
    for messages, reply in zip(conversations, replies, strict=True):
        assert reply == _reference_greedy(tiny_checkpoint, messages, 6)
    # sampling settings come from the request; a prompt with no room left is a client error (HTTP 400)
    small = HFChatBackend(tiny_checkpoint, device="cpu", max_model_len=16)
    with pytest.raises(ValueError, match="no room to generate"):
        await small.respond([{"role": "user", "content": "word " * 40}], {"max_tokens": 4})


def test_backend_serves_the_event_loop_of_its_first_request_only(tiny_checkpoint):
    backend = HFChatBackend(tiny_checkpoint, device="cpu", batch_wait_ms=0)
    request = {"temperature": 0, "max_tokens": 2}
    assert asyncio.run(backend.respond(HI, request)) == _reference_greedy(tiny_checkpoint, HI, 2)
    with pytest.raises(RuntimeError, match="event loop of its first request"):
        asyncio.run(backend.respond(HI, request))  # a clear error, not a request waiting forever


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    """The tiny checkpoint behind serve_checkpoint, and an official OpenAI client pointed at it."""
    with serve_checkpoint(tiny_checkpoint, device="cpu", batch_wait_ms=100, max_batch_size=8) as served:
        yield served, openai.OpenAI(base_url=served.api_base, api_key="local", max_retries=0, timeout=60)


def test_openai_models_list_names_only_the_served_checkpoint(served):
    served, client = served
    assert "scripted-user" in registered_responders()  # the offline stand-ins are registered in this process...
    assert [m.id for m in client.models.list()] == ["checkpoint"] == [served.name]  # ...but not served here
    assert client.models.retrieve("checkpoint").id == "checkpoint"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("echo")
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="scripted-user", messages=HI)


def test_openai_n_returns_n_choices_sampled_in_one_batch(served, tiny_checkpoint):
    served, client = served
    before = served.backend.stats()
    reply = client.chat.completions.create(model=served.name, messages=HI, n=3, temperature=0, max_tokens=6)
    reference = _reference_greedy_ids(tiny_checkpoint, HI, 6)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert {c.message.content for c in reply.choices} == {_reference_greedy(tiny_checkpoint, HI, 6)}
    assert reply.usage.completion_tokens == 3 * len(reference)  # summed over the choices, as OpenAI counts
    after = served.backend.stats()
    assert after["batches"] - before.get("batches", 0) == 1 and after["requests"] - before.get("requests", 0) == 3
    sampled = client.chat.completions.create(model=served.name, messages=HI, n=2, temperature=1.0, max_tokens=4)
    assert len(sampled.choices) == 2
    for bad in (0, MAX_CHOICES + 1):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=served.name, messages=HI, n=bad)
        assert info.value.status_code == 400 and info.value.param == "n"


def test_openai_usage_counts_the_tokenizer_tokens_of_the_chat_template(served, tiny_checkpoint):
    served, client = served
    reply = client.chat.completions.create(model=served.name, messages=HI, temperature=0, max_tokens=5)
    prompt = _prompt_ids(tiny_checkpoint, HI)
    reference = _reference_greedy_ids(tiny_checkpoint, HI, 5)
    assert len(prompt) > 1 and reply.usage.prompt_tokens == len(prompt)  # "hi" plus the template's tokens
    assert reply.usage.completion_tokens == len(reference)
    assert reply.usage.total_tokens == len(prompt) + len(reference)
    ended = reference[-1] == AutoTokenizer.from_pretrained(tiny_checkpoint).eos_token_id
    assert reply.choices[0].finish_reason == ("stop" if ended else "length")
    longer = [{"role": "system", "content": "Be brief."}, *HI]
    usage = client.chat.completions.create(model=served.name, messages=longer, max_tokens=1).usage
    assert usage.prompt_tokens == len(_prompt_ids(tiny_checkpoint, longer)) > len(prompt)
    assert usage.completion_tokens == 1


def test_openai_streaming_and_other_unsupported_fields_are_refused_naming_the_field(served):
    served, client = served
    with pytest.raises(openai.BadRequestError, match="stream=true is not supported") as info:
        client.chat.completions.create(model=served.name, messages=HI, stream=True)
    assert info.value.status_code == 400 and info.value.param == "stream"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=served.name, messages=HI, stop=["\n"])
    assert info.value.param == "stop"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=served.name, messages=[*HI, {"role": "user", "content": 3}])
    assert info.value.param == "messages[1].content"
    with pytest.raises(openai.BadRequestError, match="no room to generate"):
        client.chat.completions.create(model=served.name, messages=[{"role": "user", "content": "word " * 4000}])


def test_cli_evaluates_a_checkpoint_served_by_the_project(tiny_checkpoint, llm_server, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "local")
    tasks = tmp_path / "tasks.jsonl"
    rows = [{"problem": f"Compute {a} + {a} and box the result.", "solution": f"\\boxed{{{2 * a}}}"} for a in (1, 2, 3)]
    tasks.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    code = evaluate.main([
        "--dataset", str(tasks), "--out", str(out), "--task", "math", "--no_progress",
        "--policy_checkpoint", tiny_checkpoint, "--policy_device", "cpu", "--max_tokens", "12",
        "--temperature", "1.0", "--max_messages", "4",
        "--user_model", "openai/scripted-user", "--judge_model", "openai/scripted-judge",
        "--api_base", llm_server.base_url, "--api_key_env", KEY_ENV, "--num_retries", "2",
        "--bootstrap_resamples", "1000",
    ])
    assert code == 0
    records = [json.loads(line) for line in (out / "conversations.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        # the served checkpoint answered every policy turn through the LLM layer (random weights: gibberish)
        assert record["usage"]["policy"]["requests"] >= 1
        if record["status"] == "scored":
            assert record["messages"][0]["role"] == "user" and record["messages"][1]["role"] == "assistant"
            assert record["messages"][1]["content"].strip()
            assert record["metrics"]["token_amount"] > 0
        else:  # a reply of whitespace only is an unusable answer: retried, then counted as a failure
            assert record["end_reason"] == "policy_failure"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["policy"] == str(Path(tiny_checkpoint).resolve())
    assert summary["settings"]["policy_endpoint"]["model"] == "hosted_vllm/checkpoint"
    assert summary["conversations"]["recorded"] == 3
