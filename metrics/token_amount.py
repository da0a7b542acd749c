"""``token_amount``: how long the future conversation is (the efficiency term of the reward).

Used with a negative weight (e.g. ``metric_weights.token_amount=-0.0001``) it penalises long
conversations. The unit is an option because the two references differ:

* ``unit: words`` (default, as the verl recipe): whitespace-separated words (``str.split()``);
* ``unit: tokens`` (as the paper, §3): policy-tokenizer tokens, no special tokens;
* ``roles: all`` (default, as the verl recipe) counts every future message (the trained response and all
  forward-sampled user and assistant turns); ``roles: assistant`` counts assistant messages only (as the
  paper). The paper reports thousands of tokens; express that through the weight.
"""

from __future__ import annotations

from .registry import MetricContext, register_metric

_UNITS = ("words", "tokens")
_ROLES = ("all", "assistant")


def _check_options(options) -> None:
    if options.get("unit", "words") not in _UNITS:
        raise ValueError(f"token_amount option unit={options.get('unit')!r}; expected one of {_UNITS}")
    if options.get("roles", "all") not in _ROLES:
        raise ValueError(f"token_amount option roles={options.get('roles')!r}; expected one of {_ROLES}")


@register_metric(
    "token_amount",
    value_range=(0.0, float("inf")),
    unit="whitespace words of all future messages (options: unit=tokens, roles=assistant)",
    description="length of the trained response plus the forward-sampled turns",
    options={
        "unit": "'words' (default, str.split()) or 'tokens' (policy tokenizer, no special tokens)",
        "roles": "'all' (default, every future message) or 'assistant' (assistant messages only)",
    },
    validate=_check_options,
)
async def token_amount(ctx: MetricContext) -> float:
    """Count words or tokens of ``ctx.future_messages``; returns a float >= 0.

    Raises:
        ValueError: an option value is not one of the documented ones, or ``unit=tokens`` without a
            policy tokenizer.
    """
    _check_options(ctx.options)
    unit = ctx.options.get("unit", "words")
    roles = ctx.options.get("roles", "all")
    texts = [
        str(m.get("content") or "")
        for m in ctx.future_messages
        if roles == "all" or m.get("role") == "assistant"
    ]
    if unit == "words":
        return float(sum(len(text.split()) for text in texts))
    if ctx.tokenizer is None:
        raise ValueError("token_amount with unit=tokens needs the policy tokenizer, but none was given")
    return float(sum(len(ctx.tokenizer.encode(text, add_special_tokens=False)) for text in texts))
