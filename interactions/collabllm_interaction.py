"""CollabLLM's user simulator as an interaction: an LLM role-playing the user who knows the hidden goal.

Used for forward sampling (CollabLLM paper, section 3.2; docs/design.md §1): after the trained response,
the simulator writes the user's next turns until it sends the termination signal or the agent loop's
turn budget ends. One object serves every conversation of a worker process concurrently; the hidden goal
and all other per-conversation state are keyed by ``instance_id``, so a simulator request contains only
its own conversation's goal. Every LLM call goes through :mod:`collabllm_verl.recipe.core.llm_client`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collabllm_verl.interactions.base import BaseInteraction
from collabllm_verl.interactions.simulator_prompt import SIMULATOR_REQUIRED_KEYS, build_simulator_messages
from collabllm_verl.recipe.core.llm_client import LLMCallError, acomplete_json
from collabllm_verl.recipe.core.settings import SimulatorSettings

__all__ = ["PURPOSE", "CollabLLMInteraction"]

logger = logging.getLogger(__name__)

PURPOSE = "user_simulator"  # label of this module's calls in llm_stats() and logs

@dataclass
class _Conversation:
    goal: str
    task_desc: str
    turns: int = 0  # simulator answers produced so far


class CollabLLMInteraction(BaseInteraction):
    """User simulator for CollabLLM forward sampling.

    Config keys: those of :class:`~collabllm_verl.recipe.core.settings.SimulatorSettings` (all optional,
    its defaults apply), plus ``name`` (the interaction's name, set by the loader).

    ``interaction_kwargs`` of :meth:`start_interaction`: ``single_turn_prompt`` (required, the hidden
    goal; may include the reference answer) and ``task_desc`` (optional short task description).

    Raises:
        ValueError: unknown config key or invalid value (the message names the key).
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        settings = SimulatorSettings.from_mapping(
            {k: v for k, v in self.config.items() if k != "name"}, where="user simulator config"
        )
        self.settings = settings
        self.llm = settings.to_llm(where="user simulator config")
        self.termination_signal = settings.termination_signal
        self.enable_log = settings.enable_log
        self._conversations: dict[str, _Conversation] = {}

    def __repr__(self) -> str:
        return f"CollabLLMInteraction(name={self.name!r}, llm={self.llm!r})"

    async def start_interaction(self, instance_id: str | None = None, **interaction_kwargs: Any) -> str:
        """Register a conversation with its hidden goal; returns its ``instance_id``.

        Raises:
            ValueError: ``single_turn_prompt`` missing/empty, or ``instance_id`` already active.
        """
        goal = interaction_kwargs.get("single_turn_prompt")
        if not isinstance(goal, str) or not goal.strip():
            raise ValueError(
                "CollabLLMInteraction.start_interaction: interaction_kwargs['single_turn_prompt'] "
                f"(the hidden goal) must be a non-empty string, got {goal!r:.60}"
            )
        task_desc = interaction_kwargs.get("task_desc") or ""
        if not isinstance(task_desc, str):
            raise ValueError(f"interaction_kwargs['task_desc'] must be a string, got {type(task_desc).__name__}")
        instance_id = await super().start_interaction(instance_id)
        if instance_id in self._conversations:
            raise ValueError(f"CollabLLMInteraction: instance_id {instance_id!r} is already active")
        self._conversations[instance_id] = _Conversation(goal=goal, task_desc=task_desc)
        return instance_id

    def _validate(self, answer: dict) -> str | None:
        return None if answer["response"].strip() else "empty 'response'"

    async def generate_response(
        self, instance_id: str, messages: list[dict], **kwargs: Any
    ) -> tuple[bool, str, float, dict[str, Any]]:
        """Ask the simulator for the user's next message.

        Args:
            instance_id: id from :meth:`start_interaction`.
            messages: the chat so far (system messages and ``<think>`` blocks are removed before the
                simulator sees it).

        Returns:
            ``(should_terminate, response, 0.0, metadata)``. ``should_terminate`` is True when the message
            contains the termination signal (``metadata["terminated_by_user"]``) or when the simulator
            failed after its retries (``metadata["simulator_failed"]`` True, ``metadata["error"]`` the
            reason, ``response`` empty). The turn score is always 0.0: rewards come from the metrics.

        Raises:
            KeyError: unknown ``instance_id``.
        """
        conv = self._conversations.get(instance_id)
        if conv is None:
            raise KeyError(f"CollabLLMInteraction: unknown instance_id {instance_id!r}; call start_interaction first")
        prompt = build_simulator_messages(
            goal=conv.goal, task_desc=conv.task_desc, history=messages, termination_signal=self.termination_signal
        )
        try:
            answer = await acomplete_json(
                prompt, self.llm, required=SIMULATOR_REQUIRED_KEYS, purpose=PURPOSE, validate=self._validate
            )
        except LLMCallError as exc:
            logger.warning("user simulator failed for %s (turn %d): %s", instance_id, conv.turns + 1, exc.reason)
            return True, "", 0.0, {
                "simulator_failed": True,
                "error": exc.reason,
                "attempts": exc.attempts,
                "terminated_by_user": False,
                "turn": conv.turns,
            }
        conv.turns += 1
        response = answer["response"].strip()
        terminated = self.termination_signal in response
        if self.enable_log:
            logger.info("user simulator %s turn %d%s: %.300s", instance_id, conv.turns,
                        " (terminate)" if terminated else "", response)
        return terminated, response, 0.0, {
            "simulator_failed": False,
            "terminated_by_user": terminated,
            "turn": conv.turns,
        }

    async def finalize_interaction(self, instance_id: str, **kwargs: Any) -> None:
        """Forget the conversation (idempotent)."""
        self._conversations.pop(instance_id, None)
