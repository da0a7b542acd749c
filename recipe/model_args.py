"""Command-line flags that choose the LLMs of a CLI (evaluation, data generation): one shared endpoint and
key variable, overridable per role.

Each role (``user`` = the user simulator, ``judge``, ``assistant`` or ``policy``) gets ``--<role>_model``
(any litellm model string), ``--<role>_api_base`` and ``--<role>_api_key_env``; ``--api_base`` and
``--api_key_env`` apply to every role that does not override them. Keys are only ever read from the
environment variable named by ``*_api_key_env``, so they never appear on a command line, in a printed
configuration or in an output file. No verl import.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ROLE_HELP", "add_model_arguments", "model_config"]

ROLE_HELP = {
    "user": "the user simulator",
    "judge": "the LLM judge (accuracy, interactivity, extraction for bleu_score and pass_rate)",
    "assistant": "the assistant that proposes candidate replies",
    "policy": "the model under test",
}


def add_model_arguments(
    parser: argparse.ArgumentParser, roles: Sequence[str], defaults: Mapping[str, str | None]
) -> None:
    """Add the shared and per-role model flags to ``parser``.

    Args:
        parser: the CLI's parser.
        roles: role names, each a key of :data:`ROLE_HELP`.
        defaults: role -> default model string (None: the flag is required).

    Raises:
        KeyError: an unknown role.
    """
    group = parser.add_argument_group("models (any litellm model string)")
    group.add_argument("--api_base", default=None, help="endpoint shared by every model that does not set its own")
    group.add_argument(
        "--api_key_env",
        default=None,
        help="name of the environment variable holding the API key, shared like --api_base "
        "(default: the provider's usual variable, e.g. OPENAI_API_KEY)",
    )
    for role in roles:
        what = ROLE_HELP[role]
        default = defaults.get(role)
        group.add_argument(
            f"--{role}_model",
            default=default,
            required=default is None,
            help=f"model of {what}" + (f" (default {default})" if default else ""),
        )
        group.add_argument(f"--{role}_api_base", default=None, help=f"endpoint of {what} (default --api_base)")
        group.add_argument(
            f"--{role}_api_key_env", default=None, help=f"API key variable of {what} (default --api_key_env)"
        )


def model_config(args: argparse.Namespace, role: str, *, model_key: str = "model", **settings: Any) -> dict:
    """The flat LLM config of one role, ready for ``LLMSettings.from_config`` or the user simulator.

    Args:
        args: parsed flags (:func:`add_model_arguments`).
        role: the role.
        model_key: key of the model string in the result (``user_model`` for the user simulator).
        **settings: more keys (``temperature``, ``max_tokens``, ``max_concurrency``, ...); None values are
            dropped.

    Returns:
        ``{model_key: ..., "api_base": ..., "api_key_env": ..., **settings}`` without None values.
    """
    config = {
        model_key: getattr(args, f"{role}_model"),
        "api_base": getattr(args, f"{role}_api_base") or args.api_base,
        "api_key_env": getattr(args, f"{role}_api_key_env") or args.api_key_env,
        **settings,
    }
    return {key: value for key, value in config.items() if value is not None}
