"""Settings of the conversation search and the shared objects it runs with."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collabllm_verl.metrics import MetricSpec
from collabllm_verl.recipe.core.forward_sampling import TurnLimits
from collabllm_verl.recipe.core.llm_client import LLMSettings
from collabllm_verl.recipe.core.multiturn_reward import RewardSettings

__all__ = ["PROACTIVE_INSTRUCTION", "SCORE_AGGREGATIONS", "SCORE_FORMULAS", "Engine", "EngineConfig"]

# The instruction of the proactive share of the candidates (written for this project). As in the original
# data engine it is a separate instruction: a proactive candidate gets it in place of the system prompt,
# never appended to it (docs/fidelity.md 7).
PROACTIVE_INSTRUCTION = """\
This conversation is a collaboration that may take several turns: a text to write, something to analyse, a
question, a math problem or some code. Write the next reply so that the task as a whole ends well, not
just this turn.
- Work out what the person is after from everything said so far, and keep that context.
- If an important detail is missing or ambiguous, ask specific clarifying questions instead of guessing;
  avoid generic ones such as "anything else?". Where it helps, offer concrete options to choose from.
- Once the request is clear, do the work, then propose a specific next step or ask for feedback on a
  specific point.
- Keep the reply short and easy to read: no filler, no repeating what was already said; match the person's tone,
  and say so when you are unsure."""


# EngineConfig.score_aggregation -> the formula, as the run manifest records it.
SCORE_FORMULAS = {
    "original": "mean over the forward-sampled conversations of sum over metrics of weight * value (no clamp)",
    "training": "sum over metrics of clamp(weight * mean over the forward-sampled conversations, -1, 1)",
}
SCORE_AGGREGATIONS = tuple(SCORE_FORMULAS)


@dataclass(frozen=True)
class EngineConfig:
    """How conversations are searched (defaults: the original data engine's).

    Attributes:
        num_candidates: K, candidate replies per assistant turn (>= 1; DPO pairs need >= 2).
        proactive_share: share of the K candidates given :data:`PROACTIVE_INSTRUCTION` instead of the system
            prompt (in [0, 1]; ``floor(K * share)`` candidates, the first ones, as the original: 1 of 3).
        num_samples: S, forward-sampled conversations per candidate (>= 1).
        max_new_turns: messages a forward-sampled conversation adds after the candidate (an even number
            >= 2: user and assistant turns come in pairs; 4 gives ``candidate, U, A, U, A``).
        max_total_turns: most messages in a built conversation (>= 2; 14 = 7 user + 7 assistant turns).
        system_prompt: system prompt of the non-proactive candidates and of the assistant in the
            forward-sampled conversations (None: no system prompt, as the original data engine).
        proactive_instruction: the instruction of the proactive candidates (their only system message).
        score_aggregation: how a candidate's ``score`` is formed from its forward-sampled conversations:
            ``"original"`` (default, the authors' data engine: the mean over the conversations of
            ``sum of weight * value``, no clamp) or ``"training"`` (the RL reward: ``sum over metrics of
            clamp(weight * mean, -1, 1)``). They agree unless a clamp binds or a metric failed somewhere;
            with ``token_amount`` counted over the whole session the clamp can bind late in a conversation
            (``-0.5 x`` more than 2 thousand tokens) and would then hide the length differences.

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
    score_aggregation: str = "original"

    def __post_init__(self) -> None:
        checks = {
            "--num_candidates must be >= 1": self.num_candidates >= 1,
            "--proactive_share must be in [0, 1]": 0.0 <= self.proactive_share <= 1.0,
            "--num_samples must be >= 1": self.num_samples >= 1,
            "--max_new_turns must be an even number >= 2 (user and assistant turns come in pairs)": (
                self.max_new_turns >= 2 and self.max_new_turns % 2 == 0
            ),
            "--max_total_turns must be >= 2": self.max_total_turns >= 2,
            "--score_aggregation must be 'original' or 'training'": self.score_aggregation in SCORE_AGGREGATIONS,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(message)

    @property
    def num_proactive(self) -> int:
        """Candidates with the proactive instruction: ``floor(K * share)`` (the original's ``int(K * share)``;
        K = 3, share 0.5 -> 1; a tiny epsilon keeps e.g. 3 * (2/3) from rounding down to 1)."""
        return math.floor(self.num_candidates * self.proactive_share + 1e-9)

    def candidate_system_prompt(self, index: int) -> str | None:
        """System message of candidate ``index`` (0-based): the proactive instruction alone for the first
        :attr:`num_proactive`, else :attr:`system_prompt` (None: no system message)."""
        return self.proactive_instruction if index < self.num_proactive else self.system_prompt

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
