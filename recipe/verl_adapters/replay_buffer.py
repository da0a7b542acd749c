"""The recipe's replay buffer: verl's sync ``ReplayBuffer`` plus the per-step reward accounting.

verl 0.9.1's v1 trainer (``verl/trainer/ppo/v1/trainer_base.py``, ``PPOTrainer._build_replay_buffer``)
loads a custom sampler from ``trainer.v1.sampler.custom_sampler.{path,name}``; its ``sample()`` runs on the
trainer's driver after every sampling, returns ``(batch, metrics)`` and the metrics join the step's
training metrics (console, file logger, wandb). ``train_rl_collabllm.sh`` sets::

    trainer.v1.sampler.custom_sampler.path=pkg://collabllm_verl.recipe.verl_adapters.replay_buffer
    trainer.v1.sampler.custom_sampler.name=CollabLLMReplayBuffer

After verl's own sampling, :meth:`CollabLLMReplayBuffer.sample` drains the step ledger
(``recipe/verl_adapters/step_ledger.py``: one report per response, the excluded and failed ones included) and

1. stops training (raises) on a non-transient reward error, when a metric's or the user simulator's
   failure share exceeds ``reward_kwargs.max_failure_rate``, or when every response was excluded
   (:func:`~collabllm_verl.recipe.verl_adapters.step_summary.check_reports`);
2. for training steps, prints the ``[collabllm reward] step N: ...`` line, writes the step's row of
   ``<conversation_dump.dir>/summary.jsonl`` (replacing rows an interrupted run left for this step) and
   drops stale records of an interrupted run from the step's conversation dump;
3. adds the ``collabllm/...`` training metrics
   (:func:`~collabllm_verl.recipe.verl_adapters.step_summary.training_metrics`);
4. prints the cost projection after the first step and enforces the run's budget
   ``trainer.v1.sampler.sampler_kwargs.max_cost_usd`` (``recipe/verl_adapters/cost_guard.py``: checkpoint,
   then stop).

It also creates the run's LLM-limits actor (``recipe/core/run_limits.py``), so that it lives as long as the
trainer's driver, whichever worker calls an LLM first, and prints its use after every training step
(``[collabllm limits] step N: <model> at <endpoint>: at most M of L in use, G granted``) when a run-wide
concurrency limit is set.

Validation samplings (``partition_id="val"``) only get check 1.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from collabllm_verl.recipe.core import run_limits
from collabllm_verl.recipe.verl_adapters import conversation_dump
from collabllm_verl.recipe.verl_adapters.cost_guard import CostGuard, spend_from_totals
from collabllm_verl.recipe.verl_adapters.step_ledger import create_ledger, drain
from collabllm_verl.recipe.verl_adapters.step_summary import (
    check_reports,
    format_summary,
    summarize_step,
    training_metrics,
)

__all__ = ["CollabLLMReplayBuffer"]

logger = logging.getLogger(__name__)


class CollabLLMReplayBuffer(ReplayBuffer):
    """verl's synchronous ``ReplayBuffer`` with the CollabLLM step accounting (module docstring).

    Constructed by verl with the same arguments as ``ReplayBuffer``; creates the step ledger actor.
    Meant for ``trainer.v1.trainer_mode=sync`` (verl's default, the recipe's mode).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ledger = create_ledger()
        self._limits = run_limits.create_actor()
        self._totals: dict[str, float] | None = None  # running totals; a resumed run reads summary.jsonl
        self._unpriced = 0.0  # requests without a price, this process
        # verl passes its trainer's bound method ``_add_prompts_to_generate`` as refill_fn (cost_guard.py)
        trainer = getattr(kwargs.get("refill_fn"), "__self__", None)
        self._cost = CostGuard((kwargs.get("sampler_kwargs") or {}).get("max_cost_usd"), trainer)

    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        """verl's ``ReplayBuffer.sample``, then the checks and metrics of the module docstring.

        Raises:
            FatalRewardError, FailureBudgetExceeded: see :func:`check_reports`.
            BudgetExceeded: the budget was passed and no checkpoint could be forced (``cost_guard.py``).
            RuntimeError: verl found no trajectory to train on; when every response of the step was excluded
                by an outage, the message gives the reasons.
        """
        failure: RuntimeError | None = None
        try:
            batch, metrics = super().sample(global_steps, partition_id, batch_size)
        except RuntimeError as exc:  # verl found nothing to train on; say why first, outside this block
            failure = exc
        reports = drain(self._ledger)
        check_reports(global_steps, reports)
        if failure is not None:
            excluded = [r.excluded for r in reports if r.excluded]
            if excluded and len(excluded) == len(reports):
                raise RuntimeError(
                    f"collabllm reward: step {global_steps}: all {len(reports)} responses were left out of the "
                    f"policy gradient, nothing to train on; first reason: {excluded[0]}"
                ) from failure
            raise failure
        if partition_id == "val" or not reports:
            return batch, metrics
        dump_dir = next((r.context.get("dump_dir") for r in reports if r.context.get("dump_dir")), None)
        if self._totals is None:
            self._totals = conversation_dump.previous_totals(dump_dir, global_steps) if dump_dir else {}
        summary = summarize_step(global_steps, reports, self._totals)
        self._totals = summary["totals"]
        print(format_summary(summary), flush=True)
        if dump_dir:
            conversation_dump.write_summary(dump_dir, summary)
            stale = conversation_dump.keep_step_records(dump_dir, global_steps, {r.uid for r in reports})
            if stale:
                logger.info(
                    "collabllm: dropped %d records of an interrupted run from step %d", stale, global_steps
                )
        metrics.update(training_metrics(summary, reports))
        self._unpriced += _unpriced(reports)
        limits = run_limits.describe_stats(ray.get(self._limits.stats.remote()))
        if limits:
            print(f"[collabllm limits] step {global_steps}: {limits}", flush=True)
        self._cost.after_step(global_steps, spend_from_totals(self._totals, self._unpriced))
        return batch, metrics


def _unpriced(reports) -> float:
    """Requests without a price (judges and simulator) over the step's reports."""
    judge = sum(r.score.judge_usage.cost_unknown for r in reports if r.score is not None)
    simulator = sum(r.sampling.simulator_usage.cost_unknown for r in reports if r.sampling is not None)
    return float(judge + simulator)
