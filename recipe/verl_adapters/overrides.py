"""The command-line forms of the original CollabLLM recipe and the verl blog post, translated in one place.

Those command lines configure the reward with verl's older ``reward_model.*`` keys, add keys with ``+``
that the recipe config (``config/collabllm_rl.yaml``) already defines, call the judge's endpoint
``base_url`` and put an API key on the command line. :func:`translate_overrides` rewrites them into the
recipe's keys before Hydra parses them, so that they keep working and the key never reaches the config that
verl prints:

==========================================================  ==================================================
given                                                        becomes
==========================================================  ==================================================
``reward_model.reward_manager=X``                            ``reward.reward_manager.name=X``
``+reward_model.reward_kwargs.K=V``                          ``++reward.reward_kwargs.K=V``; dropped (with a
                                                             note) when ``reward.reward_kwargs.K`` is given too
``+a.b=V`` (a dotted key the recipe config may define)       ``++a.b=V`` (add or override)
``...llm_judge_kwargs.base_url=V``                           ``...llm_judge_kwargs.api_base=V`` (unless
                                                             ``api_base`` is given too)
``...llm_judge_kwargs.api_key=V``, ``...user_simulator.api_key=V``  the key goes into the environment
                                                             (:data:`KEY_ENV`), the override names the variable:
                                                             ``++...api_key_env=<VAR>``
==========================================================  ==================================================

A Hydra group append (``+group=option``, no dot in the key), deletions (``~key``) and flags pass unchanged.
No verl import.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field

__all__ = ["KEY_ENV", "Translation", "translate_overrides"]

JUDGE = "reward.reward_kwargs.llm_judge_kwargs"
SIMULATOR = "actor_rollout_ref.rollout.custom.user_simulator"
KEY_ENV = {JUDGE: "COLLABLLM_JUDGE_API_KEY", SIMULATOR: "COLLABLLM_USER_API_KEY"}
"""Environment variable that carries the API key given on the command line, per LLM role."""

_LEGACY_KWARGS = "reward_model.reward_kwargs."
_CURRENT_KWARGS = "reward.reward_kwargs."


@dataclass
class Translation:
    """The result of :func:`translate_overrides`.

    Attributes:
        overrides: the Hydra arguments to pass on, in the given order.
        env: environment variables to set before the trainer starts (API keys moved off the command line).
        notes: one line per rewrite worth telling the user (never a key's value).
    """

    overrides: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def apply_env(self, environ: MutableMapping[str, str]) -> None:
        """Set :attr:`env` in ``environ`` (e.g. ``os.environ``)."""
        environ.update(self.env)


def _split(arg: str) -> tuple[str, str, str | None]:
    """``"++a.b=1"`` -> ``("++", "a.b", "1")``; a flag or a bare word -> ``("", arg, None)``."""
    if "=" not in arg or arg.startswith("-"):
        return "", arg, None
    key, value = arg.split("=", 1)
    prefix = key[: len(key) - len(key.lstrip("+~"))]
    return prefix, key[len(prefix):], value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def translate_overrides(args: Iterable[str]) -> Translation:
    """Rewrite the original recipe's and the blog's override forms into the recipe's (see the module docstring).

    Args:
        args: command-line arguments after the program name (Hydra overrides and flags such as ``--cfg job``).

    Returns:
        The arguments to pass to Hydra, the environment to set, and notes for the user.
    """
    args = list(args)
    given = {_split(a)[1] for a in args if _split(a)[2] is not None}  # keys as written
    normalized = {_CURRENT_KWARGS + k[len(_LEGACY_KWARGS):] if k.startswith(_LEGACY_KWARGS) else k for k in given}
    out = Translation()
    for arg in args:
        prefix, key, value = _split(arg)
        if value is None or prefix.startswith("~"):
            out.overrides.append(arg)
            continue
        if key == "reward_model.reward_manager":
            key, prefix = "reward.reward_manager.name", ""
        elif key.startswith(_LEGACY_KWARGS):
            key = _CURRENT_KWARGS + key[len(_LEGACY_KWARGS):]
            if key in given:
                out.notes.append(f"ignoring the legacy override of {key}: the reward.reward_kwargs form is also given")
                continue
            prefix = "++"
        if prefix == "+" and "." in key:
            prefix = "++"
        role, _, leaf = key.rpartition(".")
        if role == JUDGE and leaf == "base_url":
            if f"{JUDGE}.api_base" in normalized:
                continue
            key = f"{JUDGE}.api_base"
        if role in KEY_ENV and leaf == "api_key":
            out.env[KEY_ENV[role]] = _unquote(value)
            out.notes.append(f"the API key of {role} from the command line is passed in ${KEY_ENV[role]} (not printed)")
            key, value = f"{role}.api_key_env", KEY_ENV[role]
            prefix = "++"
        out.overrides.append(f"{prefix}{key}={value}")
    return out
