"""Offline stand-in for the user simulator: a deterministic, rule-based "user" for tests and the CPU quick start.

It is NOT a language model. The local server (:mod:`collabllm_verl.recipe.offline.server`) routes
requests whose model is ``scripted-user`` here. It reads the prompt written by
:func:`collabllm_verl.interactions.simulator_prompt.build_simulator_messages` and answers in the same
JSON format a real simulator LLM is asked for, following these rules, in order:

1. no assistant message yet -> a vague opener: the first words of the goal (about 40 %, 3 to 12 words);
2. ``max_turns`` user messages already sent -> the termination signal;
3. the assistant's last message is empty or contains ``?`` (a clarifying question) -> the full goal;
4. otherwise (the assistant gave an answer) -> the termination signal.

``max_turns`` (user messages per conversation, counting the first) defaults to
``DEFAULTS["max_turns"]`` (3) and can be set per request with the request field
``"scripted_user": {"max_turns": N}`` (litellm: ``extra_body={"scripted_user": {"max_turns": N}}``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from collabllm_verl.interactions.simulator_prompt import parse_simulator_prompt

__all__ = ["DEFAULTS", "scripted_user_reply", "scripted_user_responder", "vague_opener"]

logger = logging.getLogger(__name__)

DEFAULTS: dict = {"max_turns": 3}
LOG_PREFIX = "[offline stand-in: scripted-user]"


def vague_opener(goal: str) -> str:
    """The first user message: a partial version of the goal (first ~40 % of its words, 3-12 words)."""
    words = goal.split()
    keep = max(3, min(12, round(len(words) * 0.4)))
    partial = " ".join(words[:keep])
    suffix = " ..." if keep < len(words) else ""
    return f"hi, I need some help with this: {partial}{suffix}"


def scripted_user_reply(goal: str, history: list[dict], termination_signal: str, max_turns: int) -> dict:
    """Apply the rules of the module docstring; returns ``{"current_answer", "thought", "response"}``.

    Args:
        goal: the hidden goal text.
        history: the chat so far, ``[{"role": "user"|"assistant", "content": str}, ...]``.
        termination_signal: the string that ends the chat.
        max_turns: user messages per conversation (>= 1) after which the user always terminates.
    """
    user_turns = sum(1 for m in history if m["role"] == "user")
    last_assistant = next((m["content"] for m in reversed(history) if m["role"] == "assistant"), None)
    summary = "none yet" if last_assistant is None else last_assistant.strip()[:120]
    if last_assistant is None:
        thought, response = "Start vague and let the assistant ask.", vague_opener(goal)
    elif user_turns >= max_turns:
        thought, response = f"Reached {max_turns} user turns; ending the chat.", termination_signal
    elif not last_assistant.strip() or "?" in last_assistant:
        thought = "The assistant asked for details; give the full goal."
        response = f"Sure, here is exactly what I need: {goal}"
    else:
        thought, response = "The assistant gave an answer; I am done.", termination_signal
    return {"current_answer": summary, "thought": thought, "response": response}


def scripted_user_responder(messages: list[dict], request: Mapping) -> str:
    """Local-server responder for model ``scripted-user``: returns the JSON answer as a string.

    Raises ValueError (the server answers HTTP 400) when the request does not hold a simulator prompt.
    """
    text = "\n".join(m.get("content") or "" for m in messages if isinstance(m.get("content"), str))
    parsed = parse_simulator_prompt(text)
    options = request.get("scripted_user") or {}
    max_turns = int(options.get("max_turns", DEFAULTS["max_turns"]))
    if max_turns < 1:
        raise ValueError(f"scripted_user.max_turns must be >= 1, got {max_turns}")
    reply = scripted_user_reply(parsed["goal"], parsed["history"], parsed["termination_signal"], max_turns)
    logger.debug("%s turn %d -> %.60r", LOG_PREFIX, len(parsed["history"]), reply["response"])
    return json.dumps(reply, ensure_ascii=False)
