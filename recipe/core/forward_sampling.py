"""Forward sampling: future conversations between the user simulator and the policy (CollabLLM §3.2).

After the policy answers a prompt (the *trained response*), the multiturn-aware reward of that response is
estimated by sampling ``S`` future conversations that start from the prompt history plus the response and
alternate a user-simulator turn and a policy turn. This module holds the parts of that procedure that do
not depend on verl's token plumbing:

* :func:`reasoning_is_well_formed` and :func:`unusable_response_reason` decide whether a response can be
  continued at all; :func:`visible_history` (with the simulator prompt's ``strip_reasoning``) decides what
  the user simulator is shown;
* :class:`TurnLimits` holds ``max_user_turns`` / ``max_assistant_turns``; the optional future-token budget
  (``token_budget`` of :func:`sample_future_conversation`) bounds every token after the prompt;
* :func:`continue_conversation` is the project's one conversation loop between an interaction (the user
  simulator, :class:`collabllm_verl.interactions.base.BaseInteraction`) and a :class:`PolicyChat`
  (implemented by the agent loop over verl's server manager, and by
  :class:`collabllm_verl.recipe.core.litellm_policy.LiteLLMPolicy` over any litellm model);
  :func:`sample_future_conversation` runs it after a trained response;
* :func:`summarize_forward_sampling` builds the ``extra_fields["collabllm"]`` dict read by the reward
  manager (contract in ``docs/architecture.md``).

Everything here is async and never blocks the event loop; the agent loop runs the ``S`` conversations of
one sample concurrently with :func:`asyncio.gather`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from collabllm_verl.interactions.simulator_prompt import strip_reasoning

logger = logging.getLogger(__name__)

REASONING_OPEN = "<think>"
REASONING_CLOSE = "</think>"
_REASONING_TAG = re.compile(r"</?think>", re.IGNORECASE)

# Why forward sampling was skipped for a sample (``skip_reason``).
SKIP_TRUNCATED = "truncated"  # the response hit the token budget without a stop token
SKIP_EMPTY = "empty"  # no visible text once reasoning is removed
SKIP_MALFORMED_THINK = "malformed_think"  # unbalanced / nested / out-of-order <think> tags
SKIP_REPEATED_THINK = "repeated_think"  # more than one reasoning block
SKIP_EMPTY_THINK = "empty_think"  # a reasoning block with nothing (or only whitespace) inside

# Why one future conversation ended (``end_reasons``).
END_TERMINATED = "terminated"  # the user simulator sent the termination signal
END_TURN_LIMIT = "turn_limit"  # max_user_turns or max_assistant_turns reached
END_SIMULATOR_FAILURE = "simulator_failure"  # the user simulator failed (after the LLM layer's retries)
END_CONTEXT_LIMIT = "context_limit"  # the policy's context window has no room for another reply
END_TOKEN_BUDGET = "token_budget"  # the future-token budget (everything after the prompt) is spent


def reasoning_is_well_formed(text: str, *, opened_in_prompt: bool = False) -> bool:
    """True when the ``<think>`` tags of ``text`` form zero or more complete, non-nested blocks.

    Args:
        text: a decoded assistant message.
        opened_in_prompt: the generation prompt already ended with an open ``<think>`` (templates of
            reasoning models such as DeepSeek-R1 or Qwen3-thinking do this), so the message is expected to
            start inside a reasoning block.

    Returns:
        False for a block that is never closed, a ``</think>`` without an opening tag, or nested tags.
    """
    tags = _REASONING_TAG.findall(text)
    if opened_in_prompt:
        tags = [REASONING_OPEN, *tags]
    expected_open = True
    for tag in tags:
        if (tag.lower() == REASONING_OPEN) != expected_open:
            return False
        expected_open = not expected_open
    return expected_open


def _reasoning_blocks(text: str, *, opened_in_prompt: bool) -> list[str]:
    """The contents of the reasoning blocks of a well-formed ``text`` (see :func:`reasoning_is_well_formed`)."""
    if opened_in_prompt:
        text = REASONING_OPEN + text
    return re.findall(r"<think>(.*?)</think>", text, re.S | re.I)


def unusable_response_reason(
    text: str, *, truncated: bool, opened_in_prompt: bool = False
) -> str | None:
    """Why a trained response cannot be continued by forward sampling, or None when it can.

    Args:
        text: the decoded response (special tokens removed, reasoning kept).
        truncated: generation stopped at the token budget (``rollout.response_length``) without a stop token.
        opened_in_prompt: see :func:`reasoning_is_well_formed`.

    Returns:
        Checked in this order: :data:`SKIP_TRUNCATED`; :data:`SKIP_MALFORMED_THINK` (unbalanced, nested or
        out-of-order tags); :data:`SKIP_REPEATED_THINK` (more than one reasoning block);
        :data:`SKIP_EMPTY_THINK` (a block with only whitespace inside, e.g. ``<think></think>``);
        :data:`SKIP_EMPTY` (no visible text once reasoning is removed); or None. The original recipe
        continues none of these responses (docs/design.md §1).
    """
    if truncated:
        return SKIP_TRUNCATED
    if not reasoning_is_well_formed(text, opened_in_prompt=opened_in_prompt):
        return SKIP_MALFORMED_THINK
    blocks = _reasoning_blocks(text, opened_in_prompt=opened_in_prompt)
    if len(blocks) > 1:
        return SKIP_REPEATED_THINK
    if blocks and not blocks[0].strip():
        return SKIP_EMPTY_THINK
    if not strip_reasoning(text):
        return SKIP_EMPTY
    return None


@dataclass(frozen=True)
class TurnLimits:
    """Length limits of one future conversation (``actor_rollout_ref.rollout.multi_turn``).

    Attributes:
        max_user_turns: most simulator (user) turns in the future conversation (w in the paper), or None for
            no limit of this kind.
        max_assistant_turns: most assistant turns counting the trained response, or None for no limit of
            this kind.

    A user turn is taken whenever ``max_user_turns`` allows one, a policy reply whenever
    ``max_assistant_turns`` allows one. So ``max_user_turns=2, max_assistant_turns=3`` gives
    ``A1 U1 A2 U2 A3`` (the shape of the original TRL code) and ``max_assistant_turns=2`` gives
    ``A1 U1 A2 U2`` (the futures the verl recipe judged), where ``A1`` is the trained response.
    ``max_user_turns=0`` is the forward window w = 0: no future, the scored conversation ends with the
    trained response (the single-turn baseline of the paper's ablation).

    Raises:
        ValueError: both limits are None, ``max_user_turns`` < 0 or ``max_assistant_turns`` < 1.
    """

    max_user_turns: int | None
    max_assistant_turns: int | None

    def __post_init__(self) -> None:
        if self.max_user_turns is None and self.max_assistant_turns is None:
            raise ValueError(
                "forward sampling needs actor_rollout_ref.rollout.multi_turn.max_user_turns or "
                "max_assistant_turns to be set (both are null); the paper uses max_user_turns=2"
            )
        for name, least in (("max_user_turns", 0), ("max_assistant_turns", 1)):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < least):
                raise ValueError(
                    f"actor_rollout_ref.rollout.multi_turn.{name} must be an integer >= {least}, got {value!r}"
                )

    def allows_user_turn(self, user_turns: int) -> bool:
        """True when one more user turn fits after ``user_turns`` user turns."""
        return self.max_user_turns is None or user_turns < self.max_user_turns

    def allows_assistant_turn(self, assistant_turns: int) -> bool:
        """True when one more policy reply fits after ``assistant_turns`` assistant turns."""
        return self.max_assistant_turns is None or assistant_turns < self.max_assistant_turns


class PolicyChat(Protocol):
    """The policy side of one conversation (the agent loop implements it over verl's server manager;
    :class:`collabllm_verl.recipe.core.litellm_policy.LiteLLMPolicy` over any litellm model).

    Each conversation gets its own ``PolicyChat``, which keeps that conversation's state.
    """

    @property
    def tokens_after_prompt(self) -> int:
        """Tokens of the policy's context after the prompt: the trained response, the user turns as the
        chat template renders them, and the replies (what the future-token budget counts)."""

    @property
    def last_reply_truncated(self) -> bool:
        """True when the last :meth:`reply` used all of its ``max_new_tokens`` without a stop token."""

    async def add_user_message(self, content: str) -> None:
        """Append a user message to the policy's context."""

    async def reply(self, max_new_tokens: int | None = None) -> str | None:
        """Generate the policy's next message (decoded, reasoning kept), at most ``max_new_tokens`` tokens
        (None: the policy's own per-turn limit); None when the context window is full."""


@dataclass
class FutureConversation:
    """One forward-sampled conversation.

    Attributes:
        messages: prompt history (no system messages), the trained response, then the future turns; assistant
            messages have their reasoning removed.
        future_turns: user + assistant messages added after the trained response.
        end_reason: one of ``END_*``.
        error: the simulator failure's description when ``end_reason == "simulator_failure"``.
    """

    messages: list[dict[str, str]]
    future_turns: int = 0
    end_reason: str = END_TURN_LIMIT
    error: str | None = None


def visible_history(history: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The prompt messages as the user simulator sees them: no system messages, no reasoning blocks.

    Args:
        history: ``{"role", "content"}`` messages (dicts, or mappings from a dataset row).

    Raises:
        ValueError: a message lacks ``role`` or has non-string ``content``.
    """
    visible = []
    for index, message in enumerate(history):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError(
                f"raw_prompt[{index}] must be a {{'role': str, 'content': str}} message, got {dict(message)!r}"
            )
        if role == "system":
            continue
        visible.append({"role": role, "content": strip_reasoning(content) if role == "assistant" else content})
    return visible


def _failure_from_metadata(metadata: Any) -> str | None:
    """The failure an interaction reported in ``generate_response``'s metadata (``simulator_failed``,
    ``error``; see :class:`collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction`)."""
    if isinstance(metadata, Mapping) and metadata.get("simulator_failed"):
        return str(metadata.get("error") or "user simulator failed")
    return None


async def sample_future_conversation(
    *,
    history: Sequence[Mapping[str, Any]],
    response: str,
    policy: PolicyChat,
    interaction: Any,
    interaction_kwargs: Mapping[str, Any],
    limits: TurnLimits,
    token_budget: int | None = None,
) -> FutureConversation:
    """Run one future conversation after the trained response (forward sampling, paper §3.2).

    The conversation starts from the prompt history plus the trained response (one assistant turn already
    counted against ``limits.max_assistant_turns``) and continues with :func:`continue_conversation`.

    Args:
        history: the prompt messages (``{"role", "content"}``); system messages are dropped.
        response: the decoded trained response (reasoning kept; it is stripped here).
        policy: this conversation's policy side, whose context already holds the history and the response.
        interaction: a ``BaseInteraction`` (the user simulator).
        interaction_kwargs: the row's ``extra_info["interaction_kwargs"]`` (hidden goal, task description).
        limits: turn limits.
        token_budget: tokens allowed after the prompt (>= 1), or None for no budget.

    Returns:
        The finished :class:`FutureConversation` (see :func:`continue_conversation`).

    Raises:
        ValueError: ``token_budget`` is not None and < 1.
    """
    messages = visible_history(history)
    messages.append({"role": "assistant", "content": strip_reasoning(response)})
    return await continue_conversation(
        messages=messages,
        policy=policy,
        interaction=interaction,
        interaction_kwargs=interaction_kwargs,
        limits=limits,
        assistant_turns=1,
        token_budget=token_budget,
    )


async def continue_conversation(
    *,
    messages: list[dict[str, str]],
    policy: PolicyChat,
    interaction: Any,
    interaction_kwargs: Mapping[str, Any],
    limits: TurnLimits,
    user_turns: int = 0,
    assistant_turns: int = 0,
    token_budget: int | None = None,
) -> FutureConversation:
    """The one conversation loop of the project: alternate user-simulator turns and policy replies.

    Used for forward sampling during training (after the trained response), for evaluation (from an empty
    history: the simulator writes the opener) and for data generation. The conversation alternates a
    user-simulator turn (``interaction.generate_response``) and a policy reply (``policy.reply``). It ends
    when

    * the simulator's message contains its termination signal (``terminated``); that message is kept as
      the conversation's last user turn, so the judges and ``token_amount`` see it, as in the originals;
    * a turn limit is reached (``turn_limit``; see :class:`TurnLimits` for the shapes this gives);
    * the future-token budget is spent (``token_budget``): ``token_budget`` bounds every token after the
      prompt in the policy's tokenization (``policy.tokens_after_prompt``: the trained response, user turns
      and replies together), as the verl recipe bounded them by ``response_length``. A reply may use at
      most the tokens left; a reply cut by that cap is dropped; no user turn is asked for once nothing is
      left, and a user turn that spends the rest is kept;
    * the policy's context window is full (``context_limit``);
    * the simulator fails (``simulator_failure``).

    The simulator gets its own interaction instance (``start_interaction`` / ``finalize_interaction``) so
    concurrent conversations never share state, and it only sees non-system messages with reasoning removed.

    Args:
        messages: the visible conversation so far (no system messages, reasoning removed), possibly empty;
            it is extended in place and becomes the result's ``messages``. The policy's own context must
            already hold the same turns. When it ends with a user message (an evaluation task's fixed
            opener), the policy replies first.
        policy: this conversation's policy side.
        interaction: a ``BaseInteraction`` (the user simulator).
        interaction_kwargs: the hidden goal and task description (``single_turn_prompt``, ``task_desc``).
        limits: turn limits; ``user_turns`` / ``assistant_turns`` say how many of each ``messages`` already
            counts against them (forward sampling counts the trained response as one assistant turn).
        token_budget: tokens allowed after the prompt (>= 1), or None for no budget.

    Returns:
        The finished :class:`FutureConversation`; ``future_turns`` counts the messages this call added.
        Simulator errors are caught and reported in it; errors of the policy propagate.

    Raises:
        ValueError: ``token_budget`` is not None and < 1.
    """
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"token_budget must be >= 1 or None, got {token_budget!r}")
    conversation = FutureConversation(messages=messages)

    def tokens_left() -> int | None:
        return None if token_budget is None else token_budget - policy.tokens_after_prompt

    def end(reason: str) -> FutureConversation:
        conversation.end_reason = reason
        return conversation

    try:
        instance_id = await interaction.start_interaction(instance_id=None, **dict(interaction_kwargs))
    except Exception as exc:  # noqa: BLE001  (a simulator failure ends this conversation only)
        logger.warning("user simulator failed to start a conversation: %s", exc)
        conversation.error = f"{type(exc).__name__}: {exc}"
        return end(END_SIMULATOR_FAILURE)

    # a history that ends with a user turn (an evaluation task's fixed opener) gets the policy's reply first
    policy_first = bool(messages) and messages[-1].get("role") == "user"
    try:
        while policy_first or limits.allows_user_turn(user_turns):
            if policy_first:
                policy_first = False
                if not limits.allows_assistant_turn(assistant_turns):
                    return end(END_TURN_LIMIT)
            else:
                if token_budget is not None and tokens_left() < 1:
                    return end(END_TOKEN_BUDGET)
                try:
                    should_terminate, user_text, _score, metadata = await interaction.generate_response(
                        instance_id, [dict(m) for m in messages]
                    )
                except Exception as exc:  # noqa: BLE001  (same: never crash the batch)
                    logger.warning("user simulator failed in a conversation: %s", exc)
                    conversation.error = f"{type(exc).__name__}: {exc}"
                    return end(END_SIMULATOR_FAILURE)
                failure = _failure_from_metadata(metadata)
                if failure is not None:
                    conversation.error = failure
                    return end(END_SIMULATOR_FAILURE)

                messages.append({"role": "user", "content": str(user_text)})
                user_turns += 1
                conversation.future_turns += 1
                if should_terminate:
                    return end(END_TERMINATED)
                if not limits.allows_assistant_turn(assistant_turns):
                    return end(END_TURN_LIMIT)
                await policy.add_user_message(str(user_text))
            left = tokens_left()
            if left is not None and left < 1:
                return end(END_TOKEN_BUDGET)
            reply = await policy.reply(max_new_tokens=left)
            if reply is None:
                return end(END_CONTEXT_LIMIT)
            if left is not None and policy.last_reply_truncated:
                return end(END_TOKEN_BUDGET)  # the reply hit the budget: dropped
            messages.append({"role": "assistant", "content": strip_reasoning(reply)})
            assistant_turns += 1
            conversation.future_turns += 1
        return end(END_TURN_LIMIT)
    finally:
        try:
            await interaction.finalize_interaction(instance_id)
        except Exception as exc:  # noqa: BLE001  (cleanup problems must not hide the conversation)
            logger.warning("finalize_interaction failed for %s: %s", instance_id, exc)


@dataclass
class ForwardSamplingSummary:
    """The ``extra_fields["collabllm"]`` payload of one sample (see ``docs/architecture.md``)."""

    future_conversations: list[list[dict[str, str]]] = field(default_factory=list)
    num_history_messages: int = 0
    forward_sampling_skipped: bool = False
    skip_reason: str | None = None
    simulator_failures: int = 0
    future_turns: list[int] = field(default_factory=list)
    end_reasons: list[str] = field(default_factory=list)
    early_terminations: int = 0
    forward_sampling_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form stored in ``AgentLoopOutput.extra_fields["collabllm"]``."""
        return {
            "future_conversations": self.future_conversations,
            "num_history_messages": self.num_history_messages,
            "forward_sampling_skipped": self.forward_sampling_skipped,
            "skip_reason": self.skip_reason,
            "simulator_failures": self.simulator_failures,
            "future_turns": self.future_turns,
            "end_reasons": self.end_reasons,
            "early_terminations": self.early_terminations,
            "forward_sampling_seconds": self.forward_sampling_seconds,
        }


def summarize_forward_sampling(
    conversations: Sequence[FutureConversation], *, num_history_messages: int, seconds: float
) -> ForwardSamplingSummary:
    """Collect ``S`` finished conversations into the reward manager's payload.

    Args:
        conversations: the finished future conversations of one sample.
        num_history_messages: non-system prompt messages before the trained response.
        seconds: wall-clock seconds spent on forward sampling for this sample.
    """
    return ForwardSamplingSummary(
        future_conversations=[c.messages for c in conversations],
        num_history_messages=num_history_messages,
        simulator_failures=sum(c.end_reason == END_SIMULATOR_FAILURE for c in conversations),
        future_turns=[c.future_turns for c in conversations],
        end_reasons=[c.end_reason for c in conversations],
        early_terminations=sum(c.end_reason == END_TERMINATED for c in conversations),
        forward_sampling_seconds=float(seconds),
    )


def skipped_forward_sampling(reason: str, *, num_history_messages: int) -> ForwardSamplingSummary:
    """The payload of a sample whose trained response was unusable (no future conversations)."""
    return ForwardSamplingSummary(
        num_history_messages=num_history_messages, forward_sampling_skipped=True, skip_reason=reason
    )
