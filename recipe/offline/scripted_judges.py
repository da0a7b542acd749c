"""Offline stand-in judges: deterministic, rule-based answers to the judge prompts of ``metrics/judge.py``.

They are NOT language models and their scores say nothing about response quality; they exist so that the
tests, benchmarks and the CPU quick start can exercise the whole judge path (litellm over real HTTP, JSON
repair, retries, failure accounting) without an API key. Importing this module registers the responder
``scripted-judge`` on the local server (:mod:`collabllm_verl.recipe.offline.server`); use it with
``llm_judge_kwargs.model=openai/scripted-judge`` and ``api_base`` = the server's URL.

The task is recognised by the JSON keys the prompt asks for
(:data:`~collabllm_verl.metrics.judge.JUDGE_TASKS`):

=================  ============================================================================
task               deterministic answer
=================  ============================================================================
accuracy           1 when the reference answer (the last ``\\boxed{}`` of the reference if it has
                   one, else the whole reference), lower-cased with whitespace collapsed, occurs
                   in the last assistant message; else 0
interactivity      understanding = 1 if the last assistant message is non-empty; clarification =
                   1 if some assistant message contains ``?``; suggestion = 1 if some assistant
                   message contains a suggestion phrase (``I suggest``, ``you could``,
                   ``consider``, ``would you like``, ...); each else 0. The coarse rubric
                   (task ``interactivity_coarse``): one score, 1 when all three hold, 0 when
                   none, else 0.5
extract_document   the last assistant message (a real judge merges earlier revisions into it)
extract_code       the last fenced code block of the assistant messages (``""`` if none); when it
                   parses as Python: top-level ``if __name__ == "__main__":`` blocks removed and,
                   if no top-level function has the ``<entry_point>`` name, the last top-level
                   function renamed to it (with its calls)
=================  ============================================================================

Malformed answers on demand (for failure-handling tests), besides the server's fault injection:

* a conversation containing ``[[judge:malformed]]`` gets prose instead of JSON, and one containing
  ``[[judge:out_of_range]]`` gets scores outside the allowed range (accuracy 7, criteria 3.5);
* the request field ``"scripted_judge": {"answer": "malformed" | "out_of_range"}`` (litellm:
  ``extra_body={"scripted_judge": {...}}``) does the same for every request.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Mapping

from collabllm_verl.metrics.judge import JUDGE_TASKS
from collabllm_verl.recipe.offline.server import register_responder

__all__ = ["LOG_PREFIX", "MALFORMED_MARKER", "OUT_OF_RANGE_MARKER", "conform_code", "scripted_judge_responder"]

logger = logging.getLogger(__name__)

LOG_PREFIX = "[offline stand-in: scripted-judge]"
MALFORMED_MARKER = "[[judge:malformed]]"
OUT_OF_RANGE_MARKER = "[[judge:out_of_range]]"
SUGGESTION_PHRASES = ("i suggest", "you could", "you might", "consider", "would you like", "i recommend")

_ROLE_LINE = re.compile(r"^\[(user|assistant)\]$", re.M)
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.S)


def _section(text: str, name: str) -> str:
    match = re.search(rf"<{name}>\n(.*?)\n</{name}>", text, re.S)
    return match.group(1) if match else ""


def _parse_conversation(rendered: str) -> list[dict[str, str]]:
    """Invert :func:`collabllm_verl.metrics.judge.render_conversation`."""
    parts = _ROLE_LINE.split(rendered)
    # parts = [prefix, role1, content1, role2, content2, ...]
    return [{"role": parts[i], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _detect_task(system_prompt: str) -> str:
    for task, keys in JUDGE_TASKS.items():
        if all(f'"{key}"' in system_prompt for key in keys if key != "thought"):
            return task
    raise ValueError("scripted-judge: the prompt asks for none of the known judge tasks")


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` at module level."""
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def conform_code(code: str, entry_point: str) -> str:
    """What the code-extraction prompt asks for, done by rule: drop ``__main__`` blocks and name the main
    function (taken to be the last top-level function) after ``entry_point`` when no top-level function has
    that name. Code that does not parse is returned unchanged."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    body = [node for node in tree.body if not _is_main_guard(node)]
    functions = [node.name for node in body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(body) == len(tree.body) and (not entry_point or not functions or entry_point in functions):
        return code
    text = ast.unparse(ast.Module(body=body, type_ignores=[]))
    if entry_point and functions and entry_point not in functions:
        text = re.sub(rf"\b{re.escape(functions[-1])}\b", entry_point, text)
    return text


def _answer(
    task: str, conversation: list[dict[str, str]], reference: str, out_of_range: bool, entry_point: str = ""
) -> dict:
    assistant = [m["content"] for m in conversation if m["role"] == "assistant"]
    last = assistant[-1] if assistant else ""
    thought = f"{LOG_PREFIX} rule-based answer, not a model judgement"
    if task == "accuracy":
        target = _last_boxed(reference) or reference
        correct = bool(_norm(target)) and _norm(target) in _norm(last)
        return {"thought": thought, "accuracy": 7 if out_of_range else int(correct)}
    if task == "interactivity":
        lowered = [a.lower() for a in assistant]
        scores = {
            "understanding": 1.0 if last.strip() else 0.0,
            "clarification": 1.0 if any("?" in a for a in assistant) else 0.0,
            "suggestion": 1.0 if any(p in a for a in lowered for p in SUGGESTION_PHRASES) else 0.0,
        }
        if out_of_range:
            scores = dict.fromkeys(scores, 3.5)
        return {"thought": thought, **scores}
    if task == "interactivity_coarse":  # the same three rules, on the coarse scale: all 1, some 0.5, none 0
        met = sum(v == 1.0 for v in _answer("interactivity", conversation, reference, False).values())
        return {"thought": thought, "interactivity": 3.5 if out_of_range else {3: 1.0, 0: 0.0}.get(met, 0.5)}
    if task == "extract_document":
        return {"thought": thought, "final_document": last}
    code = ""
    for content in reversed(assistant):
        blocks = _FENCE.findall(content)
        if blocks:
            code = blocks[-1]
            break
    return {"thought": thought, "final_code": conform_code(code, entry_point) if code else code}


def scripted_judge_responder(messages: list[dict], request: Mapping) -> str:
    """Local-server responder for model ``scripted-judge``: the answer text (JSON, or prose on demand).

    Raises:
        ValueError: the request is not one of the judge prompts (the server answers HTTP 400).
    """
    system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
    user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    task = _detect_task(system)
    rendered = _section(user, "conversation")
    options = request.get("scripted_judge") or {}
    mode = options.get("answer")
    if mode not in (None, "malformed", "out_of_range"):
        raise ValueError(f"scripted_judge.answer must be 'malformed' or 'out_of_range', got {mode!r}")
    if mode == "malformed" or MALFORMED_MARKER in rendered:
        logger.debug("%s %s -> malformed answer (requested)", LOG_PREFIX, task)
        return "I have looked at the conversation and I think it went quite well overall."
    out_of_range = mode == "out_of_range" or OUT_OF_RANGE_MARKER in rendered
    answer = _answer(
        task, _parse_conversation(rendered), _section(user, "reference"), out_of_range,
        _section(user, "entry_point").strip(),
    )
    logger.debug("%s %s -> %.80r", LOG_PREFIX, task, answer)
    return json.dumps(answer, ensure_ascii=False)


register_responder("scripted-judge", scripted_judge_responder)
