"""The ``collabllm`` reward manager: verl's adapter over the multiturn-aware reward core.

For each response, the agent loop has already run S forward-sampled future conversations
(``extra_fields["collabllm"]``, docs/architecture.md). This manager reads them from verl's ``DataProto``,
validates them (``ForwardSamples``), scores and aggregates them with
:func:`collabllm_verl.recipe.core.multiturn_reward.score_sample`, optionally writes the conversation dump, and
returns the reward with its breakdown (``mr/`` and ``fs/`` keys) as ``reward_extra_info``.

Every response also produces a :class:`~collabllm_verl.recipe.verl_adapters.step_summary.ResponseReport`, sent to the
trainer's driver through the step ledger (``recipe/verl_adapters/step_ledger.py``): there the recipe's replay buffer
(``recipe/verl_adapters/replay_buffer.py``) logs the breakdown as training metrics every step, enforces the failure
budget and stops the run on non-transient errors. Outages (docs/metrics_and_reward.md, "Failures"):

* a response whose reward could not be computed because of a judge or simulator outage
  (:attr:`SampleScore.excluded`) raises :class:`ResponseExcluded` after its report is sent; verl 0.9.1's
  ``AgentLoopWorkerTQ._run_prompt`` then drops it from its group and the step trains on the rest;
* any other error (bad data such as a missing ground truth, a bad metric option met at run time) is
  reported as ``fatal`` and raised; the driver stops training with it.

Configuration: ``reward.reward_manager.name=collabllm`` and ``reward.reward_kwargs`` (the keys of
:class:`~collabllm_verl.recipe.core.multiturn_reward.RewardSettings`); the recipe config
``config/collabllm_rl.yaml`` sets both, e.g. overridden with::

    reward.reward_kwargs.metric_weights.accuracy=1
    ++reward.reward_kwargs.llm_judge_kwargs.model=anthropic/claude-3-5-sonnet-latest
    ++reward.reward_kwargs.skip_penalty=-0.2

The original README's ``+reward_model.reward_kwargs.*`` form is translated by the recipe's entry point
(:mod:`collabllm_verl.recipe.verl_adapters.overrides`) before the config is composed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from collabllm_verl.recipe.core.multiturn_reward import (
    ForwardSamples,
    RewardSettings,
    SampleScore,
    resolve_settings,
    score_sample,
)
from collabllm_verl.recipe.core.reward_diagnostics import response_diagnostics
from collabllm_verl.recipe.verl_adapters.conversation_dump import (
    ConversationDumpWriter,
    decoded_response,
    sample_record,
)
from collabllm_verl.recipe.verl_adapters.step_ledger import LedgerClient
from collabllm_verl.recipe.verl_adapters.step_summary import ResponseReport

__all__ = ["CollabLLMRewardManager", "ResponseExcluded", "collabllm_fields"]

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


class ResponseExcluded(RuntimeError):
    """Raised by :meth:`CollabLLMRewardManager.run_single` for a response that an outage left without a
    reward; verl drops the sample from its group (module docstring). The message says why."""


def _value(non_tensor: Mapping[str, Any], key: str) -> Any:
    value = non_tensor.get(key)
    return value.item() if hasattr(value, "item") else value


def _value_mapping(non_tensor: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = non_tensor.get(key)
    return value if isinstance(value, Mapping) else {}


@register("collabllm")
class CollabLLMRewardManager(RewardManagerBase):
    """verl reward-loop manager computing the multiturn-aware reward (see the module docstring).

    Constructed by verl's ``load_reward_manager`` in each reward-loop worker with the full trainer
    config; settings are validated here, so a bad metric name or option fails at start-up.

    Args:
        config: verl's trainer config (``reward.reward_kwargs``).
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
        dump = self.settings.conversation_dump  # reward_kwargs.conversation_dump; None unless configured
        self.conversation_dump = ConversationDumpWriter(dump) if dump is not None else None
        self.ledger = LedgerClient()
        logger.info(
            "collabllm reward: weights=%s failure_policy=%s skip_penalty=%s judge=%s",
            self.settings.metric_weights,
            self.settings.failure_policy,
            self.settings.skip_penalty,
            self.settings.judge,  # LLMSettings.__repr__ masks the API key
        )

    def _context(self) -> dict[str, Any]:
        """The settings the driver needs to judge a step (:class:`ResponseReport`.context)."""
        judge, dump = self.settings.judge, self.settings.conversation_dump
        return {
            "metric_weights": dict(self.settings.metric_weights),
            "max_failure_rate": self.settings.max_failure_rate,
            "judge": judge.describe() if judge is not None else None,
            "dump_dir": dump.dir if dump is not None else None,
        }

    async def run_single(self, data: DataProto) -> dict:
        """Reward of the last sequence of ``data`` (one trajectory), as verl's reward loop expects.

        Returns:
            ``{"reward_score": float, "reward_extra_info": dict[str, float]}``; the extra info holds the
            reward breakdown (:meth:`SampleScore.extra_info`, ``mr/``) and the forward-sampling counters
            (:meth:`ForwardSamples.extra_info`, ``fs/``).

        Raises:
            ResponseExcluded: an outage left the response without a reward (it is reported first).
            ValueError, TypeError, ...: bad data or configuration (reported as ``fatal`` first).
        """
        item = data[len(data) - 1]
        non_tensor = item.non_tensor_batch
        report = ResponseReport(
            step=_value(non_tensor, "global_steps"),
            uid=_value(non_tensor, "uid"),
            session_id=_value(non_tensor, "session_id"),
            data_source=_value(non_tensor, "data_source"),
            context=self._context(),
        )
        try:
            samples, score = await self._score(item)
        except Exception as exc:
            report.fatal = f"{type(exc).__name__}: {exc}"
            await self.ledger.report(report)
            raise
        report.score, report.sampling = score, samples.stats()
        report.diagnostics = response_diagnostics(
            samples.conversations,
            samples.num_history_messages,
            _value_mapping(non_tensor, "extra_info"),
            score.per_conversation,
            self.settings.metric_weights,
            response=None if samples.conversations else decoded_response(item, self.tokenizer),
        )
        if self.conversation_dump is not None:
            await self.conversation_dump.awrite(
                sample_record(item, samples, score, self.settings.metric_weights, self.tokenizer)
            )
        await self.ledger.report(report)
        if score.excluded:
            logger.warning("collabllm reward: response left out of the policy gradient: %s", score.excluded)
            raise ResponseExcluded(f"collabllm reward: response left out of the policy gradient: {score.excluded}")
        return {"reward_score": float(score.reward), "reward_extra_info": report.columns}

    async def _score(self, item: Any) -> tuple[ForwardSamples, SampleScore]:
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
        return samples, score
