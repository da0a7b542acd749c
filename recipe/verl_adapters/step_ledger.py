"""The channel that carries every response's report from the reward workers to the trainer's driver.

verl 0.9.1 drops a sample whose reward computation raises: ``AgentLoopWorkerTQ._run_prompt``
(``verl/trainer/ppo/v1/agent_loop_tq.py``) logs the error in the worker and marks the group ``failure``,
and the driver's ``ReplayBuffer.sample`` trains on the group's other trajectories. Such a sample never
reaches the transfer queue, so the driver cannot learn from the trajectories why it is missing, nor how
many judge calls failed for it. Every ``collabllm`` reward computation (scored, excluded or failed)
therefore sends a :class:`~collabllm_verl.recipe.verl_adapters.step_summary.ResponseReport` to one named Ray actor,
:class:`StepLedger`, which the driver's replay buffer (``recipe/verl_adapters/replay_buffer.py``) creates and drains
after each sampling.

Ordering: the reward manager awaits the report before it returns or raises; verl marks a group terminal
only after all its sessions (and so their reward computations) settled; ``ReplayBuffer.sample`` returns
only once the batch's groups are terminal. In the sync trainer the recipe uses, a drain after ``sample``
therefore holds exactly that sampling's reports.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from collabllm_verl.recipe.verl_adapters.step_summary import ResponseReport

__all__ = ["LEDGER_NAME", "LedgerClient", "StepLedger", "create_ledger", "drain"]

logger = logging.getLogger(__name__)

LEDGER_NAME = "collabllm_step_ledger"


@ray.remote(num_cpus=0)
class StepLedger:
    """Holds the reports sent since the last :meth:`drain` (:class:`ResponseReport` objects; Ray pickles
    them on the way in and out)."""

    def __init__(self) -> None:
        self._reports: list[ResponseReport] = []

    def add(self, report: ResponseReport) -> None:
        """Store one report."""
        self._reports.append(report)

    def drain(self) -> list[ResponseReport]:
        """Return and forget every stored report."""
        reports, self._reports = self._reports, []
        return reports


def create_ledger() -> Any:
    """The job's ledger actor (created on first call, then reused); needs an initialised Ray."""
    return StepLedger.options(name=LEDGER_NAME, get_if_exists=True).remote()


def drain(ledger: Any) -> list[ResponseReport]:
    """Blocking: every report the ledger holds, in the order they arrived."""
    return list(ray.get(ledger.drain.remote()))


class LedgerClient:
    """The sending side, one per process (the reward manager's).

    The ledger is looked up once, on the first :meth:`report`. Without Ray, or without a ledger (the
    trainer was started without ``trainer.v1.sampler.custom_sampler`` set to the recipe's replay buffer),
    reports are dropped and a warning says what is lost.
    """

    def __init__(self) -> None:
        self._handle: Any = None
        self._looked_up = False

    @staticmethod
    def _find() -> Any:
        try:
            return ray.get_actor(LEDGER_NAME)
        except ValueError:  # no such actor
            return None

    async def _ledger(self) -> Any:
        # No lock: concurrent first calls may each look the actor up (harmless), and the client stays
        # usable from any event loop (tests run one loop per test).
        if not self._looked_up:
            handle = await asyncio.to_thread(self._find) if ray.is_initialized() else None
            if not self._looked_up:
                self._handle, self._looked_up = handle, True
                if handle is None:
                    logger.warning(
                        "collabllm reward: no step ledger (%s): the per-step breakdown, the failure budget and "
                        "the stop on non-transient errors are off. train_rl_collabllm.sh enables them with "
                        "trainer.v1.sampler.custom_sampler.path="
                        "pkg://collabllm_verl.recipe.verl_adapters.replay_buffer "
                        "trainer.v1.sampler.custom_sampler.name=CollabLLMReplayBuffer",
                        LEDGER_NAME,
                    )
        return self._handle

    async def report(self, report: ResponseReport) -> None:
        """Send one report (awaited: it is stored before this returns)."""
        handle = await self._ledger()
        if handle is not None:
            await handle.add.remote(report)
