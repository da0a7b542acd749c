"""The turn-by-turn search that builds one multi-turn conversation from a single-turn task.

1. The user simulator writes the opener (:func:`.openers.write_opener`).
2. While the conversation is shorter than ``max_total_turns`` messages: K candidates are proposed and
   scored (:func:`.candidates.scored_candidates`); the best one (first on ties) is appended; the next user
   turn is the message right after the reply in the best candidate's **longest** forward-sampled
   conversation (the last of equally long ones, as the original), so the user's reaction is one the
   simulator really wrote to that reply.
3. The conversation stops when that user message carries the termination signal, when no forward-sampled
   conversation continued past the reply (the simulator ended every one right away), or at
   ``max_total_turns``.

Every turn keeps all its candidates (one output row each); see :mod:`.schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collabllm_verl.interactions.simulator_prompt import strip_reasoning
from collabllm_verl.recipe.core.forward_sampling import END_TERMINATED

from .candidates import ScoredCandidate, best_index, scored_candidates
from .config import Engine
from .openers import write_opener
from .task import EngineTask

__all__ = [
    "END_MAX_TOTAL_TURNS",
    "END_NO_USER_TURN",
    "ConversationRecord",
    "TurnRecord",
    "build_conversation",
    "next_user_turn",
]

END_MAX_TOTAL_TURNS = "max_total_turns"  # the conversation reached max_total_turns messages
END_NO_USER_TURN = "no_user_turn"  # no forward-sampled conversation of the best candidate went on
# (besides recipe.forward_sampling.END_TERMINATED: the next user turn was the termination signal)


@dataclass
class TurnRecord:
    """One assistant turn of a built conversation.

    Attributes:
        prompt: the conversation before the turn (no system messages), ending with a user message.
        candidates: the K scored candidates.
        best: index of the candidate that continued the conversation.
    """

    prompt: list[dict[str, str]]
    candidates: list[ScoredCandidate]
    best: int


@dataclass
class ConversationRecord:
    """A built conversation.

    Attributes:
        turns: its assistant turns, in order.
        messages: the final conversation (the best candidates, reasoning removed; a terminating user
            message is kept at the end).
        end_reason: ``terminated``, ``max_total_turns`` or ``no_user_turn``.
    """

    turns: list[TurnRecord] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    end_reason: str = END_MAX_TOTAL_TURNS


def next_user_turn(candidate: ScoredCandidate, position: int) -> tuple[str | None, str | None]:
    """The user message that follows the chosen reply, taken from its longest forward-sampled conversation
    (the last of equally long ones, as the original data engine).

    Args:
        candidate: the chosen candidate.
        position: index of the message after the reply (the length of the conversation with the reply).

    Returns:
        ``(text, None)`` when the longest conversation has a user message there; otherwise ``(None,
        reason)``: ``terminated`` when that conversation ended with the simulator's termination signal,
        else ``no_user_turn``.
    """
    if not candidate.sessions:
        return None, END_NO_USER_TURN
    longest = max(reversed(range(len(candidate.sessions))), key=lambda i: len(candidate.sessions[i]))
    session = candidate.sessions[longest]
    if len(session) > position and session[position].get("role") == "user":
        return str(session[position]["content"]), None
    if candidate.end_reasons and candidate.end_reasons[longest] == END_TERMINATED:
        return None, END_TERMINATED
    return None, END_NO_USER_TURN


async def build_conversation(engine: Engine, task: EngineTask) -> ConversationRecord:
    """Build one conversation for ``task`` (the procedure of the module docstring).

    Raises:
        TaskFailure: the simulator failed (opener or forward sampling) or a metric failed on every
            forward-sampled conversation of a candidate.
        LLMCallError: the assistant model failed after the LLM layer's retries.
    """
    signal = str(getattr(engine.interaction, "termination_signal", "") or "")
    record = ConversationRecord(messages=[{"role": "user", "content": await write_opener(engine.interaction, task)}])
    messages = record.messages
    while True:
        candidates = await scored_candidates(engine, task, list(messages))
        best = best_index(candidates)
        record.turns.append(TurnRecord(prompt=[dict(m) for m in messages], candidates=candidates, best=best))
        messages.append({"role": "assistant", "content": strip_reasoning(candidates[best].completion)})
        if len(messages) >= engine.config.max_total_turns:
            record.end_reason = END_MAX_TOTAL_TURNS
            return record
        text, reason = next_user_turn(candidates[best], len(messages))
        if text is None:
            record.end_reason = str(reason)
            return record
        messages.append({"role": "user", "content": text})
        if signal and signal in text:
            record.end_reason = END_TERMINATED
            return record
        if len(messages) >= engine.config.max_total_turns:
            record.end_reason = END_MAX_TOTAL_TURNS
            return record
