"""The settings of the conversation dump (``reward.reward_kwargs.conversation_dump``).

A field of :class:`~collabllm_verl.recipe.core.multiturn_reward.RewardSettings`, read by the writer in
:mod:`collabllm_verl.recipe.verl_adapters.conversation_dump`. Kept in its own light module (no litellm, no
metrics) so that processes which only write or read dump files import little. No verl import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collabllm_verl.recipe.core.plain import to_plain

__all__ = ["DumpSettings"]


@dataclass(frozen=True)
class DumpSettings:
    """Where and how much of the conversation dump to write (``reward_kwargs.conversation_dump``, read by
    :mod:`collabllm_verl.recipe.verl_adapters.conversation_dump`).

    Attributes:
        dir: output folder (created on first write).
        keep_last_steps: keep only the files of the newest K steps (K >= 1); None keeps all.
    """

    dir: str
    keep_last_steps: int | None = None

    @classmethod
    def from_mapping(cls, value: Any) -> DumpSettings | None:
        """Validate ``reward_kwargs.conversation_dump``: a mapping ``{dir, keep_last_steps}`` (plain or
        OmegaConf), a folder string, or None.

        Returns:
            None when the dump is off (value None, or an empty ``dir``).

        Raises:
            TypeError: the value is neither a mapping nor a folder string.
            ValueError: unknown keys, or ``keep_last_steps`` not a positive integer.
        """
        where = "reward_kwargs.conversation_dump"
        value = to_plain(value)
        if value is None:
            return None
        if isinstance(value, (str, os.PathLike)):
            value = {"dir": os.fspath(value)}
        if not isinstance(value, Mapping):
            raise TypeError(f"{where} must be a mapping {{dir, keep_last_steps}} or a folder, got {value!r}")
        known = ["dir", "keep_last_steps"]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {known}")
        directory = value.get("dir")
        if not directory:
            return None
        keep = value.get("keep_last_steps")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"{where}.keep_last_steps must be an integer >= 1, got {keep!r}")
        return cls(dir=os.fspath(directory), keep_last_steps=keep)
