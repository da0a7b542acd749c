"""Batched token-in/token-out sampling with a ``transformers`` causal LM (the ``hf`` rollout backend).

This module holds the model-facing half of the ``hf`` backend (docs/design.md §4): turning verl's
per-request ``sampling_params`` into sampling settings, loading the model, sampling a batch of prompts with
``transformers``' ``generate`` and scoring the sampled tokens, and loading trainer weights into the model.
It knows nothing about Ray or verl (no verl import): the ``hf`` rollout server of the CPU backend
(:mod:`collabllm_verl.recipe.cpu.hf_server`) and the chat server that evaluation uses for a checkpoint
(:mod:`collabllm_verl.recipe.serving.hf_chat`) both drive it.

Log-probabilities are recomputed with one forward pass over prompt + response after sampling, the way the
verl actor computes ``old_log_prob``: ``log_softmax(logits / temperature)`` at each response position
(``logprobs_mode="processed_logprobs"``, verl's default, additionally applies the same top-k / top-p
filtering that was used for sampling, and the logit bias it sampled with (the request's or the server's);
``"raw_logprobs"`` uses the unscaled logits of the model). A repetition penalty,
when one is used, affects sampling but not these log-probs, as in the verl actor. Values are natural-log
probabilities, one per response token, all <= 0.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from collabllm_verl.recipe.core.logit_bias import resolve_logit_bias

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
"""Supported ``rollout.logprobs_mode`` values (vLLM's names)."""

STOP_COMPLETED = "completed"
STOP_LENGTH = "length"
STOP_ABORTED = "aborted"

# Keys of verl's sampling_params this backend understands. ``logprobs`` is accepted and ignored: log-probs
# are always returned (they cost one forward pass per batch). Multimodal keys are rejected by the server.
_KNOWN_KEYS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "logprobs",
        "max_tokens",
        "max_new_tokens",
        "ignore_eos",
        "stop_token_ids",
        "seed",
        "logit_bias",
    }
)

