"""A :class:`~collabllm_verl.recipe.core.forward_sampling.PolicyChat` over any litellm model.

Evaluation and data generation talk to the model under test (or to the assistant that proposes candidate
replies) through the same conversation loop that training uses
(:func:`collabllm_verl.recipe.core.forward_sampling.continue_conversation`); this class is the policy side of
that loop when the policy is an API model, a vLLM server (``hosted_vllm/<name>`` with ``api_base``) or a
checkpoint the project serves itself on 127.0.0.1. Every call goes through the LLM layer
(:mod:`collabllm_verl.recipe.core.llm_client`): shared limits, bounded retries, counters under ``purpose``.
No verl import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from collabllm_verl.recipe.core.llm_client import LLMSettings, acomplete_text

__all__ = ["LiteLLMPolicy"]


class LiteLLMPolicy:
    """One conversation's policy side, kept as an OpenAI-style message list.

    Args:
        settings: the policy model and its sampling settings (``temperature``, ``max_tokens``, ...).
        system_prompt: prepended as a system message when not None (the trained assistant's prompt, or a
            candidate-specific instruction in data generation).
        history: the visible conversation so far (``{"role", "content"}``; system messages are ignored,
            the system prompt above is used instead).
        purpose: label of this policy's calls in ``llm_stats()`` and logs (default ``"policy"``).

    ``reply`` raises :class:`collabllm_verl.recipe.core.llm_client.LLMCallError` when the model fails after the
    LLM layer's retries; the conversation loop lets policy errors propagate, so the caller decides how to
    count the failed conversation. It never returns None (an API model reports a full context window as an
    error, not as a short answer). The future-token budget of forward sampling needs the policy's own
    tokenization, which an API model does not expose: use this class with ``token_budget=None``
    (:attr:`tokens_after_prompt` raises ``NotImplementedError``); per-reply limits are ``max_tokens``.
    """

    def __init__(
        self,
        settings: LLMSettings,
        *,
        system_prompt: str | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        purpose: str = "policy",
    ) -> None:
        self.settings = settings
        self.purpose = purpose
        self.messages: list[dict[str, str]] = []
        if system_prompt:
            self.messages.append({"role": "system", "content": system_prompt})
        self.messages.extend(
            {"role": str(m["role"]), "content": str(m["content"])} for m in history if m.get("role") != "system"
        )

    @property
    def tokens_after_prompt(self) -> int:
        """Not available for an API model (see the class docstring)."""
        raise NotImplementedError("LiteLLMPolicy does not count policy tokens; run it without a token budget")

    @property
    def last_reply_truncated(self) -> bool:
        """Always False: the LLM layer returns the text only (a reply cut by ``max_tokens`` is kept)."""
        return False

    async def add_user_message(self, content: str) -> None:
        """Append a user turn to this conversation's context."""
        self.messages.append({"role": "user", "content": content})

    async def reply(self, max_new_tokens: int | None = None) -> str:
        """Ask the model for the next assistant turn, append it to the context and return it (str).

        ``max_new_tokens`` (optional) replaces the settings' ``max_tokens`` for this reply.
        """
        settings = self.settings
        if max_new_tokens is not None:
            kwargs = {**settings.completion_kwargs, "max_tokens": int(max_new_tokens)}
            settings = settings.model_copy(update={"completion_kwargs": kwargs})
        text = await acomplete_text(list(self.messages), settings, purpose=self.purpose)
        self.messages.append({"role": "assistant", "content": text})
        return text
