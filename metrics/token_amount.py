"""``token_amount``: how long the future conversation is (the efficiency term of the reward).

Used with a negative weight (e.g. ``metric_weights.token_amount=-0.0001``) it penalises long
conversations. The unit is an option because the two references differ:

* ``unit: words`` (default, as the verl recipe): whitespace-separated words (``str.split()``);
* ``unit: tokens`` (as the paper, §3): policy-tokenizer tokens, no special tokens;
* ``roles: all`` (default, as the verl recipe) counts every future message (the trained response and all
  forward-sampled user and assistant turns); ``roles: assistant`` counts assistant messages only (as the
  paper);
* ``tokenizer: policy`` (default) counts ``unit: tokens`` with the policy's tokenizer; ``tokenizer:
  cl100k_base`` uses tiktoken's encoding of that name, as the paper does (litellm ships the file, so it
  works offline), and needs no policy tokenizer (evaluation of API models);
* ``scale`` (default 1) multiplies the count: ``scale: 0.001`` gives thousands of tokens, the paper's
  unit;
* ``scope: future`` (default, as the verl recipe) counts the trained response and what follows it;
  ``scope: session`` counts every message of the conversation, the history before the response included,
  as the authors' data engine scores a candidate on its whole session (docs/fidelity.md 4.1). With
  ``roles: assistant`` the history's assistant turns then count too: the same value for every candidate
  of a turn, so it shifts the scores of a turn alike but changes their size relative to the other metrics.
"""

from __future__ import annotations

import functools
import math

from .registry import MetricContext, register_metric

_UNITS = ("words", "tokens")
_ROLES = ("all", "assistant")
_SCOPES = ("future", "session")


def _check_options(options) -> None:
    if options.get("unit", "words") not in _UNITS:
        raise ValueError(f"token_amount option unit={options.get('unit')!r}; expected one of {_UNITS}")
    if options.get("roles", "all") not in _ROLES:
        raise ValueError(f"token_amount option roles={options.get('roles')!r}; expected one of {_ROLES}")
    if options.get("scope", "future") not in _SCOPES:
        raise ValueError(f"token_amount option scope={options.get('scope')!r}; expected one of {_SCOPES}")
    tokenizer = options.get("tokenizer", "policy")
    if not isinstance(tokenizer, str) or not tokenizer:
        raise ValueError(f"token_amount option tokenizer={tokenizer!r}; expected 'policy' or a tiktoken encoding name")
    if tokenizer != "policy":
        _tiktoken_encoding(tokenizer)
    scale = options.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"token_amount option scale={scale!r}; expected a finite number > 0")


@functools.lru_cache(maxsize=4)
def _tiktoken_encoding(name: str):
    """tiktoken's encoding ``name``, read from the copy litellm bundles (no download)."""
    import tiktoken
    from litellm.litellm_core_utils import default_encoding  # noqa: F401  (points tiktoken at litellm's files)

    try:
        return tiktoken.get_encoding(name)
    except ValueError as exc:
        raise ValueError(f"token_amount option tokenizer={name!r}: {exc}") from None


@register_metric(
    "token_amount",
    value_range=(0.0, float("inf")),
    unit="whitespace words of all future messages (options: unit=tokens, roles=assistant)",
    description="length of the trained response plus the forward-sampled turns",
    options={
        "unit": "'words' (default, str.split()) or 'tokens' (policy tokenizer, no special tokens)",
        "roles": "'all' (default, every future message) or 'assistant' (assistant messages only)",
        "tokenizer": "'policy' (default, the policy tokenizer) or a tiktoken encoding such as 'cl100k_base'",
        "scale": "multiplier of the count (default 1; 0.001 for thousands of tokens)",
        "scope": "'future' (default, the response and what follows) or 'session' (every message, history included)",
    },
    validate=_check_options,
)
async def token_amount(ctx: MetricContext) -> float:
    """Count words or tokens of ``ctx.future_messages`` (``scope: session``: of ``ctx.messages``); returns a
    float >= 0.

    Raises:
        ValueError: an option value is not one of the documented ones, or ``unit=tokens`` without a
            policy tokenizer.
    """
    _check_options(ctx.options)
    unit = ctx.options.get("unit", "words")
    roles = ctx.options.get("roles", "all")
    counted = ctx.messages if ctx.options.get("scope", "future") == "session" else ctx.future_messages
    texts = [str(m.get("content") or "") for m in counted if roles == "all" or m.get("role") == "assistant"]
    scale = float(ctx.options.get("scale", 1))
    if unit == "words":
        return scale * sum(len(text.split()) for text in texts)
    tokenizer = ctx.options.get("tokenizer", "policy")
    if tokenizer != "policy":
        encoding = _tiktoken_encoding(tokenizer)
        return scale * sum(len(encoding.encode(text, disallowed_special=())) for text in texts)
    if ctx.tokenizer is None:
        raise ValueError(
            "token_amount with unit=tokens needs the policy tokenizer, but none was given "
            "(set the option tokenizer=cl100k_base to count with tiktoken instead)"
        )
    return scale * sum(len(ctx.tokenizer.encode(text, add_special_tokens=False)) for text in texts)
