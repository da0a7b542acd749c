"""Reward-quality diagnostics: is the reward a learning signal, and are the stand-ins behaving like users?

Computed for every training step (the step summary, :mod:`collabllm_verl.recipe.verl_adapters.step_summary`)
and every evaluation run (``summary.json``'s ``diagnostics``, :mod:`collabllm_verl.recipe.evaluation.report`):

* **ask rate**: the share of first replies that request information instead of answering (the project's
  one detector, :func:`collabllm_verl.metrics.asks_question.asks_a_question`; never a bare ``?`` test),
  split into ``ask_rate_ambiguous`` and ``ask_rate_clear`` when the rows carry ``extra_info.ambiguous``
  (the ambiguity-controlled family);
* **equal-reward groups** (training): the share of GRPO groups (responses of one prompt, ``uid``) whose
  rewards are all equal: such a group has zero advantage everywhere and teaches nothing;
* **future-score spread** (training): per response, the standard deviation of the S forward-sampled
  conversations' scores (each the weighted sum of its metric values): the noise of the multiturn-aware
  reward's Monte-Carlo estimate (zero with S = 1 or identical futures);
* **goal-leak rate**: the share of simulated user turns that copy a long span of the hidden goal that the
  opener did not contain (:func:`copies_goal`): a simulator that pastes the goal makes asking pay whatever
  the request was.

No verl import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collabllm_verl.metrics.asks_question import asks_a_question, first_reply_asks

__all__ = [
    "LEAK_WORDS",
    "ResponseDiagnostics",
    "ask_rates",
    "conversation_diagnostics",
    "copies_goal",
    "equal_reward_share",
    "goal_leaks",
    "response_diagnostics",
    "score_spread",
]

LEAK_WORDS = 8
"""A user turn leaks when it holds this many consecutive words of the goal (fewer for a shorter goal, never
below :data:`_MIN_LEAK_WORDS`) that the opener does not hold."""
_MIN_LEAK_WORDS = 4
_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text or "")]


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def copies_goal(text: str, goal: str, opener: str, *, span_words: int = LEAK_WORDS) -> bool:
    """True when ``text`` holds a run of ``min(span_words, words in goal)`` (at least 4) consecutive words,
    case and punctuation ignored, that occurs in ``goal`` and not in ``opener``."""
    goal_words = _words(goal)
    n = max(_MIN_LEAK_WORDS, min(span_words, len(goal_words)))
    leaked = _ngrams(goal_words, n) - _ngrams(_words(opener), n)
    return bool(leaked & _ngrams(_words(text), n))


def goal_leaks(messages: Sequence[Mapping[str, Any]], goal: str, *, start: int) -> tuple[int, int]:
    """``(leaking turns, simulated user turns)`` among the user messages at index >= ``start``.

    The opener is the conversation's first user message; ``start`` is where the simulated turns begin (the
    trained response's index in training, 1 in evaluation).
    """
    opener = next((str(m.get("content") or "") for m in messages if m.get("role") == "user"), "")
    turns = [str(m.get("content") or "") for m in messages[start:] if m.get("role") == "user"]
    return sum(copies_goal(t, goal, opener) for t in turns if goal), len(turns)


def _ambiguous(extra_info: Mapping[str, Any] | None) -> bool | None:
    value = (extra_info or {}).get("ambiguous")
    return bool(value) if isinstance(value, (bool, int)) or hasattr(value, "item") else None


def ask_rates(items: Iterable[tuple[bool, bool | None]]) -> dict[str, float | None]:
    """``{"ask_rate", "ask_rate_ambiguous", "ask_rate_clear"}`` over ``(asks, ambiguous)`` pairs; the split
    rates are None when no item is of that kind (rows without ``ambiguous`` count only in ``ask_rate``)."""
    items = list(items)

    def rate(group: list[bool]) -> float | None:
        return sum(group) / len(group) if group else None

    return {
        "ask_rate": rate([a for a, _ in items]),
        "ask_rate_ambiguous": rate([a for a, amb in items if amb is True]),
        "ask_rate_clear": rate([a for a, amb in items if amb is False]),
    }


def score_spread(
    per_conversation: Mapping[str, Sequence[float | None]], weights: Mapping[str, float]
) -> float | None:
    """Population standard deviation of the S futures' scores ``sum(weight * value)``, over the futures
    where every weighted metric has a value; None with fewer than two such futures."""
    names = [n for n, w in weights.items() if w and n in per_conversation]
    count = max((len(per_conversation[n]) for n in names), default=0)
    scores = []
    for index in range(count):
        values = [per_conversation[n][index] if index < len(per_conversation[n]) else None for n in names]
        if all(v is not None for v in values):
            scores.append(sum(weights[n] * v for n, v in zip(names, values, strict=True)))
    if len(scores) < 2:
        return None
    mean = sum(scores) / len(scores)
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))


def equal_reward_share(groups: Mapping[Any, Sequence[float]], *, tolerance: float = 1e-9) -> float | None:
    """Share of groups of two or more rewards whose rewards are all equal (within ``tolerance``); None when
    there is no such group."""
    sized = [list(g) for g in groups.values() if len(g) >= 2]
    if not sized:
        return None
    return sum(max(g) - min(g) <= tolerance for g in sized) / len(sized)


@dataclass(frozen=True)
class ResponseDiagnostics:
    """The diagnostics of one trained response (picklable: it travels in the step ledger).

    Attributes:
        asks: the response requests information instead of answering.
        ambiguous: the row's ``extra_info.ambiguous``, or None when the row does not carry it.
        score_spread: :func:`score_spread` of its futures, or None.
        leaked_turns, user_turns: :func:`goal_leaks` summed over its futures.
    """

    asks: bool
    ambiguous: bool | None
    score_spread: float | None
    leaked_turns: int
    user_turns: int


def response_diagnostics(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    num_history_messages: int,
    extra_info: Mapping[str, Any] | None,
    per_conversation: Mapping[str, Sequence[float | None]],
    weights: Mapping[str, float],
    *,
    response: str | None = None,
) -> ResponseDiagnostics | None:
    """The :class:`ResponseDiagnostics` of one response from its forward-sampled conversations (each the
    history, the response at ``num_history_messages``, then the future). Without a conversation (forward
    sampling skipped, e.g. a truncated response) only ``asks`` and ``ambiguous`` are filled, from
    ``response`` (the decoded trained response); None when that is missing too."""
    if not conversations:
        if response is None:
            return None
        return ResponseDiagnostics(asks_a_question(response), _ambiguous(extra_info), None, 0, 0)
    first = conversations[0]
    response = first[num_history_messages] if len(first) > num_history_messages else None
    kwargs = (extra_info or {}).get("interaction_kwargs") or {}
    goal = str(kwargs.get("single_turn_prompt") or (extra_info or {}).get("single_turn_prompt") or "")
    leaks = [goal_leaks(c, goal, start=num_history_messages) for c in conversations]
    return ResponseDiagnostics(
        asks=response is not None and asks_a_question(str(response.get("content") or "")),
        ambiguous=_ambiguous(extra_info),
        score_spread=score_spread(per_conversation, weights),
        leaked_turns=sum(n for n, _ in leaks),
        user_turns=sum(t for _, t in leaks),
    )


def conversation_diagnostics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The diagnostics of evaluation records (``conversations.jsonl``: ``messages``, ``goal``, and
    ``ambiguous`` when the task carries it): :func:`ask_rates` of each first reply, and the goal-leak rate
    over the user turns after the first (``goal_leak_rate``, None without any), with its counts."""
    asks, leaked, turns = [], 0, 0
    for record in records:
        messages = record.get("messages") or []
        first_asks = first_reply_asks(messages)
        if first_asks is not None:
            asks.append((first_asks, _ambiguous(record)))
        n, t = goal_leaks(messages, str(record.get("goal") or ""), start=1)
        leaked, turns = leaked + n, turns + t
    return {
        **ask_rates(asks),
        "goal_leak_rate": leaked / turns if turns else None,
        "leaked_user_turns": leaked,
        "simulated_user_turns": turns,
    }
