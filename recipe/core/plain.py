"""One conversion to plain Python: what configs and records become before they are validated, printed or
written as JSON. No verl import (OmegaConf is optional)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["to_plain"]


def to_plain(value: Any, *, json_safe: bool = False) -> Any:
    """``value`` with OmegaConf containers, pydantic models, dataclasses, numpy arrays, mappings, tuples and sets
    turned into plain ``dict``/``list`` (OmegaConf interpolations resolved); other values are returned as they are.

    Args:
        json_safe: also turn what JSON cannot hold into what it can: NaN and infinities -> None, numpy scalars
            -> Python numbers, any other object -> ``str(obj)``; mapping keys -> ``str``.
    """
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover  (omegaconf is a dependency; kept optional here)
        OmegaConf = None
    if OmegaConf is not None and OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if hasattr(value, "model_dump") and not isinstance(value, type):
        value = value.model_dump()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif getattr(value, "ndim", 0) and hasattr(value, "tolist"):  # numpy arrays: verl's row fields, parquet lists
        value = value.tolist()
    if isinstance(value, Mapping):
        return {(str(k) if json_safe else k): to_plain(v, json_safe=json_safe) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v, json_safe=json_safe) for v in value]
    if not json_safe or value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalars
        return to_plain(value.item(), json_safe=True)
    return str(value)
