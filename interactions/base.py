"""The interaction API: an environment that answers the policy's turns in a multi-turn rollout.

verl 0.9.1 no longer ships ``verl.interactions`` (docs/design.md §3), so the API lives in this project
with the same contract verl's interactions had: one interaction object serves many conversations at once,
each identified by an ``instance_id``, and all per-conversation state is keyed by that id.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

__all__ = ["BaseInteraction"]


class BaseInteraction(ABC):
    """Base class of interactions (user simulators, environments).

    Args:
        config: the ``config`` mapping of the interaction's YAML entry; the loader adds ``name``.

    Lifecycle per conversation: ``start_interaction`` -> ``generate_response`` (once per policy turn)
    -> optionally ``calculate_score`` -> ``finalize_interaction``. All methods are ``async`` and must be
    safe to call concurrently for different ``instance_id`` values.
    """

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)
        self.name: str = self.config.get("name", type(self).__name__)

    async def start_interaction(self, instance_id: str | None = None, **interaction_kwargs: Any) -> str:
        """Begin a conversation and return its ``instance_id`` (a new UUID string when None is given).

        ``interaction_kwargs`` come from the dataset row (``extra_info.interaction_kwargs``)."""
        return instance_id if instance_id is not None else str(uuid.uuid4())

    @abstractmethod
    async def generate_response(
        self, instance_id: str, messages: list[dict], **kwargs: Any
    ) -> tuple[bool, str, float, dict[str, Any]]:
        """Answer the conversation so far.

        Args:
            instance_id: id returned by :meth:`start_interaction`.
            messages: the full chat so far, ``[{"role": ..., "content": ...}, ...]``.

        Returns:
            ``(should_terminate, response, score, metadata)``: whether the conversation ends now, the next
            user-side message (may be empty when terminating), a turn-level score, and free-form metadata.
        """

    async def calculate_score(self, instance_id: str, **kwargs: Any) -> float:
        """Conversation-level score of the interaction itself (0.0 unless a subclass defines one)."""
        return 0.0

    async def finalize_interaction(self, instance_id: str, **kwargs: Any) -> None:
        """Release the conversation's state. Must be idempotent."""
        return None
