"""Command-line flags generated from a pydantic settings model: one home for every default and help text.

Each chosen field of the model becomes ``--<field>``: its default is the field's default, its help is the
field's docstring (the model sets ``use_attribute_docstrings=True``) followed by ``(default X)``. The type
of the flag follows the annotation: ``int``, ``float`` and ``str`` (optional or not) are parsed as such, a
``Literal`` gives ``choices``, anything else (paths, lists) is passed as text for the model to convert. A
``bool`` field whose default is False is a switch ``--<field>``; one whose default is True is switched off
by ``--no_<field>`` (help ``turn off: <docstring>``). The parsed values are validated by the model, and its
errors name the flags. No verl import.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["add_settings_arguments", "flag_name", "settings_from_args"]

M = TypeVar("M", bound=BaseModel)
_SCALARS = (int, float, str)


def flag_name(model: type[BaseModel], field: str) -> str:
    """The flag of a field: ``--<field>``, or ``--no_<field>`` for a bool field whose default is True."""
    info = model.model_fields[field]
    return f"--no_{field}" if info.annotation is bool and info.default is True else f"--{field}"


def _value_type(annotation: Any) -> Any:
    """The annotation without ``None`` (``int | None`` -> ``int``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return members[0] if len(members) == 1 else str
    return annotation


def _argument(name: str, info: FieldInfo) -> dict[str, Any]:
    """``add_argument`` keyword arguments of one field."""
    text = " ".join((info.description or "").split()).replace("%", "%%")
    if info.annotation is bool:
        if info.default is True:
            return {"dest": name, "action": "store_false", "default": True, "help": f"turn off: {text}"}
        return {"dest": name, "action": "store_true", "default": False, "help": text}
    kind = _value_type(info.annotation)
    kwargs: dict[str, Any] = {"dest": name, "help": text}
    if typing.get_origin(kind) is Literal:
        kwargs["choices"] = list(typing.get_args(kind))
        kind = type(kwargs["choices"][0])
    kwargs["type"] = kind if kind in _SCALARS else str
    if info.is_required():
        kwargs["required"] = True
        return kwargs
    default = info.get_default(call_default_factory=True)
    kwargs["default"] = default
    if default not in (None, "", []):
        kwargs["help"] = f"{text} (default {default})"
    return kwargs


def add_settings_arguments(
    parser: argparse.ArgumentParser, model: type[BaseModel], groups: Mapping[str, Sequence[str]]
) -> None:
    """Add one flag per listed field of ``model``, in argument groups.

    Args:
        parser: the CLI's parser.
        model: the settings model (fields with docstrings).
        groups: group title -> field names, in the order the help lists them.

    Raises:
        KeyError: a listed name is not a field of ``model``.
    """
    for title, names in groups.items():
        group = parser.add_argument_group(title)
        for name in names:
            info = model.model_fields[name]
            group.add_argument(flag_name(model, name), **_argument(name, info))


def _describe(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" and "ctx" in error else error["msg"]
    if not loc:
        return message
    flag = flag_name(model, loc[0]) if loc[0] in model.model_fields and len(loc) == 1 else f"--{loc[-1]}"
    value = error.get("input")
    shown = "" if isinstance(value, (Mapping, list, tuple)) else f" (got {value!r})"
    return f"{flag}: {message}{shown}"


def settings_from_args(model: type[M], args: argparse.Namespace, **values: Any) -> M:
    """Build ``model`` from the parsed flags: every field found in ``args``, then ``values`` on top.

    Args:
        model: the settings model.
        args: parsed flags.
        **values: fields that are not flags (resolved objects), or that override a flag.

    Raises:
        ValueError: a value the model refuses; one ``--flag: reason (got value)`` per error, ``; ``-joined.
    """
    data = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    data.update(values)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValueError("; ".join(_describe(model, e) for e in exc.errors())) from None
