"""The ``hf`` rollout server: a Ray actor that samples with ``transformers`` (docs/design.md §4).

It plays the role of verl's ``vLLMHttpServer`` for CPU machines: agent loops call its token-in/token-out
``generate`` through verl's ``LLMServerClient`` (``server.generate.remote(request_id=..., prompt_ids=...,
sampling_params=...)``), the trainer's rollout adapter (:class:`..hf_adapter.HFServerAdapter`) pushes
updated weights with ``load_weights`` / ``finish_weight_update``, and the replica calls the lifecycle
methods (``wake_up``, ``sleep``, ``abort_all_requests``, ``resume_generation``, ...).

Concurrent requests are batched by :class:`~collabllm_verl.recipe.serving.batching.RequestBatcher` (the
same loop as the chat endpoint over a checkpoint): the server waits ``batch_wait_ms`` after the first
pending request, then samples up to ``max_batch_size`` pending requests with equal sampling settings in one
``generate`` call in a worker thread, so the actor's event loop stays responsive. Weights live in host
memory for the whole run, so sleep/wake-up and the KV-cache calls are no-ops (there is no cache kept
between requests).

Tuning keys (``actor_rollout_ref.rollout.engine_kwargs.hf.*``, all optional):
    num_threads: torch intra-op threads of the server process (default 1: with tiny models, and whenever the
        trainer and other processes share the cores, more threads mostly spin; raise it for models of
        100M+ parameters on an otherwise idle machine).
    batch_wait_ms: how long to collect requests before sampling a batch, in milliseconds (default 5).
    max_batch_size: most requests sampled together (default ``min(64, rollout.max_num_seqs)``).
    logit_bias: biases added to those logits for every request that sets no ``logit_bias`` sampling parameter
        of its own (a request's own, even ``{}``, replaces it, as vLLM's per-request bias; the CollabLLM agent
        loop sends one for forward-sampled replies when ``rollout.custom.future_logit_bias`` or
        ``future_eos_logit_bias`` is set) (default none), as ``{token: bias}`` or as a
        list of ``[token, bias]`` pairs (the form Hydra overrides accept for text, e.g.
        ``+...engine_kwargs.hf.logit_bias=[['?',3.0]]``); a token is an id or a piece of text that the
        tokenizer encodes as exactly one token.
    eos_logit_bias: bias added to every end-of-sequence token's logit (default 0). The CPU preset uses it
        so that an untrained tiny model ends its turns after a few tokens and forward sampling runs; the
        rollout then samples from a length-biased policy (``processed_logprobs`` include the bias, so
        ``training/rollout_probs_diff_*`` shows the gap to the trainer's log-probs).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Iterable
from typing import Any

import ray
import torch
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.tokenizer import normalize_token_ids
from verl.workers.config import HFModelConfig
from verl.workers.rollout.replica import RolloutMode, TokenOutput
from verl.workers.rollout.utils import get_max_position_embeddings

from collabllm_verl.recipe.core.logit_bias import resolve_logit_bias
from collabllm_verl.recipe.serving.batching import RequestBatcher
from collabllm_verl.recipe.serving.hf_generation import (
    LOGPROBS_MODES,
    STOP_ABORTED,
    GenerationRequest,
    GenerationResult,
    end_of_sequence_ids,
    generate_batch,
    load_causal_lm,
    load_named_weights,
    parse_sampling_params,
    resolve_dtype,
)

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

SERVER_NAME_PREFIX = "hf_"
HF_ENGINE_KWARGS = ("num_threads", "batch_wait_ms", "max_batch_size", "logit_bias", "eos_logit_bias")
"""Keys accepted under ``actor_rollout_ref.rollout.engine_kwargs.hf`` (see the module docstring)."""


def server_actor_name(replica_rank: int, node_rank: int = 0, suffix: str = "") -> str:
    """Ray actor name of a replica's server; the rollout adapter looks the server up by this name."""
    return f"{SERVER_NAME_PREFIX}server_{replica_rank}_{node_rank}{suffix}"


