"""A Hugging Face checkpoint answering OpenAI-style chat requests, sampled with ``transformers``.

``evaluate.py --policy_checkpoint DIR`` evaluates a checkpoint (an SFT or GRPO ``huggingface`` folder)
without a separate inference server: :func:`serve_checkpoint` loads it on the CPU or one GPU and serves it
alone on a :class:`~collabllm_verl.recipe.serving.chat_server.ChatServer` bound to 127.0.0.1, and returns
the litellm model string and ``api_base`` to reach it, so the checkpoint is called through the same LLM
layer as any API model (or with the official ``openai`` client: ``base_url=served.api_base``,
``api_key="local"``, ``model=served.name``).

This is a real backend, not a stand-in: each request's messages are rendered with the checkpoint's chat
template (generation prompt added), sampled with the request's ``temperature``, ``top_p``, ``top_k``,
``repetition_penalty`` and ``max_tokens`` (:func:`~collabllm_verl.recipe.serving.hf_generation.generate_batch`,
KV cache, stops at the model's end-of-sequence tokens), and decoded without special tokens. ``n`` choices are
sampled as ``n`` requests of one batch. ``usage`` counts the tokenizer's tokens: ``prompt_tokens`` of the
rendered prompt, ``completion_tokens`` of every choice (end-of-sequence token included), summed.
Concurrent requests are batched by :class:`~collabllm_verl.recipe.serving.batching.RequestBatcher` (the
same loop as the CPU ``hf`` rollout server): after the first pending request the backend waits
``batch_wait_ms``, then samples up to ``max_batch_size`` requests with equal settings in one ``generate``
call in a worker thread (the server's event loop stays responsive). A prompt that leaves no room to
generate within ``max_model_len`` is answered with HTTP 400 (litellm raises ``BadRequestError``; the LLM
layer does not retry it).

Streaming is not supported: a request with ``stream=true`` is answered with HTTP 400 naming the field
``stream`` (see :mod:`~collabllm_verl.recipe.serving.chat_server` for the fields refused the same way).

For large models and many conversations, serve the checkpoint with vLLM instead and pass
``--policy_model hosted_vllm/<name> --policy_api_base http://HOST:PORT/v1`` (docs/evaluation.md).
No verl import.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from collabllm_verl.recipe.serving.batching import RequestBatcher
from collabllm_verl.recipe.serving.chat_server import ChatChoice, ChatRequest, ChatResult, ChatServer
from collabllm_verl.recipe.serving.hf_generation import (
    STOP_COMPLETED,
    GenerationRequest,
    GenerationResult,
    end_of_sequence_ids,
    generate_batch,
    load_causal_lm,
    parse_sampling_params,
    resolve_dtype,
)

__all__ = ["HFChatBackend", "ServedCheckpoint", "resolve_device", "serve_checkpoint"]

logger = logging.getLogger(__name__)

# Request fields handed to the sampler (OpenAI names; ``max_completion_tokens`` is an alias of max_tokens).
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> the first CUDA device when one is available, else the CPU; other names as torch reads them.

    Raises:
        ValueError: a CUDA device was asked for and none is available.
    """
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


