"""The training run's cost: the projection after its first step and the budget ``max_cost_usd``.

The recipe's replay buffer (``recipe/verl_adapters/replay_buffer.py``) calls :meth:`CostGuard.after_step` on
the trainer's driver after every training sampling, with the step's running totals of judge and simulator
cost (the step summary's ``totals``: every agent-loop and reward worker of the run reports through the step
ledger, and a resumed run continues the totals of ``summary.jsonl``).

* **Projection**: at the first step this process trains (step 1, or the first step after a resume) one line
  ``[collabllm cost] cost after N of T steps: ... per step ...; projected ... for T steps ...`` with the
  simulator and the judges apart (``T`` is verl's ``total_training_steps``).
* **Budget**: ``trainer.v1.sampler.sampler_kwargs.max_cost_usd`` (USD, simulator and judges together;
  ``MAX_COST_USD`` in ``train_rl_collabllm.sh``). When a step's running total passes it, the step is
  finished (its rollouts are paid for), verl saves a checkpoint of it, and the run stops with
  :class:`~collabllm_verl.recipe.core.cost.BudgetExceeded` naming the budget, the spend and the
  checkpoint. How verl 0.9.1 is made to save: ``PPOTrainer.fit`` (``verl/trainer/ppo/v1/trainer_base.py``)
  saves after ``self.step()`` when ``trainer.save_freq > 0`` and ``global_steps % save_freq == 0``, reading
  ``self.config.trainer.save_freq`` each step; the guard sets it to 1 on the trainer (found as the owner of
  the replay buffer's ``refill_fn``, the bound method ``PPOTrainer._add_prompts_to_generate``), and verl's
  checkpoint hook ``trainer.checkpoint_callback_class`` (:class:`BudgetCheckpointCallback`, set in
  ``config/collabllm_rl.yaml``) raises the error once the save is written, before validation and before the
  next step issues any prompt. Without a trainer handle or without the callback, the error is raised at
  once, without a checkpoint, and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from verl.trainer.ppo.checkpoint_callback import CheckpointCallback

from collabllm_verl.recipe.core.cost import BudgetExceeded, check_budget, projection_text

__all__ = ["BUDGET_KEY", "BudgetCheckpointCallback", "CostGuard", "spend_from_totals"]

logger = logging.getLogger(__name__)

BUDGET_KEY = "trainer.v1.sampler.sampler_kwargs.max_cost_usd"
"""Where the training budget lives in the trainer config (``MAX_COST_USD`` writes it)."""

_pending: list[BudgetExceeded] = []  # the stop waiting for verl's checkpoint (driver process)


def spend_from_totals(totals: Mapping[str, float], unpriced: float = 0.0) -> dict[str, float]:
    """``{role: USD}`` of the step summary's running ``totals`` (``simulator_cost_usd``, ``judge_cost_usd``)."""
    return {
        "simulator": float(totals.get("simulator_cost_usd", 0.0)),
        "judges": float(totals.get("judge_cost_usd", 0.0)),
        "unpriced": float(unpriced),
    }


class BudgetCheckpointCallback(CheckpointCallback):
    """verl's checkpoint hook (``trainer.checkpoint_callback_class``): raises the pending budget stop after
    the checkpoint it waited for is saved; otherwise does nothing."""

    def on_save(
        self, trainer, global_step: int, checkpoint_dir: str, async_save: bool = False, **kwargs
    ) -> None:
        """Raise the pending :class:`BudgetExceeded`, naming ``checkpoint_dir``.

        Raises:
            BudgetExceeded: a step passed ``max_cost_usd`` (see the module docstring).
        """
        if not _pending:
            return
        stop = _pending.pop()
        raise BudgetExceeded(
            f"{stop} Checkpoint of step {global_step} saved in {checkpoint_dir}: resume from it with a higher "
            f"{BUDGET_KEY} (MAX_COST_USD) to continue.",
            budget_usd=stop.budget_usd,
            spent_usd=stop.spent_usd,
        )


class CostGuard:
    """The projection and the budget of one training run (driver side; see the module docstring).

    Args:
        max_cost_usd: the budget in USD (> 0), or None.
        trainer: verl's trainer (for ``config.trainer.save_freq`` and ``total_training_steps``), or None.

    Raises:
        ValueError: ``max_cost_usd`` is not a number > 0 (names :data:`BUDGET_KEY`).
    """

    def __init__(self, max_cost_usd: Any, trainer: Any = None) -> None:
        if max_cost_usd is not None:
            try:
                max_cost_usd = float(max_cost_usd)
            except (TypeError, ValueError):
                max_cost_usd = -1.0
            if not max_cost_usd > 0:
                raise ValueError(f"{BUDGET_KEY} must be a number > 0 (USD) or null")
        self.max_cost_usd = max_cost_usd
        self.trainer = trainer
        self._projected = False

    def _total_steps(self, step: int) -> int:
        total = getattr(self.trainer, "total_training_steps", None)
        return int(total) if isinstance(total, int) and total >= step else step

    def after_step(self, step: int, spent: Mapping[str, float]) -> str | None:
        """Print the projection at the first step; arm the stop when ``spent`` passes the budget.

        Args:
            step: the trainer step (``global_steps``, >= 1).
            spent: ``{role: USD}`` of the whole run so far (:func:`spend_from_totals`).

        Returns:
            The projection line when it was printed, else None.

        Raises:
            BudgetExceeded: the budget is passed and no checkpoint can be forced (see the module docstring).
        """
        line = None
        if not self._projected:
            self._projected = True
            text = projection_text(
                spent,
                done=step,
                total=self._total_steps(step),
                unit="step",
                budget_usd=self.max_cost_usd,
                budget_key=BUDGET_KEY,
            )
            line = f"[collabllm cost] {text}"
            print(line, flush=True)
        try:
            check_budget(spent, self.max_cost_usd, what=f"training run (step {step})", key=BUDGET_KEY)
        except BudgetExceeded as stop:
            self._arm(stop)
        return line

    def _arm(self, stop: BudgetExceeded) -> None:
        """Make verl save this step and let :class:`BudgetCheckpointCallback` raise; else raise now."""
        message = str(stop)
        config = getattr(self.trainer, "config", None)
        callback = getattr(self.trainer, "checkpoint_callback", None)
        if config is None or not isinstance(callback, BudgetCheckpointCallback):
            raise BudgetExceeded(
                f"{message} No checkpoint was forced (trainer.checkpoint_callback_class is not the recipe's "
                "BudgetCheckpointCallback); the last periodic checkpoint is the one to resume from.",
                budget_usd=stop.budget_usd,
                spent_usd=stop.spent_usd,
            )
        from omegaconf import open_dict

        with open_dict(config):
            config.trainer.save_freq = 1  # verl saves this step after its update (module docstring)
        _pending[:] = [stop]
        logger.warning("%s Saving a checkpoint of this step, then stopping.", message)
