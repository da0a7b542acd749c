"""Build a tiny, randomly initialised Qwen2 chat model with its own tokenizer, fully offline.

Tests, CI and the CPU presets need a causal LM that verl can load like a real checkpoint, without
downloading anything (the Hugging Face hub is not reachable from many CI machines). This module:

1. trains a byte-level BPE tokenizer with the ``tokenizers`` library on a small text bundled with the
   package (``recipe/cpu/assets/tiny_corpus.txt``, optionally plus user-given files);
2. adds the ChatML special tokens ``<|endoftext|>`` (also the pad token), ``<|im_start|>`` and
   ``<|im_end|>`` (the end-of-turn / EOS token) and a ChatML chat template (see :data:`CHAT_TEMPLATE`);
3. saves a randomly initialised ``transformers.Qwen2ForCausalLM`` next to the tokenizer.

The resulting directory loads with ``AutoTokenizer.from_pretrained(dir)`` and
``AutoModelForCausalLM.from_pretrained(dir)``. The output is deterministic for a given set of
arguments (same tokenizer files, same weights). Building takes a few seconds on a CPU.

CLI::

    python -m collabllm_verl.recipe.cpu.tiny_model --out /tmp/tiny-qwen2 [--hidden-size 64] [--num-layers 2]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_model", "default_corpus_path", "main"]

#: Special tokens, in id order right after the 256 byte tokens' merges are learnt.
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: ChatML template. Every message renders on its own, independently of its neighbours, which is what
#: verl's ``MultiTurnSFTDataset`` requires (it tokenises message by message and checks that the
#: concatenation equals the whole-conversation rendering). Assistant turns are wrapped in
#: ``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` works.
#: No default system prompt is inserted.
CHAT_TEMPLATE: str = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def default_corpus_path() -> Path:
    """Path of the bundled tokenizer training text (``recipe/cpu/assets/tiny_corpus.txt``)."""
    return Path(str(resources.files("collabllm_verl.recipe.cpu").joinpath("assets", "tiny_corpus.txt")))


def _read_corpus(paths: Sequence[os.PathLike | str]) -> list[str]:
    lines: list[str] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer corpus file not found: {p}")
        lines.extend(line for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
    if not lines:
        raise ValueError(f"tokenizer corpus is empty: {[str(p) for p in paths]}")
    return lines


def _train_tokenizer(lines: Iterable[str], vocab_size: int):
    """Train a byte-level BPE with exactly the normaliser/pre-tokeniser of Qwen2's tokenizer.

    ``AutoTokenizer`` maps ``model_type: qwen2`` to ``Qwen2Tokenizer``, which (transformers 5) rebuilds
    the pipeline around the saved vocabulary and merges with Qwen2's own split regex and NFC
    normalisation. Training with the same pipeline keeps the merges consistent with how they are used.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(lines), trainer=trainer)
    return tokenizer


def build_tiny_model(
    out_dir: os.PathLike | str,
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    intermediate_size: int | None = None,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    corpus_files: Sequence[os.PathLike | str] | None = None,
) -> Path:
    """Write a tiny random ``Qwen2ForCausalLM`` and its ChatML tokenizer into ``out_dir``.

    Args:
        out_dir: target directory (created; existing model/tokenizer files in it are overwritten).
        vocab_size: upper bound on the BPE vocabulary, special tokens included (>= 259). The trainer
            stops earlier when the corpus offers no more merges; the model's embedding matrix always
            has exactly ``len(tokenizer)`` rows.
        hidden_size: model width; must be divisible by ``num_attention_heads``.
        intermediate_size: MLP width; default ``2 * hidden_size``.
        num_layers: number of decoder layers.
        num_attention_heads / num_key_value_heads: attention heads (grouped-query attention when the
            second is smaller; it must divide the first).
        max_position_embeddings: longest sequence in tokens the rotary embedding is configured for.
        seed: seeds ``torch`` for the weight initialisation (the tokenizer does not depend on it).
        corpus_files: tokenizer training text files; default the bundled ``tiny_corpus.txt``.

    Returns:
        ``Path(out_dir)``, which then holds ``config.json``, ``generation_config.json``,
        ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``.

    Raises:
        ValueError: on inconsistent sizes or an empty corpus.
        FileNotFoundError: if a corpus file does not exist.
    """
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + special tokens), got {vocab_size}"
        )
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}"
        )
    if num_attention_heads % num_key_value_heads:
        raise ValueError(
            f"num_attention_heads={num_attention_heads} is not divisible by num_key_value_heads={num_key_value_heads}"
        )
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    raw = _train_tokenizer(_read_corpus(corpus_files or [default_corpus_path()]), vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=max_position_embeddings,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        use_sliding_window=False,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        dtype="float32",
    )
    # Seed a private generator state so that building a model does not disturb the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, do_sample=False, max_new_tokens=64
    )
    model.save_pretrained(out)

    # A small manifest that records how the directory was made (useful when a test fails).
    manifest = {
        "builder": "collabllm_verl.recipe.cpu.tiny_model.build_tiny_model",
        "seed": seed,
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "tiny_model.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``python -m collabllm_verl.recipe.cpu.tiny_model --out DIR [options]``."""
    parser = argparse.ArgumentParser(description="Build a tiny random Qwen2 chat model + tokenizer offline.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--vocab-size", type=int, default=1024, help="max BPE vocabulary size (default 1024)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-attention-heads", type=int, default=4)
    parser.add_argument("--num-key-value-heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--corpus",
        action="append",
        default=None,
        help="tokenizer training text file (repeatable); default: bundled",
    )
    args = parser.parse_args(argv)
    out = build_tiny_model(
        args.out,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        seed=args.seed,
        corpus_files=args.corpus,
    )
    manifest = json.loads((out / "tiny_model.json").read_text(encoding="utf-8"))
    print(
        f"tiny model written to {out} ({manifest['num_parameters']} parameters, vocab {manifest['vocab_size']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