class HFRolloutServer:
    """Token-in/token-out sampling server for one rollout replica (wrap with ``ray.remote``).

    Args:
        config: ``actor_rollout_ref.rollout`` (``RolloutConfig`` or its DictConfig). Uses ``dtype``,
            ``load_format`` (``"dummy"``: random weights until the trainer's first sync), ``prompt_length``,
            ``response_length``, ``max_model_len``, ``max_num_seqs``, ``logprobs_mode``,
            ``repetition_penalty``, ``ignore_eos``, ``seed`` and ``engine_kwargs.hf``.
        model_config: ``actor_rollout_ref.model`` (``HFModelConfig`` or its DictConfig).
        rollout_mode: the replica's ``RolloutMode`` (informational: weights never leave host memory).
        replica_rank: rank of the replica (seeds the sampler with ``seed + replica_rank``).
        node_rank: node rank inside the replica (always 0: one process serves a replica).

    Raises:
        ValueError: unknown ``dtype``, ``logprobs_mode`` or ``engine_kwargs.hf`` key, an invalid logit bias,
            or a model without an end-of-sequence token.
    """

    def __init__(
        self,
        config: Any,
        model_config: Any,
        rollout_mode: RolloutMode = RolloutMode.HYBRID,
        replica_rank: int = 0,
        node_rank: int = 0,
    ):
        self.config = omega_conf_to_dataclass(config)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.rollout_mode = rollout_mode
        self.replica_rank = replica_rank
        self.node_rank = node_rank

        hf_kwargs = dict((self.config.engine_kwargs or {}).get("hf", None) or {})
        unknown = sorted(set(hf_kwargs) - set(HF_ENGINE_KWARGS))
        if unknown:
            raise ValueError(
                f"unknown rollout.engine_kwargs.hf key(s) {unknown}; known: {list(HF_ENGINE_KWARGS)}"
            )
        torch.set_num_threads(int(hf_kwargs.get("num_threads") or 1))
        self.logprobs_mode = self.config.logprobs_mode or "processed_logprobs"
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"hf rollout supports logprobs_mode in {LOGPROBS_MODES}, got {self.logprobs_mode!r}"
            )

        max_positions = get_max_position_embeddings(self.model_config.hf_config)
        self.max_model_len = int(self.config.max_model_len or max_positions)
        if self.max_model_len > max_positions:
            raise ValueError(
                f"rollout.max_model_len ({self.max_model_len}) exceeds the model's max_position_embeddings "
                f"({max_positions})"
            )

        torch.manual_seed(int(self.config.seed) + int(replica_rank))
        self.model, model_eos_ids = load_causal_lm(
            self.model_config.local_path,
            dtype=resolve_dtype(self.config.dtype),
            load_weights=self.config.load_format != "dummy",
            trust_remote_code=self.model_config.trust_remote_code,
            override_config=dict(self.model_config.override_config or {}),
        )
        tokenizer = self.model_config.tokenizer
        self.eos_token_ids = end_of_sequence_ids(model_eos_ids, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]
        self.logit_bias = resolve_logit_bias(
            hf_kwargs, self.eos_token_ids, vocab_size=self.model.config.vocab_size, tokenizer=tokenizer
        )

        self.global_steps: int | None = None
        self._address = (
            f"{ray.util.get_node_ip_address().strip('[]')}:{server_actor_name(replica_rank, node_rank)}"
        )

        sample = functools.partial(
            generate_batch,
            self.model,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            logprobs_mode=self.logprobs_mode,
            logit_bias=self.logit_bias,
        )
        self._batcher = RequestBatcher(
            sample,
            max_batch_size=int(hf_kwargs.get("max_batch_size") or min(64, self.config.max_num_seqs)),
            batch_wait_s=float(hf_kwargs.get("batch_wait_ms", 5)) / 1000.0,
            name="hf rollout",
        )
        # The admission gate is created on first use, inside the actor's event loop.
        self._gate_open: asyncio.Event | None = None
        self._rejecting = False
        self._weight_updates = 0
        logger.info(
            "hf rollout server %s ready: model %s, dtype %s, %d threads, max_model_len %d",
            self._address,
            self.model_config.local_path,
            self.config.dtype,
            torch.get_num_threads(),
            self.max_model_len,
        )

    # ------------------------------------------------------------------ generation

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> TokenOutput:
        """Sample a response to ``prompt_ids`` (the ``LLMServerClient`` contract of verl 0.9.1).

        Args:
            prompt_ids: prompt token ids.
            sampling_params: see
                :func:`collabllm_verl.recipe.serving.hf_generation.parse_sampling_params`.
            request_id: id used for logging and aborts.
            image_data, video_data, audio_data: must be None (text-only backend).
            mm_processor_kwargs, priority: accepted and ignored.

        Returns:
            ``TokenOutput`` with ``token_ids``, one ``log_probs`` entry per token, ``stop_reason``
            (``"completed"``, ``"length"`` or ``"aborted"``) and ``extra_fields={"global_steps": ...}``.

        Raises:
            NotImplementedError: multimodal inputs.
            ValueError: the prompt leaves no room to generate, or invalid sampling parameters.
        """
        if image_data is not None or video_data is not None or audio_data is not None:
            raise NotImplementedError("The hf rollout backend is text-only; got image/video/audio inputs.")
        self._ensure_started()
        prompt_ids = normalize_token_ids(prompt_ids)
        settings, max_new_tokens = parse_sampling_params(
            sampling_params,
            prompt_len=len(prompt_ids),
            max_model_len=self.max_model_len,
            prompt_length=self.config.prompt_length,
            response_length=self.config.response_length,
            default_repetition_penalty=self.config.repetition_penalty,
            default_ignore_eos=self.config.ignore_eos,
            vocab_size=self.model.config.vocab_size,
        )
        while not self._gate_open.is_set():
            if self._rejecting:
                return self._token_output(GenerationResult([], [], STOP_ABORTED))
            await self._gate_open.wait()

        result = await self._batcher.submit(
            GenerationRequest(prompt_ids, settings, max_new_tokens), request_id
        )
        return self._token_output(result)

    def _token_output(self, result: GenerationResult) -> TokenOutput:
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs,
            stop_reason=result.stop_reason,
            extra_fields={"global_steps": self.global_steps},
        )

    def _ensure_started(self) -> None:
        if self._gate_open is None:
            self._gate_open = asyncio.Event()
            self._gate_open.set()

    # ------------------------------------------------------------------ weights

    async def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy a bucket of ``(hf_name, full_tensor)`` pairs into the model; waits for in-flight sampling.

        Returns:
            The number of tensors loaded. Raises ``KeyError``/``ValueError`` from
            :func:`collabllm_verl.recipe.serving.hf_generation.load_named_weights` on unknown names or
            shape mismatches.
        """
        async with self._batcher.exclusive():
            return await asyncio.to_thread(load_named_weights, self.model, list(named_tensors))

    async def finish_weight_update(self, global_steps: int | None = None) -> None:
        """Mark the end of a weight sync: records the model version reported in ``extra_fields``."""
        if global_steps is not None:
            self.global_steps = global_steps
        self._weight_updates += 1

    async def set_global_steps(self, global_steps: int) -> None:
        """Set the model version (trainer step) reported with each response."""
        self.global_steps = global_steps

    # ------------------------------------------------------------------ lifecycle (replica contract)

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        """Stop sampling: pending requests and the running batch end with ``stop_reason="aborted"``.

        New requests wait until :meth:`resume_generation`, or are answered ``"aborted"`` at once when
        ``reject_request`` is True (verl's contract for a replica leaving the load balancer).

        Returns:
            ``{"aborted_count": int, "request_ids": [...]}``.
        """
        self._ensure_started()
        self._gate_open.clear()
        self._rejecting = reject_request
        request_ids = await self._batcher.abort_all()
        return {"aborted_count": len(request_ids), "request_ids": request_ids}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        """Abort one pending request (a request already being sampled runs to its end)."""
        if self._batcher.abort_pending(request_id):
            return {"aborted": True, "request_id": request_id}
        return {"aborted": False, "request_id": request_id, "error": f"Request {request_id} not pending"}

    async def resume_generation(self) -> None:
        """Admit requests again after :meth:`abort_all_requests`."""
        self._ensure_started()
        self._rejecting = False
        self._gate_open.set()

    async def wake_up(self, tags: list[str] | None = None) -> None:
        """No-op: weights stay in host memory."""

    async def sleep(self) -> None:
        """No-op: weights stay in host memory."""

    async def clear_kv_cache(self) -> None:
        """No-op: no KV cache is kept between requests."""

    async def release_kv_cache(self) -> None:
        """No-op: no KV cache is kept between requests."""

    async def resume_kv_cache(self) -> None:
        """No-op: no KV cache is kept between requests."""

    async def start_profile(self, **kwargs) -> None:
        """Profiling is not supported by the hf backend (no-op)."""

    async def stop_profile(self) -> None:
        """Profiling is not supported by the hf backend (no-op)."""

    async def wait_for_requests_to_drain(self) -> None:
        """Wait until no request is pending or being sampled."""
        await self._batcher.drain()

    def get_server_address(self) -> str:
        """An identifier ``"<node ip>:<actor name>"`` (the hf backend serves no HTTP endpoint)."""
        return self._address

    def get_rollout_config(self):
        """The server's ``RolloutConfig``."""
        return self.config

    def get_stats(self) -> dict[str, float]:
        """Counters since start: ``batches``, ``requests``, ``generated_tokens``, ``truncated`` (responses cut at
        their token budget), ``generation_seconds`` (wall seconds spent sampling and scoring),
        ``weight_updates``."""
        return {**self._batcher.stats(), "weight_updates": float(self._weight_updates)}
