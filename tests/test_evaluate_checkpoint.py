"""evaluate.py with --policy_checkpoint: a real (tiny, random) Hugging Face checkpoint served on 127.0.0.1 by
the transformers chat backend (recipe/serving/hf_chat.py), batching concurrent requests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import evaluate
from collabllm_verl.recipe.cpu.tiny_model import build_tiny_model
from collabllm_verl.recipe.serving.hf_chat import HFChatBackend

KEY_ENV = "EVAL_TEST_API_KEY"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("eval_ckpt") / "tiny"))


def _reference_greedy(model_dir: str, messages: list[dict], max_new_tokens: int) -> str:
    """The greedy reply of plain transformers, one unpadded prompt at a time."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = torch.tensor([list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)


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
