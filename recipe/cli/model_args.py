"""Command-line flags that choose the LLMs of a CLI (evaluation, data generation): one shared endpoint and
key variable, overridable per role.

Each role (``user`` = the user simulator, ``judge``, ``assistant`` or ``policy``) gets ``--<role>_model``
(any litellm model string), ``--<role>_api_base`` and ``--<role>_api_key_env``; ``--api_base`` and
``--api_key_env`` apply to every role that does not override them. ``--llm_prices IN,OUT`` (USD per million
input and output tokens) prices every role that does not set ``--<role>_prices``; the prices replace
litellm's price map in every cost figure and in ``--max_cost_usd``. Keys are only ever read from the
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

from pydantic import BaseModel, ConfigDict

__all__ = [
    "LOCAL_SERVER_KEY_ENV",
    "ROLE_HELP",
    "RoleEndpoint",
    "add_model_arguments",
    "local_server",
    "model_config",
    "parse_prices",
    "resolve_roles",
]

# The placeholder key of the offline stand-in server, set in the environment while it runs.
LOCAL_SERVER_KEY_ENV = "COLLABLLM_LOCAL_SERVER_KEY"

ROLE_HELP = {
    "user": "the user simulator",
    "judge": "the LLM judge (accuracy, interactivity, extraction for bleu_score and pass_rate)",
    "assistant": "the assistant that proposes candidate replies",
    "policy": "the model under test",
}


def add_model_arguments(
    parser: argparse.ArgumentParser,
    roles: Sequence[str],
    defaults: Mapping[str, str | None],
    default_help: Mapping[str, str] | None = None,
) -> None:
    """Add the shared and per-role model flags to ``parser``.

    Args:
        parser: the CLI's parser.
        roles: role names, each a key of :data:`ROLE_HELP`.
        defaults: role -> default model string (None: the flag is required; ``""``: optional, the caller
            fills it in, described by ``default_help``).
        default_help: role -> what the default is, for the help text (e.g. ``"the protocol's"``).

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
    group.add_argument(
        "--llm_prices",
        default=None,
        metavar="IN,OUT",
        help="USD per million input and output tokens of every model that does not set its own (default: "
        "litellm's price map; a model it does not list costs $0)",
    )
    for role in roles:
        what = ROLE_HELP[role]
        default = defaults.get(role)
        group.add_argument(
            f"--{role}_model",
            default=default,
            required=default is None,
            help=f"model of {what}{_default_text(role, default, default_help)}",
        )
        group.add_argument(f"--{role}_api_base", default=None, help=f"endpoint of {what} (default --api_base)")
        group.add_argument(
            f"--{role}_api_key_env", default=None, help=f"API key variable of {what} (default --api_key_env)"
        )
        group.add_argument(
            f"--{role}_prices",
            default=None,
            metavar="IN,OUT",
            help=f"prices of {what} (default --llm_prices)",
        )


def parse_prices(text: str | None, *, flag: str) -> tuple[float | None, float | None]:
    """``"IN,OUT"`` (USD per million input and output tokens) -> USD per token ``(input, output)``;
    ``(None, None)`` for None or empty text.

    Raises:
        ValueError: not two numbers >= 0 separated by a comma (the message names ``flag``).
    """
    if not text:
        return None, None
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 2 or any(v < 0 or v != v for v in values):
        raise ValueError(
            f"{flag} expects IN,OUT: USD per million input and output tokens, e.g. 0.15,0.6; got {text!r}"
        )
    return values[0] / 1e6, values[1] / 1e6


def _default_text(role: str, default: str | None, default_help: Mapping[str, str] | None) -> str:
    if default:
        return f" (default {default})"
    described = (default_help or {}).get(role)
    return f" (default {described})" if described else ""


class RoleEndpoint(BaseModel):
    """The model and endpoint the flags chose for one role (a frozen pydantic model). It never holds a key:
    only the name of the environment variable that does."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model: str | None
    """litellm model string; None or empty when the role's model flag was not given (``--policy_model``
    beside ``--policy_checkpoint``)."""
    api_base: str | None = None
    """Endpoint URL (the role's ``--<role>_api_base``, else ``--api_base``); None: the provider's default."""
    api_key_env: str | None = None
    """Name of the environment variable holding the key (the role's, else ``--api_key_env``; the local
    server's placeholder variable for a role it serves); None: the provider's usual variable."""
    input_cost_per_token: float | None = None
    """USD per input token (``--<role>_prices``, else ``--llm_prices``); None: litellm's price map."""
    output_cost_per_token: float | None = None
    """USD per output token, set with ``input_cost_per_token``."""

    def config(self, *, model_key: str = "model", **settings: Any) -> dict[str, Any]:
        """The flat LLM config of the role, ready for ``LLMSettings.from_config`` or the user simulator.

        Args:
            model_key: key of the model string in the result (``user_model`` for the user simulator).
            **settings: more keys (``temperature``, ``max_tokens``, ``max_concurrency``, ...).

        Returns:
            ``{model_key: ..., "api_base": ..., "api_key_env": ..., **settings}`` without None values.
        """
        config = {
            model_key: self.model,
            "api_base": self.api_base,
            "api_key_env": self.api_key_env,
            "input_cost_per_token": self.input_cost_per_token,
            "output_cost_per_token": self.output_cost_per_token,
            **settings,
        }
        return {key: value for key, value in config.items() if value is not None}


def _role_endpoint(args: argparse.Namespace, role: str) -> RoleEndpoint:
    key_env = getattr(args, f"{role}_api_key_env") or args.api_key_env
    if getattr(args, "local_server", False) and not getattr(args, f"{role}_api_base"):
        key_env = LOCAL_SERVER_KEY_ENV
    own = getattr(args, f"{role}_prices", None)
    prices = parse_prices(
        own or getattr(args, "llm_prices", None), flag=f"--{role}_prices" if own else "--llm_prices"
    )
    return RoleEndpoint(
        model=getattr(args, f"{role}_model"),
        api_base=getattr(args, f"{role}_api_base") or args.api_base,
        api_key_env=key_env,
        input_cost_per_token=prices[0],
        output_cost_per_token=prices[1],
    )


def resolve_roles(args: argparse.Namespace, roles: Sequence[str]) -> dict[str, RoleEndpoint]:
    """Every role's model and endpoint from the parsed flags, resolved once for the whole run.

    Call it inside :func:`local_server` when ``--local_server`` may be given (the server sets the shared
    endpoint).

    Args:
        args: parsed flags (:func:`add_model_arguments`).
        roles: the roles to resolve.

    Returns:
        role -> :class:`RoleEndpoint`, in ``roles`` order.
    """
    return {role: _role_endpoint(args, role) for role in roles}


def model_config(args: argparse.Namespace, role: str, *, model_key: str = "model", **settings: Any) -> dict:
    """The flat LLM config of one role straight from the flags: ``resolve_roles(args, [role])[role].config(...)``.

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
    return _role_endpoint(args, role).config(model_key=model_key, **settings)


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
