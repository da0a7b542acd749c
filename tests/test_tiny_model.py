"""The offline tiny-model builder: loading through the Auto classes, the ChatML template as verl's
multi-turn SFT dataset uses it, determinism, the CLI and argument errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from collabllm_verl.recipe.cpu.tiny_model import build_tiny_model, default_corpus_path

CONVERSATION = [
    {"role": "system", "content": "You are a careful collaborator."},
    {"role": "user", "content": "Solve 2y - 7 = 11."},
    {"role": "assistant", "content": "Do you want only the answer, or the steps too?"},
    {"role": "user", "content": "The steps, please."},
    {"role": "assistant", "content": "Add 7 to both sides: 2y = 18. Divide by 2: y = \\boxed{9}."},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_loads_offline_with_auto_classes(tiny_dir: Path):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok.encode(special)) == 1, special
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id

    # Byte-level BPE: any text (including non-ASCII) round-trips.
    text = "Ünïcode ∑ x^2 = 4 — \\boxed{2}\n\ttabs"
    assert tok.decode(tok.encode(text)) == text

    ids = tok.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_chat_template_is_chatml_with_assistant_mask(tiny_dir: Path):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONVERSATION)
    assert text == expected
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")

    enc = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    masked = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert masked == "".join(m["content"] + "<|im_end|>" for m in CONVERSATION if m["role"] == "assistant")


def test_verl_multiturn_sft_dataset_accepts_template(tiny_dir: Path, tmp_path: Path):
    """verl tokenises message by message and asserts the concatenation equals the whole rendering."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    path = tmp_path / "sft.parquet"
    pd.DataFrame({"messages": [CONVERSATION, CONVERSATION[:3]]}).to_parquet(path)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    cfg = OmegaConf.create({"messages_key": "messages", "max_length": 512, "pad_mode": "no_padding"})
    dataset = MultiTurnSFTDataset(parquet_files=str(path), tokenizer=tok, config=cfg)
    item = dataset[0]
    ids, loss_mask = item["input_ids"], item["loss_mask"]
    assert ids.tolist() == tok.apply_chat_template(CONVERSATION, return_dict=True)["input_ids"]
    trained = tok.decode(ids[loss_mask.bool()].tolist())
    # Only assistant turns are trained: their content and closing token (plus the newline after it).
    for message in CONVERSATION:
        assert (message["content"] in trained) == (message["role"] == "assistant")
    assert "<|im_start|>" not in trained


def test_deterministic_given_seed(tiny_dir: Path, tmp_path: Path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    a = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(again).state_dict()
    c = AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # Building must not consume the caller's global RNG.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "rng", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_custom_sizes_and_corpus(tmp_path: Path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("alpha beta gamma\n" * 50 + "delta epsilon\n" * 20, encoding="utf-8")
    out = build_tiny_model(
        tmp_path / "m",
        vocab_size=300,
        hidden_size=32,
        num_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        corpus_files=[corpus],
    )
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(tok) <= 300
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    # Merges come from the given corpus: frequent words there become single tokens.
    assert len(tok.encode(" gamma")) == 1


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, ValueError),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, ValueError),
        ({"vocab_size": 100}, ValueError),
        ({"num_layers": 0}, ValueError),
        ({"corpus_files": ["/nonexistent/corpus.txt"]}, FileNotFoundError),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs, error):
    with pytest.raises(error):
        build_tiny_model(tmp_path / "bad", **kwargs)


def test_cli(tmp_path: Path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "collabllm_verl.recipe.cpu.tiny_model", "--out", str(out), "--hidden-size", "32"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tiny model written to" in proc.stdout
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 32
    assert default_corpus_path().is_file()
