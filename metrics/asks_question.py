"""``asks_question``: does the first assistant message after the prompt ask the user something?

A rule-based proxy for "asks a clarifying question", used to watch the behaviour CollabLLM trains for: in
training (weight 0 to log it only) it is the share of trained responses that ask; in evaluation it is the
share of conversations whose first reply asks. 1.0 when that message contains a question mark outside
fenced code blocks, inline code and LaTeX math (``$...$``, ``\\(...\\)``, ``\\[...\\]``); 0.0 otherwise,
and 0.0 when the conversation has no assistant message after the prompt. It does not judge whether the
question is a good one (the ``interactivity`` judge does).
"""

from __future__ import annotations

import re

from .registry import MetricContext, register_metric

_NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)


def asks_a_question(text: str) -> bool:
    """True when ``text`` has a ``?`` in its prose (code and math removed first)."""
    return "?" in _NOT_PROSE.sub(" ", text)


@register_metric(
    "asks_question",
    value_range=(0.0, 1.0),
    unit="0/1",
    description="1 when the first assistant message after the prompt asks the user a question (rule-based)",
)
async def asks_question(ctx: MetricContext) -> float:
    """1.0 / 0.0 as the module docstring says."""
    first = next((m for m in ctx.future_messages if m.get("role") == "assistant"), None)
    return 1.0 if first is not None and asks_a_question(str(first.get("content") or "")) else 0.0
