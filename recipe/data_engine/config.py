"""Settings of the conversation search and the shared objects it runs with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collabllm_verl.metrics import MetricSpec
from collabllm_verl.recipe.core.forward_sampling import TurnLimits
from collabllm_verl.recipe.core.llm_client import LLMSettings
from collabllm_verl.recipe.core.multiturn_reward import RewardSettings

__all__ = ["PROACTIVE_INSTRUCTION", "Engine", "EngineConfig"]

# Added to the system prompt of the proactive share of the candidates (written for this project).
PROACTIVE_INSTRUCTION = """\
Before replying, check whether the request gives you what you need for a good result.
- If an important detail is missing or ambiguous, ask one or two specific clarifying questions instead of
  guessing, and where it helps offer concrete options the person can choose from.
- Once the request is clear, do the work, then propose a specific next step or follow-up.
- Keep the reply short and easy to read: no filler, no repeating what the person already said."""


@dataclass(frozen=True)
class EngineConfig:
    """How conversations are searched (defaults: the original data engine's).

    Attributes:
        num_candidates: K, candidate replies per assistant turn (>= 1; DPO pairs need >= 2).
        proactive_share: share of the K candidates whose system prompt adds :data:`PROACTIVE_INSTRUCTION`
            (in [0, 1]; ``round(K * share)`` candidates, halves rounded up, the first ones).
        num_samples: S, forward-sampled conversations per candidate (>= 1).
        max_new_turns: messages a forward-sampled conversation adds after the candidate (an even number
            >= 2: user and assistant turns come in pairs; 4 gives ``candidate, U, A, U, A``).
        max_total_turns: most messages in a built conversation (>= 2; 14 = 7 user + 7 assistant turns).
        system_prompt: system prompt of the non-proactive candidates and of the assistant in the
            forward-sampled conversations (None: no system prompt, as the original data engine).
        proactive_instruction: the text added for the proactive candidates.

    Raises:
        ValueError: a value out of range (the message names the flag).
    """

    num_candidates: int = 3
    proactive_share: float = 0.5
    num_samples: int = 3
    max_new_turns: int = 4
    max_total_turns: int = 14
    system_prompt: str | None = None
    proactive_instruction: str = PROACTIVE_INSTRUCTION

    def __post_init__(self) -> None:
        checks = {
            "--num_candidates must be >= 1": self.num_candidates >= 1,
            "--proactive_share must be in [0, 1]": 0.0 <= self.proactive_share <= 1.0,
            "--num_samples must be >= 1": self.num_samples >= 1,
            "--max_new_turns must be an even number >= 2 (user and assistant turns come in pairs)": (
                self.max_new_turns >= 2 and self.max_new_turns % 2 == 0
            ),
            "--max_total_turns must be >= 2": self.max_total_turns >= 2,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(message)

    @property
    def num_proactive(self) -> int:
        """Candidates with the proactive instruction: ``round(K * share)``, halves rounded up."""
        return int(self.num_candidates * self.proactive_share + 0.5)

    def candidate_system_prompt(self, index: int) -> str | None:
        """System prompt of candidate ``index`` (0-based): proactive for the first :attr:`num_proactive`."""
        if index >= self.num_proactive:
            return self.system_prompt
        if not self.system_prompt:
            return self.proactive_instruction
        return f"{self.system_prompt}\n\n{self.proactive_instruction}"

    def future_limits(self) -> TurnLimits:
        """Turn limits of one forward-sampled conversation (the candidate counts as one assistant turn)."""
        pairs = self.max_new_turns // 2
        return TurnLimits(max_user_turns=pairs, max_assistant_turns=pairs + 1)


@dataclass(frozen=True)
class Engine:
    """The objects a conversation search runs with, shared by all tasks of a process.

    Attributes:
        config: the search settings.
        interaction: the user simulator (a ``BaseInteraction``; one object serves every conversation).
        assistant: the model that proposes candidates and plays the assistant in forward sampling.
        reward: metric weights, judge and metric options (the MR of training).
        metrics: the resolved metrics (:func:`collabllm_verl.recipe.core.multiturn_reward.resolve_settings`).
    """

    config: EngineConfig
    interaction: Any
    assistant: LLMSettings
    reward: RewardSettings
    metrics: Mapping[str, MetricSpec]
