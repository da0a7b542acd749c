"""Offline stand-in for the user simulator on the ambiguity-controlled family (``scripted-ambiguity-user``).

It is NOT a language model. It reads the same simulator prompt a real simulator gets
(:func:`collabllm_verl.interactions.simulator_prompt.build_simulator_messages`: the hidden goal and the
chat so far) and finds the family row it belongs to by its hidden goal (``single_turn_prompt``) and the
chat's first user message (the row's ``opener``). A real user knows what it left out and what it wants;
this stand-in reads both from the row (``clarification``, ``must_contain``), which it looks up in the
rows it was given (:func:`register_rows`). It answers, in order:

1. no assistant message yet -> the row's opener;
2. the assistant's last message asks for information
   (:func:`~collabllm_verl.metrics.asks_question.asks_a_question`, which credits no question mark as such)
   -> on an ambiguous row the ``clarification``; on a clear row that everything is in its first message;
3. it is an answer that contains every ``must_contain`` string (case-insensitive) -> the termination signal;
4. any other answer -> that this is not what it needs, without giving the detail (minimal effort, rule 2
   of the simulator prompt).

Rows come from the files shipped in ``data/ambiguity/`` of a source checkout, then the files named by the
environment variable ``SCRIPTED_AMBIGUITY_ROWS`` (``os.pathsep``-separated), then the server's
``--ambiguity-rows FILE`` flag and :func:`register_rows` calls (tests, in-process servers), in that order; a
later row with the same goal and opener replaces an earlier one. A goal that none of them holds, or a chat
whose first user message is the opener of none of the goal's rows, is an HTTP 400 naming it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from collabllm_verl.interactions.simulator_prompt import parse_simulator_prompt
from collabllm_verl.metrics.asks_question import asks_a_question
from collabllm_verl.metrics.must_contain import contains_all
from collabllm_verl.recipe.dataset.ambiguity_family import validate_row
from collabllm_verl.recipe.dataset.jsonl import read_json_lines
from collabllm_verl.recipe.offline.server import register_responder

__all__ = [
    "CLEAR_REPLY",
    "NAME",
    "ROWS_ENV",
    "WRONG_REPLY",
    "ambiguity_user_reply",
    "register_rows",
    "scripted_ambiguity_user_responder",
]

logger = logging.getLogger(__name__)

NAME = "scripted-ambiguity-user"
ROWS_ENV = "SCRIPTED_AMBIGUITY_ROWS"
LOG_PREFIX = f"[offline stand-in: {NAME}]"
CLEAR_REPLY = "Everything you need is already in my first message."
WRONG_REPLY = "That is not what I need."
_SHIPPED = Path(__file__).resolve().parents[2] / "data" / "ambiguity"

_ROWS: dict[str, list[dict[str, Any]]] = {}  # hidden goal -> rows with that goal
_LOCK = threading.Lock()
_DEFAULTS_LOCK = threading.Lock()
_loaded_defaults = False


def register_rows(rows: Iterable[Mapping[str, Any]] | str | os.PathLike, *, source: str | None = None) -> int:
    """Make rows known to the stand-in: an iterable of row mappings, or a JSON Lines file of the family.

    Returns:
        The number of rows read.

    Raises:
        ValueError: a row that breaks the family's schema (names the source, row and field).
        FileNotFoundError: a file that does not exist.
    """
    _load_defaults()  # the defaults first, so that rows given here replace theirs
    if isinstance(rows, (str, os.PathLike)):
        path = Path(rows)
        source = source or str(path)
        rows = read_json_lines(path)
    count = 0
    with _LOCK:
        for index, row in enumerate(rows):
            validate_row(row, source=source or "<rows>", index=index)
            kept = [
                r for r in _ROWS.get(row["single_turn_prompt"].strip(), []) if r["opener"] != row["opener"]
            ]
            _ROWS[row["single_turn_prompt"].strip()] = [*kept, dict(row)]
            count += 1
    return count


def _load_defaults() -> None:
    global _loaded_defaults
    if _loaded_defaults:
        return
    with _DEFAULTS_LOCK:
        if _loaded_defaults:
            return
        _loaded_defaults = True  # before reading: register_rows below calls back here
        files = sorted(str(p) for p in _SHIPPED.glob("*.jsonl")) if _SHIPPED.is_dir() else []
        files += [p for p in os.environ.get(ROWS_ENV, "").split(os.pathsep) if p]  # later files replace rows
        for file in files:
            register_rows(file)


def _find_row(goal: str, history: list[dict]) -> dict[str, Any]:
    _load_defaults()
    with _LOCK:
        candidates = list(_ROWS.get(goal.strip(), []))
    if not candidates:
        raise ValueError(
            f"{NAME}: the hidden goal {goal.strip()[:80]!r} is not a row of any loaded ambiguity-family file; "
            f"name the file with {ROWS_ENV} or the server's --ambiguity-rows"
        )
    first_user = next((m["content"] for m in history if m["role"] == "user"), None)
    if first_user is None:  # no opener yet to tell the goal's rows apart: the first registered
        return candidates[0]
    for row in candidates:
        if row["opener"].strip() == first_user.strip():
            return row
    raise ValueError(
        f"{NAME}: the chat's first user message {first_user.strip()[:80]!r} is the opener of no row whose "
        f"hidden goal is {goal.strip()[:80]!r}"
    )


def ambiguity_user_reply(
    row: Mapping[str, Any], history: list[dict], termination_signal: str
) -> dict[str, str]:
    """Apply the rules of the module docstring; returns ``{"current_answer", "thought", "response"}``.

    Args:
        row: the family row (:func:`~collabllm_verl.recipe.dataset.ambiguity_family.validate_row`).
        history: the chat so far, ``[{"role": "user"|"assistant", "content": str}, ...]``.
        termination_signal: the string that ends the chat.
    """
    last = next((m["content"] for m in reversed(history) if m["role"] == "assistant"), None)
    summary = "none yet" if last is None else last.strip()[:120]
    if last is None:
        thought, response = "Open with my request.", row["opener"]
    elif asks_a_question(last):
        if row["ambiguous"]:
            thought, response = "The assistant asks for the detail I left out; give it.", row["clarification"]
        else:
            thought, response = "The assistant asks, but my first message said it all.", CLEAR_REPLY
    elif contains_all(last, row["must_contain"]):
        thought, response = "This is what I needed; end the chat.", termination_signal
    else:
        thought, response = "This is not what I asked for; say so without doing the work.", WRONG_REPLY
    return {"current_answer": summary, "thought": thought, "response": response}


def scripted_ambiguity_user_responder(messages: list[dict], request: Mapping) -> str:
    """Local-server responder for model ``scripted-ambiguity-user``: returns the JSON answer as a string.

    Raises ValueError (the server answers HTTP 400) when the request is not a simulator prompt or its goal is
    not a known row.
    """
    text = "\n".join(m.get("content") or "" for m in messages if isinstance(m.get("content"), str))
    parsed = parse_simulator_prompt(text)
    row = _find_row(parsed["goal"], parsed["history"])
    reply = ambiguity_user_reply(row, parsed["history"], parsed["termination_signal"])
    logger.debug("%s %s turn %d -> %.60r", LOG_PREFIX, row["id"], len(parsed["history"]), reply["response"])
    return json.dumps(reply, ensure_ascii=False)


register_responder(NAME, scripted_ambiguity_user_responder)
