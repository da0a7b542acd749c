"""Task presets: which metrics score a task family, and with which weights and options.

Used by evaluation (``eval_metrics``: computed once on each finished conversation, as the paper's tables
report them) and by data generation (``metric_weights``: the multiturn-aware reward that ranks candidate
replies; the original data engine's example weights). ``token_amount`` is counted as the paper reports
it and the authors' data engine scores it: assistant tokens of the whole conversation (history included,
``scope: session``), in thousands, with tiktoken's ``cl100k_base`` encoding. In evaluation the whole
conversation is the future, so the scope changes nothing there.

=========  ===========================================  ========================================
preset     metric_weights (data generation)              eval_metrics (evaluation)
=========  ===========================================  ========================================
math       accuracy 1, interactivity 0.5, token_amount   accuracy, interactivity, token_amount
           -0.5
document   bleu_score 1, token_amount -0.1               bleu_score, interactivity, token_amount
code       pass_rate 1, token_amount -0.5                pass_rate, interactivity, token_amount
=========  ===========================================  ========================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PAPER_TOKEN_AMOUNT", "TASK_PRESETS", "preset"]

# token_amount as the paper reports it (thousands of cl100k tokens of assistant messages) and the authors'
# data engine counts it (the whole session, history included).
PAPER_TOKEN_AMOUNT: dict[str, Any] = {
    "unit": "tokens",
    "roles": "assistant",
    "tokenizer": "cl100k_base",
    "scale": 0.001,
    "scope": "session",
}

TASK_PRESETS: dict[str, dict[str, Any]] = {
    "math": {
        "metric_weights": {"accuracy": 1.0, "interactivity": 0.5, "token_amount": -0.5},
        "eval_metrics": ["accuracy", "interactivity", "token_amount"],
        "metric_kwargs": {"token_amount": PAPER_TOKEN_AMOUNT},
    },
    "document": {
        "metric_weights": {"bleu_score": 1.0, "token_amount": -0.1},
        "eval_metrics": ["bleu_score", "interactivity", "token_amount"],
        "metric_kwargs": {"token_amount": PAPER_TOKEN_AMOUNT},
    },
    "code": {
        "metric_weights": {"pass_rate": 1.0, "token_amount": -0.5},
        "eval_metrics": ["pass_rate", "interactivity", "token_amount"],
        "metric_kwargs": {"token_amount": PAPER_TOKEN_AMOUNT},
    },
}


def preset(name: str) -> dict[str, Any]:
    """A copy of one preset (``metric_weights``, ``metric_kwargs``, ``eval_metrics``).

    Raises:
        ValueError: unknown preset name (the message lists the known ones).
    """
    if name not in TASK_PRESETS:
        raise ValueError(f"unknown task preset {name!r}; known presets: {sorted(TASK_PRESETS)}")
    chosen: Mapping[str, Any] = TASK_PRESETS[name]
    return {
        "metric_weights": dict(chosen["metric_weights"]),
        "metric_kwargs": {k: dict(v) for k, v in chosen["metric_kwargs"].items()},
        "eval_metrics": list(chosen["eval_metrics"]),
    }
