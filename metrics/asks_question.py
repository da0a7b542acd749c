"""``asks_question``: does the first assistant message after the prompt ask the user for information?

The one rule-based "ask" detector of the project (:func:`asks_a_question`), shared by this metric, the
offline ambiguity-family user (:mod:`collabllm_verl.recipe.offline.scripted_ambiguity_user`), the
reward-quality diagnostics (:mod:`collabllm_verl.recipe.core.reward_diagnostics`) and the evaluation
summaries. A reply *asks* when it requests information instead of giving an answer, decided sentence by
sentence on its prose (fenced code, inline code and LaTeX math removed first):

1. an **information request** is a sentence that ends with ``?``, or one that asks in the imperative
   ("please tell me ...", "let me know which ...", "could you share ..."), and that is not a
   **closing offer or check** ("Anything else?", "Would you like me to ...?", "Does this help?", "Let me
   know if ...", "What do you think?", ...: :data:`CLOSING`);
2. the **answer part** is the words of every other sentence;
3. the reply asks when it holds an information request and its answer part is shorter than
   :data:`ANSWER_WORDS` (40 whitespace words): a question after a full answer ("Here is your note: ...
   Which font do you prefer?") is an answer with a follow-up, not a request in its place.

So a question mark as such earns nothing: an answer that ends with "Anything else?" is an answer.
Known limits: a short answer that opens with a rhetorical question ("Ever seen a volcano? ...") counts as
asking, and a question without ``?`` or a request phrase is missed. In training (weight 0 to log it
only) the metric is the share of trained responses that ask; in evaluation the share of conversations whose
first reply asks; 0.0 when there is no assistant message after the prompt. It does not judge whether the
question is a good one (the ``interactivity`` judge does).
"""

from __future__ import annotations

import re

from .registry import MetricContext, register_metric

__all__ = ["ANSWER_WORDS", "CLOSING", "asks_a_question", "first_reply_asks"]

ANSWER_WORDS = 40
"""An answer part of at least this many whitespace words makes a reply an answer, whatever it asks."""

_NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
CLOSING = re.compile(
    r"\b(anything else|something else|any other|would you like|do you want|want me to|shall i|should i|"
    r"does (this|that|it) (help|work|look|sound|fit|meet)|is (this|that|it) (ok|okay|alright|fine|good|"
    r"helpful|what you)|how does (this|that|it) (look|sound)|what do you think|how can i help|can i help|"
    r"may i help|how else|need any(thing)? (more|else)|anything more|let me know if|feel free|"
    r"hope (this|that|it) helps|happy to help|any (changes|edits|adjustments|questions))\b",
    re.I,
)
"""Closing offers and checks: sentences that invite feedback after an answer instead of asking for a detail."""
_REQUEST = re.compile(
    r"\b(please (tell|share|provide|specify|confirm|give|let me know)|let me know (the|which|what|who|where|"
    r"when|how|your)|i need to know|i('ll| will) need (to know|the|your|a few|some|more)|"
    r"(could|can|would) you (please )?(tell|share|provide|specify|clarify|confirm|give|let me know))\b",
    re.I,
)


def _sentences(text: str) -> list[str]:
    prose = _NOT_PROSE.sub(" ", text)
    return [s.strip() for s in _SENTENCE_END.split(prose) if s and s.strip()]


def _is_request(sentence: str) -> bool:
    if CLOSING.search(sentence):
        return False
    return sentence.rstrip(" \"')*_").endswith("?") or bool(_REQUEST.search(sentence))


def asks_a_question(text: str) -> bool:
    """True when ``text`` requests information instead of giving an answer (the module's rules 1-3)."""
    kinds = [(len(s.split()), _is_request(s)) for s in _sentences(text)]
    return any(request for _, request in kinds) and sum(n for n, request in kinds if not request) < ANSWER_WORDS


def first_reply_asks(messages: list[dict]) -> bool | None:
    """Whether the first assistant message of ``messages`` asks (:func:`asks_a_question`); None without one."""
    first = next((m for m in messages if m.get("role") == "assistant"), None)
    return None if first is None else asks_a_question(str(first.get("content") or ""))


@register_metric(
    "asks_question",
    value_range=(0.0, 1.0),
    unit="0/1",
    description="1 when the first assistant message after the prompt requests information instead of answering",
)
async def asks_question(ctx: MetricContext) -> float:
    """1.0 / 0.0 as the module docstring says."""
    return 1.0 if first_reply_asks(ctx.future_messages) else 0.0
