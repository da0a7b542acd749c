"""One way to validate user settings and producer payloads: pydantic models plus readable errors.

Pydantic's own :class:`pydantic.ValidationError` text is long (one block per error, links to its docs).
:func:`validate` turns it into one short message per error that names the offending key the way the user
wrote it, e.g. ``reward_kwargs.metric_weights.accuracy: Input should be a finite number (got 'abc')`` or
``extra_fields['collabllm']['future_turns']: Input should be a valid list (got 3)``.

Nothing here imports verl.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError

__all__ = ["Finite", "NonNegative", "NotText", "check_backoff_order", "key_path", "validate"]

M = TypeVar("M", bound=BaseModel)


def _number_check(message: str):
    def check(value: Any) -> Any:
        # pydantic's lax mode would read True as 1 and "3" as 3; settings and counters must be numbers.
        if isinstance(value, (bool, str, bytes)):
            raise ValueError(message)
        return value

    return BeforeValidator(check)


def _finite(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("Input should be a finite number")
    return value


NotText = _number_check("Input should be a number")
"""Annotation: reject booleans and text where a number is expected."""

Finite = Annotated[float, _number_check("Input should be a finite number"), AfterValidator(_finite)]
"""A finite real number (int or float, not bool or text)."""

NonNegative = Annotated[Finite, Field(ge=0)]
"""A finite real number >= 0."""


def check_backoff_order(model: BaseModel, initial: str, longest: str) -> BaseModel:
    """For a model validator: the longest back-off (field ``longest``, seconds) must not be shorter than the
    first one (field ``initial``).

    Raises:
        ValueError: ``<longest> (<value>) must be >= <initial> (<value>)``.
    """
    if getattr(model, longest) < getattr(model, initial):
        raise ValueError(
            f"{longest} ({getattr(model, longest)}) must be >= {initial} ({getattr(model, initial)})"
        )
    return model


def key_path(where: str, loc: tuple, style: Literal["dot", "item"] = "dot") -> str:
    """``where`` followed by a pydantic error location: ``a.b.c`` (dot) or ``a['b'][0]`` (item)."""
    parts = [str(p) for p in loc if p not in ("function-after", "function-before")]
    if style == "item":
        return where + "".join(f"[{p}]" if p.isdigit() else f"[{p!r}]" for p in parts)
    return ".".join([where, *parts]) if parts else where


def _describe(error: Mapping[str, Any], where: str, style: str) -> str:
    loc = error["loc"]  # by alias: the keys the user wrote
    path = key_path(where, loc, style)  # type: ignore[arg-type]
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown {key_path(where, loc[:-1], style)} key {str(loc[-1])!r}"
    if kind == "missing":
        return f"{path}: required"
    message = str(error["ctx"]["error"]) if kind == "value_error" and "ctx" in error else error["msg"]
    if message.startswith(where):  # a nested validator already named the key
        return message
    value = error.get("input")
    if isinstance(value, (Mapping, list, tuple, set)):  # containers: long, and may hold credentials
        return f"{path}: {message}"
    text = repr(value)
    return f"{path}: {message} (got {text[:80]}{'...' if len(text) > 80 else ''})"


def validate(
    model: type[M],
    data: Any,
    *,
    where: str,
    style: Literal["dot", "item"] = "dot",
    known: Any = None,
) -> M:
    """``model.model_validate(data)`` with one readable message per error.

    Args:
        model: the pydantic model.
        data: the mapping to validate.
        where: how the user names ``data`` (``"reward_kwargs"``, ``"extra_fields['collabllm']"``).
        style: ``"dot"`` (``where.key.sub``) or ``"item"`` (``where['key'][0]``) key paths.
        known: listed after an unknown-key error as the accepted keys (default: the model's input names).

    Raises:
        TypeError: every error is a wrong container or type (``*_type`` errors: a list where a mapping was
            expected, ...).
        ValueError: otherwise; one line per error, each naming the key.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e, where, style) for e in exc.errors()]
        if any(e["type"] == "extra_forbidden" for e in exc.errors()):
            names = known or [f.alias or name for name, f in model.model_fields.items()]
            lines.append(f"known keys: {sorted(names)}")
        error = TypeError if all(e["type"].endswith("_type") for e in exc.errors()) else ValueError
        raise error("; ".join(lines)) from None
