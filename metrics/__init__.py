"""Conversation-level metrics for the multiturn-aware reward (see :mod:`.registry`).

Importing this package imports every module in it, so each built-in metric registers itself:
``accuracy``, ``interactivity``, ``token_amount``, ``bleu_score``, ``pass_rate``, ``math_accuracy``,
``asks_question`` and ``must_contain``.
Optional dependencies (``bigcodebench`` for ``pass_rate``) are imported only when a metric runs.
"""

from __future__ import annotations

import importlib
import pkgutil

# The package's public API is the registry's (the names in its __all__), re-exported here.
from .registry import *  # noqa: F403
from .registry import __all__ as __all__

# Helper modules that register no metric (the sandbox runner is also run as ``python -m``; presets are data).
_NOT_METRICS = {"registry", "bigcodebench_sandbox", "presets"}
for _module in pkgutil.iter_modules(__path__):  # noqa: F405  (the package's own path, not a star import)
    if _module.name not in _NOT_METRICS:
        importlib.import_module(f"{__name__}.{_module.name}")
