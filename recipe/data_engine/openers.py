"""The opener: the user simulator's first message of a conversation, written from an empty chat.

With an empty history the simulator writes the request a real user would start with: short, vague or
incomplete (docs/design.md §1, the simulator's contract). One simulator call per task; the
interaction's own lifecycle (``start_interaction`` / ``generate_response`` / ``finalize_interaction``)
keeps concurrent tasks apart.
"""

from __future__ import annotations

from typing import Any

from .task import EngineTask, TaskFailure

__all__ = ["write_opener"]


async def write_opener(interaction: Any, task: EngineTask) -> str:
    """Ask the user simulator for the first user message of ``task``'s conversation.

    Args:
        interaction: a ``BaseInteraction`` (the user simulator, e.g. ``CollabLLMInteraction``).
        task: the task (its hidden goal and task description go to the simulator).

    Returns:
        The opener (non-empty text).

    Raises:
        TaskFailure: the simulator failed after the LLM layer's retries, sent the termination signal
            instead of a request, or wrote nothing.
    """
    instance_id = await interaction.start_interaction(instance_id=None, **task.interaction_kwargs)
    try:
        terminate, text, _score, metadata = await interaction.generate_response(instance_id, [])
    finally:
        await interaction.finalize_interaction(instance_id)
    metadata = metadata if isinstance(metadata, dict) else {}
    if metadata.get("simulator_failed"):
        raise TaskFailure(f"user simulator failed to write the opener: {metadata.get('error') or 'unknown error'}")
    if terminate:
        raise TaskFailure("user simulator ended the chat instead of writing an opener")
    if not str(text).strip():
        raise TaskFailure("user simulator wrote an empty opener")
    return str(text).strip()
