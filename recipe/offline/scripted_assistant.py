"""Offline stand-in for an assistant model: deterministic, rule-based replies for tests and the CPU path.

It is NOT a language model and cannot solve anything; it exists so that data generation (candidate
replies), evaluation (a scripted policy) and their tests can run the whole path (litellm over real HTTP,
the user simulator, the judges) without an API key. Importing this module registers the responder
``scripted-assistant`` on the local server (:mod:`collabllm_verl.recipe.offline.server`); use it with
``model="openai/scripted-assistant"`` and ``api_base`` = the server's URL.

Its behaviour depends on the system prompt, so that candidates generated with and without a proactive
instruction differ in what the offline judges measure (:mod:`.scripted_judges`):

* **collaborative mode**: a system message mentions questions (the project's assistant prompt and the data
  engine's proactive instruction both do). If the latest user message looks underspecified (it ends with
  ``...`` or has fewer than :data:`SHORT_REQUEST_WORDS` words) and no assistant turn has asked a question
  yet, it asks one clarifying question (with a ``?`` and a suggestion phrase); otherwise it answers and
  adds a suggestion for a next step.
* **direct mode** (no such system message): it always answers right away, with no question and no
  suggestion.

An answer restates the start of the request and ends with ``\\boxed{N}``, where N is the last number
written in the user's messages (``0`` when there is none): a guess, not a solution. Replies never contain
``?`` except the clarifying question, so the scripted user ends the chat after an answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from collabllm_verl.recipe.offline.server import register_responder

__all__ = ["LOG_PREFIX", "SHORT_REQUEST_WORDS", "scripted_assistant_reply", "scripted_assistant_responder"]

logger = logging.getLogger(__name__)

LOG_PREFIX = "[offline stand-in: scripted-assistant]"
SHORT_REQUEST_WORDS = 15  # a user message with fewer words counts as underspecified
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _text(message: Mapping) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _looks_underspecified(text: str) -> bool:
    stripped = text.strip()
    return stripped.endswith(("...", "\u2026")) or len(stripped.split()) < SHORT_REQUEST_WORDS


def scripted_assistant_reply(messages: list[Mapping]) -> str:
    """The reply to a chat (rules in the module docstring).

    Args:
        messages: OpenAI-style chat messages; system messages select the mode.

    Raises:
        ValueError: the chat holds no user message.
    """
    system = " ".join(_text(m) for m in messages if m.get("role") == "system").lower()
    turns = [m for m in messages if m.get("role") in ("user", "assistant")]
    user_texts = [_text(m) for m in turns if m.get("role") == "user"]
    if not user_texts:
        raise ValueError("scripted-assistant: the chat holds no user message")
    collaborative = "question" in system
    asked = any("?" in _text(m) for m in turns if m.get("role") == "assistant")
    request = user_texts[-1].strip()
    topic = " ".join(request.split()[:8])
    if collaborative and not asked and _looks_underspecified(request):
        return (
            f'You mentioned "{topic}". Before I start, could you send the complete request, with every '
            "number and condition it involves? I suggest also saying how you want the answer presented."
        )
    numbers = _NUMBER.findall(" ".join(user_texts))
    guess = numbers[-1] if numbers else "0"
    answer = f'Here is my answer to "{topic}". Working through it step by step gives \\boxed{{{guess}}}.'
    if collaborative:
        answer += " I suggest checking the last step against your own notes."
    return answer


def scripted_assistant_responder(messages: list[dict], request: Mapping) -> str:
    """Local-server responder for model ``scripted-assistant``: returns the reply text.

    Raises:
        ValueError: the chat holds no user message (the server answers HTTP 400).
    """
    reply = scripted_assistant_reply(messages)
    logger.debug("%s %d messages -> %.60r", LOG_PREFIX, len(messages), reply)
    return reply


register_responder("scripted-assistant", scripted_assistant_responder)
