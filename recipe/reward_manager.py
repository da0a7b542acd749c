"""The ``collabllm`` reward manager: verl's adapter over the multiturn-aware reward core.

For each response, the agent loop has already run S forward-sampled future conversations
(``extra_fields["collabllm"]``, docs/architecture.md). This manager reads them from verl's ``DataProto``,
validates them (``ForwardSamples``), scores and aggregates them with
:func:`collabllm_verl.recipe.multiturn_reward.score_sample`, optionally writes the conversation dump, and
returns the reward with its breakdown (``mr/`` and ``fs/`` keys) as ``reward_extra_info``. verl 0.9.1's
default (v1) trainer logs ``reward_extra_info`` only during validation (``val-aux/...``), not on training
steps; the training-time breakdown is the ``[collabllm reward]`` console line, ``summary.jsonl`` and the
conversation dump (docs/metrics_and_reward.md).

Configuration (Hydra overrides of ``verl.trainer.main_ppo``)::

    reward.reward_manager.name=collabllm
    +reward.reward_kwargs.metric_weights.accuracy=1
    +reward.reward_kwargs.metric_weights.interactivity=1
    +reward.reward_kwargs.metric_weights.token_amount=-0.0001
    +reward.reward_kwargs.llm_judge_kwargs.model=gpt-4o-mini
    +reward.reward_kwargs.failure_policy=drop          # optional
    +reward.reward_kwargs.skip_penalty=-1.0            # optional
    +reward.reward_kwargs.metric_kwargs.token_amount.unit=tokens   # optional, per-metric options

The original README's ``+reward_model.reward_kwargs.*`` form is accepted too (with a warning); where a
key is given both ways, ``reward.reward_kwargs`` wins.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from collabllm_verl.recipe.conversation_dump import sample_record, writer_from_trainer_config
from collabllm_verl.recipe.multiturn_reward import (
    ForwardSamples,
    RewardSettings,
    resolve_settings,
    score_sample,
)

__all__ = ["CollabLLMRewardManager", "collabllm_fields"]

logger = logging.getLogger(__name__)


def collabllm_fields(data_item: Any) -> Mapping[str, Any]:
    """The ``collabllm`` extra fields of one ``DataProtoItem``.

    verl's agent loop passes an output's ``extra_fields`` as ``non_tensor_batch["tool_extra_fields"]``
    when the reward is computed inside the rollout (the usual case); a batch-level reward computation
    sees each extra field as its own column (``non_tensor_batch["collabllm"]``). Both are accepted.

    Raises:
        ValueError: neither is present (the rows did not run the ``collabllm_agent`` agent loop).
    """
    non_tensor = data_item.non_tensor_batch
    tool_fields = non_tensor.get("tool_extra_fields")
    if isinstance(tool_fields, Mapping) and tool_fields.get("collabllm") is not None:
        return tool_fields["collabllm"]
    if isinstance(non_tensor.get("collabllm"), Mapping):
        return non_tensor["collabllm"]
    raise ValueError(
        "sample has no forward-sampling result (extra_fields['collabllm']); the collabllm reward manager "
        "needs rows run by the collabllm_agent agent loop (agent_name column)"
    )


@register("collabllm")
class CollabLLMRewardManager(RewardManagerBase):
    """verl reward-loop manager computing the multiturn-aware reward (see the module docstring).

    Constructed by verl's ``load_reward_manager`` in each reward-loop worker with the full trainer
    config; settings are validated here, so a bad metric name or option fails at start-up.

    Args:
        config: verl's trainer config (``reward.reward_kwargs`` / legacy ``reward_model.reward_kwargs``).
        tokenizer: the policy tokenizer (used by ``token_amount`` with ``unit=tokens``).
        compute_score: verl's default score function; unused (metrics come from the registry).
        reward_router_address, reward_model_tokenizer: passed by verl; unused.

    Raises:
        TypeError, ValueError, UnknownMetricError, ImportError: see :func:`resolve_settings` and
            :meth:`RewardSettings.from_reward_kwargs`.
    """

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        self.settings = RewardSettings.from_trainer_config(config)
        self.specs = resolve_settings(self.settings)
        self.conversation_dump = writer_from_trainer_config(config)  # None unless configured
        logger.info(
            "collabllm reward: weights=%s failure_policy=%s skip_penalty=%s judge=%s",
            self.settings.metric_weights,
            self.settings.failure_policy,
            self.settings.skip_penalty,
            self.settings.judge,  # LLMSettings.__repr__ masks the API key
        )

    async def run_single(self, data: DataProto) -> dict:
        """Reward of the last sequence of ``data`` (one trajectory), as verl's reward loop expects.

        Returns:
            ``{"reward_score": float, "reward_extra_info": dict[str, float]}``; the extra info holds the
            reward breakdown (:meth:`SampleScore.extra_info`, ``mr/``) and the forward-sampling counters
            (:meth:`ForwardSamples.extra_info`, ``fs/``).
        """
        item = data[len(data) - 1]
        non_tensor = item.non_tensor_batch
        samples = ForwardSamples.from_extra_fields(collabllm_fields(item))
        reward_model = non_tensor.get("reward_model")
        if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
            raise ValueError("sample has no reward_model.ground_truth (dataset column 'reward_model')")
        extra_info = non_tensor.get("extra_info")
        score = await score_sample(
            self.settings,
            self.specs,
            samples,
            ground_truth=reward_model["ground_truth"],
            extra_info=extra_info if isinstance(extra_info, Mapping) else {},
            data_source=non_tensor.get("data_source"),
            tokenizer=self.tokenizer,
        )
        if self.conversation_dump is not None:
            await self.conversation_dump.awrite(
                sample_record(item, samples, score, self.settings.metric_weights, self.tokenizer)
            )
        return {
            "reward_score": float(score.reward),
            "reward_extra_info": {**score.extra_info(), **samples.extra_info()},
        }
