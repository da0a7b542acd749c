"""Fixed logit biases of a rollout, as ``{token_id: bias}``: the one reading of the recipe's bias settings.

Two consumers read the same settings: the ``hf`` rollout server adds them to every request's logits
(``actor_rollout_ref.rollout.engine_kwargs.hf.{logit_bias,eos_logit_bias}``), and the CollabLLM agent loop
sends them as vLLM's ``logit_bias`` sampling parameter (``actor_rollout_ref.rollout.custom.{logit_bias,
eos_logit_bias}``, which the vLLM CPU preset points at the same values). No verl import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["resolve_logit_bias"]


def _token_id(key: Any, tokenizer: Any, name: str) -> int:
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        return int(key)
    if tokenizer is None:
        raise ValueError(f"{name} key {key!r} is text but the model has no tokenizer")
    ids = tokenizer.encode(str(key), add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{name} key {key!r} encodes to {len(ids)} tokens {ids}; need exactly 1")
    return int(ids[0])


def resolve_logit_bias(
    settings: Mapping[str, Any],
    eos_token_ids: Iterable[int],
    *,
    vocab_size: int,
    tokenizer: Any = None,
    setting: str = "engine_kwargs.hf",
    prefix: str = "",
) -> dict[int, float]:
    """Combine ``settings[prefix + "logit_bias"]`` and ``settings[prefix + "eos_logit_bias"]`` into
    ``{token_id: bias}``.

    Args:
        settings: a mapping with the optional keys ``logit_bias`` (``{token: bias}`` or a list of
            ``[token, bias]`` pairs; a token is an id or text the tokenizer encodes as exactly one token) and
            ``eos_logit_bias`` (added to every id of ``eos_token_ids``). Other keys are ignored.
        eos_token_ids: the ids that end a response.
        vocab_size: the model's vocabulary size (ids must lie in ``[0, vocab_size)``).
        tokenizer: turns text keys into ids; may be None when every key is an id.
        setting: the config path of ``settings``, for error messages.
        prefix: the keys' prefix (``"future_"`` for the agent loop's forward-sampled replies).

    Returns:
        ``{token_id: bias}`` (logit units, added before sampling); empty when nothing is set.

    Raises:
        ValueError: a malformed pair, text that is not one token, an id outside the vocabulary, or a
            non-finite bias.
    """
    bias: dict[int, float] = {}
    name = f"{setting}.{prefix}logit_bias"
    raw = settings.get(f"{prefix}logit_bias") or {}
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise ValueError(f"{name} entries must be [token, bias] pairs, got {pair!r}")
        key, value = pair
        token = _token_id(key, tokenizer, name)
        bias[token] = bias.get(token, 0.0) + float(value)
    eos_bias = float(settings.get(f"{prefix}eos_logit_bias") or 0.0)
    if eos_bias:
        for token in eos_token_ids:
            bias[int(token)] = bias.get(int(token), 0.0) + eos_bias
    for token, value in bias.items():
        if not 0 <= token < vocab_size or not math.isfinite(value):
            raise ValueError(
                f"{setting} logit bias {token}: {value} is invalid (vocabulary size {vocab_size})"
            )
    return bias
