"""The user simulator's prompt: how the hidden goal, the task and the chat history are shown to the LLM.

Contract (docs/design.md §1, CollabLLM paper section 3.2 "collaborative simulation"): the simulator
sees a task description, the hidden goal (the single-turn prompt, possibly with the reference answer)
and the chat so far without system messages and without ``<think>...</think>`` reasoning. It answers
with a JSON object ``{"current_answer", "thought", "response"}``; only ``response`` is sent to the
assistant, and a response containing the termination signal ends the conversation (the message itself is
kept as the conversation's last user turn, as in the original implementations).

The prompt states the simulated user's nine behaviours (a human with one personality; minimal effort
first: short, vague openers; a user's limited knowledge, which may miss the assistant's mistakes;
occasional slips; natural preferences; staying on the goal; consistency with the history, opening the
chat when it is empty; never copying the goal or the reference; ending with the signal) and asks for a
private ``thought`` that walks through five checks in order (satisfied? stuck where? asked something?
a misunderstanding to point out? how to phrase the next message). All wording is this project's own.

The markers used here (``<goal>``, ``<chat>``, ``<turn role=...>``, ``End signal:``) are also read by the
offline scripted user (:mod:`collabllm_verl.recipe.offline.scripted_user`), so keep both in sync.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = [
    "SIMULATOR_REQUIRED_KEYS",
    "build_simulator_messages",
    "clean_history",
    "parse_simulator_prompt",
    "strip_reasoning",
]

# Keys the simulator must return (value types checked by the LLM-call layer). Only "response" is used;
# "current_answer" and "thought" are asked for because writing them first improves the message.
SIMULATOR_REQUIRED_KEYS: dict[str, type] = {"response": str}

_SYSTEM = (
    "You are role-playing a human user who is chatting with an AI assistant to get a task done. "
    "You know a goal that the assistant does not know. Your job is to write the user's next message."
)

# The nine behaviours of the simulated user (docs/design.md §1). Each rule is written for this project.
_INSTRUCTIONS = """How to play the user:
1. You are the human in this chat, never the assistant. Keep one consistent personality from start to end.
2. Spend as little effort as you can; this matters more than anything else. Early messages are short, loose or missing details. Let the assistant ask for what it needs instead of volunteering everything.
3. You only know what an ordinary person with this goal would know. You may not notice when the assistant gets something wrong, and your questions show both what you follow and what puzzles you.
4. Be imperfect now and then: a typo, a wrong detail or date, a question that is not quite clear.
5. When it comes naturally, mention a preference or constraint (keep it short, you are in a hurry, you want comments in the code, ...).
6. Stick to your goal: no small talk, and steer the chat back when it wanders off.
7. Stay consistent with everything said so far. If the conversation has not started, open it with your request.
8. Never copy the goal or its reference answer into your messages, and never reveal that you have a hidden goal or that you are a simulator. Answer the assistant's questions in your own words; where the goal is silent, give a plausible answer. Do not do the task yourself.
9. Once your goal is met, or it is clear that the assistant cannot help any further, end the chat by sending the end signal."""

# The private reasoning walks through five checks, in this order (docs/design.md §1).
_FORMAT = """Reply with one JSON object and nothing else, with these keys:
{"current_answer": "<one or two sentences summarising the assistant's current answer, or 'none yet'>",
 "thought": "<your private reasoning, never shown to the assistant; go through these checks in order: (a) am I satisfied with what I have? if so, I may end the chat; (b) if not, which part am I stuck on or still missing? (c) did the assistant ask me a question or ask me to do something, and how do I answer? (d) is there a misunderstanding or a recurring pattern I should point out? (e) if I am stuck, how do I word my next message to get the most help while showing what I have understood?>",
 "response": "<the message you send to the assistant; to end the chat, the end signal>"}"""

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_THINK_OPEN_TO_END = re.compile(r"<think>.*\Z", re.S | re.I)
_THINK_CLOSE_PREFIX = re.compile(r"\A.*?</think>", re.S | re.I)


def strip_reasoning(text: str) -> str:
    """Remove reasoning from a message: ``<think>...</think>`` blocks, an unclosed ``<think>`` to the end
    (a truncated reasoning block), and text before a lone ``</think>`` (chat templates that put the opening
    tag in the prompt). Returns the remaining text, stripped."""
    text = _THINK_BLOCK.sub("", text)
    if re.search(r"</think>", text, re.I):
        text = _THINK_CLOSE_PREFIX.sub("", text)
    text = _THINK_OPEN_TO_END.sub("", text)
    return text.strip()


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(
            part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return str(content)


def clean_history(messages: Iterable[Mapping]) -> list[dict]:
    """The chat history the simulator may see: user and assistant messages only (system and tool messages
    dropped), reasoning removed, empty messages dropped. Returns new ``{"role", "content"}`` dicts."""
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg:
            raise ValueError(f"chat message {i} must be a mapping with 'role' and 'content', got {msg!r:.80}")
        role = msg["role"]
        if role not in ("user", "assistant"):
            continue
        text = strip_reasoning(_content_text(msg.get("content")))
        if text:
            out.append({"role": role, "content": text})
    return out


def _render_chat(history: list[dict]) -> str:
    if not history:
        return "(the conversation has not started yet: write the first message)"
    return "\n".join(f'<turn role="{m["role"]}">\n{m["content"]}\n</turn>' for m in history)


def build_simulator_messages(
    *, goal: str, task_desc: str, history: Iterable[Mapping], termination_signal: str
) -> list[dict]:
    """Chat messages for one user-simulator request.

    Args:
        goal: the hidden goal (single-turn prompt; may include the reference answer).
        task_desc: a short description of the task type (e.g. "math problem solving"); may be empty.
        history: the conversation so far as chat messages, raw (system messages and reasoning are
            removed here by :func:`clean_history`).
        termination_signal: the exact message that ends the chat (e.g. ``[[TERMINATE CHAT]]``).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]`` holding only this conversation's goal.
    """
    chat = _render_chat(clean_history(history))
    body = (
        f"Task type: {task_desc.strip() or 'general assistance'}\n\n"
        f"Your goal (hidden from the assistant):\n<goal>\n{goal.strip()}\n</goal>\n\n"
        f'Conversation so far (you are "user"):\n<chat>\n{chat}\n</chat>\n\n'
        f"{_INSTRUCTIONS}\n\n"
        f"End signal: {termination_signal}\n\n"
        f"{_FORMAT}"
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": body}]


_GOAL_RE = re.compile(r"<goal>\n(.*?)\n</goal>", re.S)
_CHAT_RE = re.compile(r"<chat>\n(.*?)\n</chat>", re.S)
_TURN_RE = re.compile(r'<turn role="(user|assistant)">\n(.*?)\n</turn>', re.S)
_SIGNAL_RE = re.compile(r"^End signal: (.+)$", re.M)


def parse_simulator_prompt(text: str) -> dict:
    """Inverse of :func:`build_simulator_messages` for the offline scripted user.

    Returns ``{"goal": str, "history": [{"role", "content"}, ...], "termination_signal": str}``.
    Raises ValueError when ``text`` is not a simulator prompt (no ``<goal>`` section).
    """
    goal = _GOAL_RE.search(text)
    if goal is None:
        raise ValueError("not a user-simulator prompt: no <goal> section found")
    chat = _CHAT_RE.search(text)
    history = [{"role": r, "content": c} for r, c in _TURN_RE.findall(chat.group(1))] if chat else []
    signal = _SIGNAL_RE.search(text)
    return {
        "goal": goal.group(1),
        "history": history,
        "termination_signal": signal.group(1).strip() if signal else "[[TERMINATE CHAT]]",
    }