# Upper bound on floats materialised at once when scoring (rows x positions x vocabulary): 64M floats
# = 256 MB in float32. Rows are scored in chunks below this size.
_SCORING_FLOATS_BUDGET = 64 * 1024 * 1024

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling settings of one request; requests with equal settings are batched together.

    Attributes:
        temperature: softmax temperature; ``<= 0`` means greedy decoding (verl's validation default).
        top_p: nucleus-sampling mass in (0, 1]; 1 disables it.
        top_k: keep the k most likely tokens; ``<= 0`` disables it (verl and vLLM use -1).
        repetition_penalty: HF/vLLM repetition penalty; 1 disables it.
        ignore_eos: keep generating after an end-of-sequence token (until the token budget is used up).
        stop_token_ids: extra token ids that end a response, besides the model's end-of-sequence ids.
        logit_bias: the request's own ``(token_id, bias)`` pairs (logit units, sorted by id), used instead of
            the server's bias; ``()`` samples from the model's own distribution; None (the default) keeps
            the server's bias (``engine_kwargs.hf``).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] | None = None

    def bias_or(self, server_bias: Mapping[int, float] | None) -> Mapping[int, float] | None:
        """The bias to sample with: the request's own when it sets one (even empty), else ``server_bias``."""
        return dict(self.logit_bias) if self.logit_bias is not None else server_bias

    @property
    def greedy(self) -> bool:
        """True when decoding is greedy (``temperature <= 0``)."""
        return self.temperature <= 0


@dataclass
class GenerationRequest:
    """One prompt to continue.

    Attributes:
        prompt_ids: prompt token ids (length >= 1).
        settings: sampling settings.
        max_new_tokens: token budget of the response (>= 1).
    """

    prompt_ids: list[int]
    settings: SamplingSettings
    max_new_tokens: int


@dataclass
class GenerationResult:
    """The sampled continuation of one request.

    Attributes:
        token_ids: sampled response token ids, including the end-of-sequence token when one was produced.
        log_probs: one natural-log probability per entry of ``token_ids`` (see the module docstring); empty
            when :func:`generate_batch` ran with ``with_log_probs=False``.
        stop_reason: ``"completed"`` (an end-of-sequence/stop token was produced), ``"length"`` (the token
            budget ran out) or ``"aborted"`` (generation was interrupted; ``token_ids`` holds what was
            produced so far).
    """

    token_ids: list[int]
    log_probs: list[float]
    stop_reason: str


def parse_sampling_params(
    params: Mapping[str, Any],
    *,
    prompt_len: int,
    max_model_len: int,
    prompt_length: int,
    response_length: int,
    default_repetition_penalty: float = 1.0,
    default_ignore_eos: bool = False,
    vocab_size: int | None = None,
) -> tuple[SamplingSettings, int]:
    """Turn verl's per-request ``sampling_params`` into :class:`SamplingSettings` and a token budget.

    The token budget follows verl's vLLM server (``vLLMHttpServer.generate``): ``max_tokens`` (or
    ``max_new_tokens``) when given, else ``min(response_length, prompt_length + response_length -
    prompt_len)``; then clamped to ``[1, max_model_len - prompt_len]``.

    Args:
        params: the request's sampling parameters (``temperature``, ``top_p``, ``top_k``,
            ``repetition_penalty``, ``max_tokens``/``max_new_tokens``, ``ignore_eos``, ``stop_token_ids``,
            ``logprobs``, ``logit_bias``: ``{token_id: bias}`` with int or digit-string ids, as vLLM's and
            OpenAI's, replacing the server's bias for this request; ``{}`` for none). Unknown keys are
            logged once and ignored.
        prompt_len: number of prompt tokens.
        max_model_len: context window in tokens (prompt + response).
        prompt_length, response_length: ``rollout.prompt_length`` / ``rollout.response_length`` (tokens).
        default_repetition_penalty, default_ignore_eos: used when the request does not set them.
        vocab_size: when given, ``logit_bias`` ids must lie in ``[0, vocab_size)``.

    Returns:
        ``(settings, max_new_tokens)``.

    Raises:
        ValueError: the prompt leaves no room to generate, or a parameter is out of range.
    """
    unknown = sorted(set(params) - _KNOWN_KEYS)
    if unknown:
        _warn_once(f"hf rollout ignores unsupported sampling parameters {unknown}")

    room = max_model_len - prompt_len
    if room < 1:
        raise ValueError(
            f"Prompt length ({prompt_len} tokens) leaves no room to generate within max_model_len "
            f"({max_model_len} tokens)."
        )
    if params.get("max_tokens") is not None:
        max_new_tokens = int(params["max_tokens"])
    elif params.get("max_new_tokens") is not None:
        max_new_tokens = int(params["max_new_tokens"])
    else:
        max_new_tokens = min(response_length, prompt_length + response_length - prompt_len)
    max_new_tokens = max(1, min(max_new_tokens, room))

    temperature = float(params.get("temperature", 1.0))
    top_p = float(params.get("top_p", 1.0))
    top_k = int(params.get("top_k", -1) if params.get("top_k") is not None else -1)
    repetition_penalty = float(params.get("repetition_penalty", default_repetition_penalty))
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    stop_ids = tuple(sorted({int(t) for t in (params.get("stop_token_ids") or ())}))
    logit_bias = _request_logit_bias(params.get("logit_bias"), vocab_size)
    settings = SamplingSettings(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k if top_k > 0 else -1,
        repetition_penalty=repetition_penalty,
        ignore_eos=bool(params.get("ignore_eos", default_ignore_eos)),
        stop_token_ids=stop_ids,
        logit_bias=logit_bias,
    )
    return settings, max_new_tokens


def _request_logit_bias(raw: Any, vocab_size: int | None) -> tuple[tuple[int, float], ...] | None:
    """A request's ``logit_bias`` as sorted ``(id, bias)`` pairs; None when the request sets none.

    Ids only (no tokenizer here); checked by :func:`~collabllm_verl.recipe.core.logit_bias.resolve_logit_bias`.
    """
    if raw is None:
        return None
    bias = resolve_logit_bias(
        {"logit_bias": raw}, (), vocab_size=vocab_size or sys.maxsize, setting="sampling_params"
    )
    return tuple(sorted(bias.items()))


def group_by_settings(items: Iterable[T], settings_of: Callable[[T], SamplingSettings]) -> list[list[T]]:
    """Split queued requests into groups with equal :class:`SamplingSettings`, each group in arrival order
    and the groups in order of their first request; every group is one :func:`generate_batch` call."""
    groups: dict[SamplingSettings, list[T]] = {}
    for item in items:
        groups.setdefault(settings_of(item), []).append(item)
    return list(groups.values())


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a dtype name (``"float32"``, ``"bfloat16"``, ``"fp16"``, ...) to a ``torch.dtype``.

    Raises:
        ValueError: unknown name.
    """
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"Unknown rollout dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


def load_causal_lm(
    model_path: str,
    *,
    dtype: torch.dtype,
    load_weights: bool = True,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    override_config: Mapping[str, Any] | None = None,
) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """Load a causal LM for sampling, in eval mode, on the CPU (move it with ``.to(device)`` for a GPU).

    Args:
        model_path: local directory of a Hugging Face model.
        dtype: parameter dtype.
        load_weights: False builds the architecture with random weights (verl's ``load_format=dummy``:
            the trainer sends the real weights before the first rollout).
        attn_implementation: ``"sdpa"`` or ``"eager"``.
        trust_remote_code: passed to ``transformers``.
        override_config: config attributes to override (``actor_rollout_ref.model.override_config``).

    Returns:
        ``(model, eos_token_ids)``: the end-of-sequence ids of the checkpoint's generation config and model
        config. The model's ``generation_config`` is then emptied so that sampling settings and stop
        tokens come only from the request (a checkpoint's suggested top_k/top_p/repetition penalty are
        not applied, and ``ignore_eos`` can really ignore the end-of-sequence token).
    """
    overrides = dict(override_config or {})
    attn_implementation = overrides.pop("attn_implementation", attn_implementation)
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            continue  # nested overrides (e.g. rope scaling dicts) are the trainer's business
        setattr(config, key, value)
    if load_weights:
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            config=config,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
    else:
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )
    eos: set[int] = set()
    for source in (model.generation_config, model.config):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            eos.update([int(value)] if isinstance(value, int) else (int(v) for v in value))
    model.generation_config = GenerationConfig()
    model.eval()
    return model, tuple(sorted(eos))


def end_of_sequence_ids(model_eos_ids: Iterable[int], tokenizer: Any = None) -> tuple[int, ...]:
    """The token ids that end a response: the model's end-of-sequence ids plus the tokenizer's.

    Raises:
        ValueError: neither the model nor the tokenizer defines an end-of-sequence token.
    """
    ids = {int(t) for t in model_eos_ids}
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if eos is not None:
        ids.update([int(eos)] if isinstance(eos, int) else (int(e) for e in eos))
    if not ids:
        raise ValueError(
            "The model defines no eos_token_id; the hf rollout cannot tell when a response ends."
        )
    return tuple(sorted(ids))


class _AbortCriteria(StoppingCriteria):
    """Stops the whole batch as soon as ``should_abort()`` returns True."""

    def __init__(self, should_abort: Callable[[], bool]):
        self.should_abort = should_abort
        self.triggered = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.should_abort():
            self.triggered = True
        return torch.full((input_ids.shape[0],), self.triggered, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_batch(
    model: torch.nn.Module,
    requests: Sequence[GenerationRequest],
    *,
    eos_token_ids: Iterable[int],
    pad_token_id: int,
    logprobs_mode: str = "processed_logprobs",
    should_abort: Callable[[], bool] | None = None,
    logit_bias: Mapping[int, float] | None = None,
    with_log_probs: bool = True,
) -> list[GenerationResult]:
    """Sample continuations of several prompts that share one :class:`SamplingSettings`.

    Prompts are left-padded into one batch and sampled with ``model.generate`` (KV cache); each row is
    then cut at its first end-of-sequence/stop token or at its own ``max_new_tokens``, and its tokens are
    scored with one forward pass (see the module docstring). Runs synchronously; call it from a worker
    thread in async code.

    Args:
        model: a causal LM from :func:`load_causal_lm`.
        requests: at least one request; all with the same ``settings``.
        eos_token_ids: ids that end a response (ignored for rows with ``ignore_eos``).
        pad_token_id: id used for padding (any valid id; padded positions are masked).
        logprobs_mode: ``"processed_logprobs"`` or ``"raw_logprobs"``.
        should_abort: polled after every decoding step; when it returns True all rows stop and are
            returned with ``stop_reason="aborted"``.
        logit_bias: the server's bias: token id -> value added to its logit before temperature scaling (like
            vLLM's and OpenAI's ``logit_bias``); None or empty for the model's own distribution. Requests whose
            settings carry their own ``logit_bias`` use that instead (:meth:`SamplingSettings.bias_or`).
        with_log_probs: False skips the scoring pass (a chat server that returns text only); every
            result's ``log_probs`` is then empty.

    Returns:
        One :class:`GenerationResult` per request, in order.

    Raises:
        ValueError: empty batch, mixed settings, empty prompt or unknown ``logprobs_mode``.
    """
    if not requests:
        raise ValueError("generate_batch needs at least one request")
    settings = requests[0].settings
    if any(r.settings != settings for r in requests):
        raise ValueError("generate_batch requests must share one SamplingSettings")
    if any(len(r.prompt_ids) == 0 for r in requests):
        raise ValueError("every prompt needs at least one token")
    if logprobs_mode not in LOGPROBS_MODES:
        raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
    logit_bias = settings.bias_or(logit_bias)

    device = next(model.parameters()).device
    stop_ids = set(settings.stop_token_ids)
    if not settings.ignore_eos:
        stop_ids.update(int(t) for t in eos_token_ids)

    input_ids, attention_mask = _left_pad([r.prompt_ids for r in requests], pad_token_id, device)
    prompt_width = input_ids.shape[1]
    max_new_tokens = max(r.max_new_tokens for r in requests)

    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not settings.greedy,
        temperature=settings.temperature if not settings.greedy else 1.0,
        top_p=settings.top_p,
        top_k=max(0, settings.top_k),
        repetition_penalty=settings.repetition_penalty,
        eos_token_id=sorted(stop_ids) if stop_ids else None,
        pad_token_id=pad_token_id,
        use_cache=True,
        sequence_bias={(int(t),): float(b) for t, b in logit_bias.items()} if logit_bias else None,
    )
    abort = _AbortCriteria(should_abort or (lambda: False))
    sequences = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=generation_config,
        stopping_criteria=StoppingCriteriaList([abort]),
    )
    sampled = sequences[:, prompt_width:].tolist()

    kept: list[list[int]] = []
    reasons: list[str] = []
    for request, row in zip(requests, sampled, strict=True):
        tokens, reason = _cut_row(row, request.max_new_tokens, stop_ids)
        if abort.triggered and reason != STOP_COMPLETED:
            reason = STOP_ABORTED
        kept.append(tokens)
        reasons.append(reason)

    if not with_log_probs:
        return [GenerationResult(t, [], reason) for t, reason in zip(kept, reasons, strict=True)]
    log_probs = score_tokens(
        model,
        [r.prompt_ids for r in requests],
        kept,
        settings=settings,
        logprobs_mode=logprobs_mode,
        pad_token_id=pad_token_id,
        logit_bias=logit_bias,
    )
    return [GenerationResult(t, lp, reason) for t, lp, reason in zip(kept, log_probs, reasons, strict=True)]


@torch.no_grad()
def score_tokens(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    settings: SamplingSettings,
    logprobs_mode: str = "processed_logprobs",
    pad_token_id: int = 0,
    logit_bias: Mapping[int, float] | None = None,
) -> list[list[float]]:
    """Log-probabilities of each response token given its prompt and the response tokens before it.

    Args:
        model: a causal LM.
        prompts, responses: token ids; ``responses[i]`` continues ``prompts[i]`` (may be empty).
        settings: the sampling settings the responses were drawn with (temperature, top-k, top-p).
        logprobs_mode: ``"processed_logprobs"`` (logit bias, temperature and top-k/top-p applied,
            renormalised) or ``"raw_logprobs"`` (the model's distribution at temperature 1).
        pad_token_id: id used for padding.
        logit_bias: the bias used for sampling (see :func:`generate_batch`); processed mode only.

    Returns:
        ``len(responses[i])`` natural-log probabilities per row.
    """
    if logprobs_mode not in LOGPROBS_MODES:
        raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
    results: list[list[float]] = [[] for _ in responses]
    todo = [i for i, r in enumerate(responses) if len(r) > 0]
    if not todo:
        return results
    device = next(model.parameters()).device
    vocab = int(model.get_output_embeddings().weight.shape[0])
    processed = logprobs_mode == "processed_logprobs"
    warpers = _processed_warpers(settings) if processed else []
    temperature = settings.temperature if (processed and not settings.greedy) else 1.0
    bias = None
    if processed and logit_bias:
        bias = torch.zeros(vocab, device=device)
        for token, value in logit_bias.items():
            bias[int(token)] = float(value)

    longest = max(len(responses[i]) for i in todo)
    rows_per_chunk = max(1, _SCORING_FLOATS_BUDGET // max(1, longest * vocab))
    for start in range(0, len(todo), rows_per_chunk):
        chunk = todo[start : start + rows_per_chunk]
        sequences = [list(prompts[i]) + list(responses[i]) for i in chunk]
        input_ids, attention_mask = _left_pad(sequences, pad_token_id, device)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        width = max(len(responses[i]) for i in chunk)
        # logits at position p predict token p+1: keep the last width+1 positions, drop the final one.
        logits = (
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=width + 1,
                use_cache=False,
            )
            .logits[:, :-1, :]
            .float()
        )
        if bias is not None:
            logits = logits + bias
        logits = logits / temperature
        for row, i in enumerate(chunk):
            n = len(responses[i])
            row_logits = logits[row, width - n :, :]
            for warper in warpers:
                row_logits = warper(None, row_logits)
            targets = input_ids[row, -n:]
            lp = torch.log_softmax(row_logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            results[i] = lp.tolist()
    return results


def load_named_weights(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy trainer weights into ``model`` in place, by Hugging Face parameter name.

    Tied parameters (e.g. ``lm_head.weight`` tied to ``model.embed_tokens.weight``) share storage, so
    either name updates both.

    Args:
        model: the rollout model.
        named_tensors: ``(name, tensor)`` pairs in HF naming, full (unsharded) tensors of the parameter's
            shape; any dtype/device (converted to the parameter's).

    Returns:
        The number of tensors loaded.

    Raises:
        KeyError: a name the model does not have (lists the first few).
        ValueError: a shape mismatch.
    """
    state = model.state_dict(keep_vars=True)
    unknown: list[str] = []
    loaded = 0
    with torch.no_grad():
        for name, tensor in named_tensors:
            target = state.get(name)
            if target is None:
                unknown.append(name)
                continue
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"Weight {name!r}: trainer sent shape {tuple(tensor.shape)}, rollout model has "
                    f"{tuple(target.shape)}"
                )
            target.data.copy_(tensor.to(device=target.device, dtype=target.dtype))
            loaded += 1
    if unknown:
        raise KeyError(f"{len(unknown)} weights unknown to the rollout model, e.g. {unknown[:5]}")
    return loaded


def _left_pad(rows: Sequence[Sequence[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long, device=device)
            attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def _cut_row(row: list[int], budget: int, stop_ids: set[int]) -> tuple[list[int], str]:
    """Cut a sampled row at its first stop token (kept) or at ``budget`` tokens."""
    for j, token in enumerate(row[:budget]):
        if token in stop_ids:
            return row[: j + 1], STOP_COMPLETED
    return row[:budget], STOP_LENGTH


def _processed_warpers(settings: SamplingSettings) -> list:
    if settings.greedy:
        return []
    warpers = []
    if settings.top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=settings.top_k))
    if settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=settings.top_p))
    return warpers


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)