class HFChatBackend:
    """A checkpoint answering chat requests: a :class:`~.chat_server.ChatResponder` (:meth:`complete`) and a
    responder of the offline server's form (:meth:`respond`).

    Args:
        model_path: a local Hugging Face checkpoint folder (weights, config, tokenizer with a chat template).
        device: ``"auto"`` (a GPU when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (bfloat16 on a GPU that supports it, else float32) or a dtype name
            (``float32``, ``bfloat16``, ``float16``).
        max_batch_size: most requests sampled in one ``generate`` call (>= 1).
        batch_wait_ms: milliseconds to collect requests before sampling a batch (>= 0).
        max_model_len: context window in tokens, prompt and reply together (default: the model's
            ``max_position_embeddings``).
        default_max_tokens: reply budget in tokens when a request sets no ``max_tokens``.
        seed: seeds torch's sampler once at load time (batching makes single replies depend on what they
            were batched with, so replies are reproducible only for the same sequence of batches).
        trust_remote_code: passed to ``transformers``.

    Raises:
        ValueError: the tokenizer has no chat template, the model defines no end-of-sequence token, an
            unknown dtype/device, or a setting out of range.
    """

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        max_model_len: int | None = None,
        default_max_tokens: int = 1024,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoTokenizer

        if max_batch_size < 1 or batch_wait_ms < 0 or default_max_tokens < 1:
            raise ValueError(
                "HFChatBackend needs max_batch_size >= 1, batch_wait_ms >= 0, default_max_tokens >= 1"
            )
        self.model_path = str(model_path)
        self.device = resolve_device(device)
        if dtype == "auto":
            on_gpu = self.device.type == "cuda"
            dtype = "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
        self.dtype = resolve_dtype(dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{self.model_path}: the tokenizer has no chat template; it cannot serve chat requests"
            )
        torch.manual_seed(seed)
        model, model_eos = load_causal_lm(
            self.model_path, dtype=self.dtype, trust_remote_code=trust_remote_code
        )
        self.model = model.to(self.device)
        self.eos_token_ids = end_of_sequence_ids(model_eos, self.tokenizer)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]
        positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self.max_model_len = int(max_model_len or positions or 4096)
        if positions and self.max_model_len > positions:
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the model's max_position_embeddings {positions}"
            )
        self.default_max_tokens = int(default_max_tokens)
        sample = functools.partial(
            generate_batch,
            self.model,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            with_log_probs=False,
        )
        self._batcher = RequestBatcher(
            sample, max_batch_size=max_batch_size, batch_wait_s=float(batch_wait_ms) / 1000.0, name="hf chat"
        )
        logger.info(
            "serving %s on %s (%s), max_model_len %d, batches of up to %d",
            self.model_path,
            self.device,
            self.dtype,
            self.max_model_len,
            self._batcher.max_batch_size,
        )

    @property
    def max_batch_size(self) -> int:
        """Most requests sampled in one ``generate`` call."""
        return self._batcher.max_batch_size

    def encode(self, messages: list[Mapping[str, Any]]) -> list[int]:
        """Token ids of the chat-template rendering of ``messages`` with the generation prompt."""
        encoded = self.tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            add_generation_prompt=True,
            tokenize=True,
        )
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return [int(t) for t in ids]

    def prepare(self, messages: list[Mapping[str, Any]], request: Mapping[str, Any]) -> GenerationRequest:
        """The sampling request for one chat request.

        Args:
            messages: ``[{"role", "content": str}, ...]``, at least one.
            request: the request's fields; ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty`` and
                ``max_tokens`` (or ``max_completion_tokens``) are read, the rest ignored.

        Raises:
            ValueError: malformed messages, a prompt with no room left in ``max_model_len``, or a sampling
                parameter out of range (the server answers HTTP 400).
        """
        if not messages or not all(
            isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages
        ):
            raise ValueError("messages must be a non-empty list of {'role', 'content': str} objects")
        prompt_ids = self.encode(messages)
        params = {key: request[key] for key in _SAMPLING_FIELDS if request.get(key) is not None}
        if "max_tokens" not in params and request.get("max_completion_tokens") is not None:
            params["max_tokens"] = request["max_completion_tokens"]
        settings, max_new_tokens = parse_sampling_params(
            params,
            prompt_len=len(prompt_ids),
            max_model_len=self.max_model_len,
            prompt_length=self.max_model_len,
            response_length=self.default_max_tokens,
        )
        return GenerationRequest(prompt_ids, settings, max_new_tokens)

    async def sample(self, prepared: GenerationRequest, n: int = 1) -> list[GenerationResult]:
        """``n`` (>= 1) independent samples of ``prepared``, queued together (so usually one batch)."""
        return list(await asyncio.gather(*(self._batcher.submit(prepared) for _ in range(n))))

    async def complete(self, request: ChatRequest) -> ChatResult:
        """:class:`~.chat_server.ChatResponder`: ``request.choices`` replies and the tokenizer's token counts.

        Raises:
            ValueError: see :meth:`prepare` (HTTP 400).
        """
        prepared = self.prepare(request.conversation(), request.sampling_fields())
        results = await self.sample(prepared, request.choices)
        choices = [
            ChatChoice(self.decode(r), "stop" if r.stop_reason == STOP_COMPLETED else "length")
            for r in results
        ]
        return ChatResult(
            choices=choices,
            prompt_tokens=len(prepared.prompt_ids),
            completion_tokens=sum(len(r.token_ids) for r in results),
        )

    async def respond(self, messages: list[Mapping[str, Any]], request: Mapping[str, Any]) -> str:
        """One decoded reply (special tokens removed) to ``messages``, sampled with ``request``'s settings; the
        responder form of :func:`collabllm_verl.recipe.offline.server.register_responder`.

        Raises:
            ValueError: see :meth:`prepare`.
        """
        [result] = await self.sample(self.prepare(messages, request))
        return self.decode(result)

    def decode(self, result: GenerationResult) -> str:
        """The text of a sampled reply, special tokens (end of turn) removed."""
        return self.tokenizer.decode(result.token_ids, skip_special_tokens=True)

    def stats(self) -> dict[str, float]:
        """Counters since load: ``batches``, ``requests`` (samples: a request for ``n`` choices counts ``n``),
        ``generated_tokens``, ``truncated`` (replies cut at their token budget) and ``generation_seconds``
        (wall seconds spent sampling)."""
        return self._batcher.stats()


@dataclass(frozen=True)
class ServedCheckpoint:
    """Where a served checkpoint answers.

    Attributes:
        model: the litellm model string (``hosted_vllm/<name>``: litellm's client for vLLM-style
            OpenAI-compatible servers, which costs the client about half the CPU per request of its
            ``openai/`` client, measured in benchmarks/README.md).
        api_base: the server's ``http://127.0.0.1:PORT/v1`` (``base_url`` of the ``openai`` client).
        backend: the :class:`HFChatBackend` (for its :meth:`~HFChatBackend.stats`).
        name: the model name the server knows (``model=`` of the ``openai`` client; the only entry of
            ``/v1/models``).
    """

    model: str
    api_base: str
    backend: HFChatBackend
    name: str


@contextlib.contextmanager
def serve_checkpoint(
    model_path: str, *, name: str = "checkpoint", **backend_kwargs: Any
) -> Iterator[ServedCheckpoint]:
    """Load ``model_path`` and serve it alone on 127.0.0.1 (a free port) for the duration of the ``with`` block.

    Args:
        model_path: the checkpoint folder.
        name: the served model's name; requests for ``hosted_vllm/<name>`` (litellm) or ``<name>`` (the
            ``openai`` client) reach the checkpoint.
        **backend_kwargs: :class:`HFChatBackend` settings.

    Yields:
        :class:`ServedCheckpoint`; use ``api_key="local"`` (the server checks no key).

    Raises:
        ValueError: see :class:`HFChatBackend`.
    """
    backend = HFChatBackend(model_path, **backend_kwargs)
    with ChatServer({name: backend}) as server:
        yield ServedCheckpoint(
            model=f"hosted_vllm/{name}", api_base=server.base_url, backend=backend, name=name
        )
