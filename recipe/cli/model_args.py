"""Command-line flags that choose the LLMs of a CLI (evaluation, data generation): one shared endpoint and
key variable, overridable per role.

Each role (``user`` = the user simulator, ``judge``, ``assistant`` or ``policy``) gets ``--<role>_model``
(any litellm model string), ``--<role>_api_base`` and ``--<role>_api_key_env``; ``--api_base`` and
``--api_key_env`` apply to every role that does not override them. Keys are only ever read from the
environment variable named by ``*_api_key_env``, so they never appear on a command line, in a printed
configuration or in an output file. ``--local_server`` starts the offline stand-in server
(:mod:`collabllm_verl.recipe.offline.server`, for the ``openai/scripted-*`` models) for the run and uses it
as the shared ``--api_base``. No verl import.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["LOCAL_SERVER_KEY_ENV", "ROLE_HELP", "add_model_arguments", "local_server", "model_config"]

# The placeholder key of the offline stand-in server, set in the environment while it runs.
LOCAL_SERVER_KEY_ENV = "COLLABLLM_LOCAL_SERVER_KEY"

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
    group.add_argument(
        "--local_server",
        action="store_true",
        help="start the offline stand-in server for this run and use it as --api_base (openai/scripted-* models)",
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
        ``{model_key: ..., "api_base": ..., "api_key_env": ..., **settings}`` without None values; a role
        served by the local server (``--local_server`` and no role endpoint of its own) gets its key variable.
    """
    key_env = getattr(args, f"{role}_api_key_env") or args.api_key_env
    if getattr(args, "local_server", False) and not getattr(args, f"{role}_api_base"):
        key_env = LOCAL_SERVER_KEY_ENV
    config = {
        model_key: getattr(args, f"{role}_model"),
        "api_base": getattr(args, f"{role}_api_base") or args.api_base,
        "api_key_env": key_env,
        **settings,
    }
    return {key: value for key, value in config.items() if value is not None}


@contextlib.contextmanager
def local_server(args: argparse.Namespace) -> Iterator[None]:
    """With ``--local_server``: run the offline stand-in server for the block and point ``args.api_base`` at it.

    Raises:
        ValueError: ``--local_server`` together with ``--api_base``.
    """
    if not getattr(args, "local_server", False):
        yield
        return
    if args.api_base:
        raise ValueError("--local_server sets the endpoint itself: drop --api_base")
    from collabllm_verl.recipe.offline.server import LocalLLMServer  # the stand-ins: imported only when asked

    with LocalLLMServer() as server:
        args.api_base = server.base_url
        os.environ.setdefault(LOCAL_SERVER_KEY_ENV, "local")
        yield
