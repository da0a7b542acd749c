"""Drive verl agent loops in-process, without Ray, GPUs or a real rollout server (tests and benchmarks).

verl's ``AgentLoopWorker`` (``verl.experimental.agent_loop.agent_loop``) is normally a Ray actor that gets
a server manager for the rollout replicas. Constructed directly in an event loop with a stand-in server
manager, it runs the real per-sample path: agent-loop YAML loading, hydra instantiation of the loop,
``run``, padding, and batching into a ``DataProto``. This module provides:

* :class:`ScriptedPolicy`: a stand-in for verl's ``LLMServerClient`` returning scripted replies as real
  token ids of a tokenizer, with log-probs, and recording every request;
* :func:`compose_trainer_config`: verl's full PPO trainer config composed from verl's own YAML files;
* :func:`rows_to_batch`: dataset rows as the worker receives them.

It is not a model: results obtained with it measure the plumbing, not the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from verl.protocol import DataProto
from verl.workers.rollout.replica import TokenOutput

__all__ = ["ScriptedPolicy", "compose_trainer_config", "rows_to_batch"]

Reply = str | list[int]


class ScriptedPolicy:
    """Stand-in for verl's server manager (``server_manager.generate``) with scripted replies.

    Args:
        tokenizer: a Hugging Face tokenizer with a ChatML-style template (``<|im_start|>``/``<|im_end|>``).
        first: the reply to a prompt with no earlier assistant turn (the trained response): text, to which
            the end-of-turn token is appended, or raw token ids, sent as they are (e.g. to script a cut-off
            response).
        future: the reply to later prompts (forward-sampled turns), text or ids; or a callable
            ``(decoded_prompt) -> reply``.
        delay_s: seconds each call takes (``asyncio.sleep``), to make concurrency observable.
        future_rendezvous: when > 0, each forward-sampled call waits (up to ``rendezvous_timeout_s``
            seconds) until that many forward-sampled calls are in flight at once, so a test of concurrency
            does not depend on timing: run one after another, they never meet and each waits out the timeout.
        rendezvous_timeout_s: the longest wait for the rendezvous, in seconds.
        end_token: the end-of-turn token appended to text replies.

    Every call is recorded in :attr:`calls` (request id, prompt ids/text, sampling params, whether it was the
    first turn, returned ids). Log-probs are ``-0.01 * (k + 1)`` for the k-th token. A ``max_tokens``
    sampling parameter truncates the reply, as a real server would. ``extra_fields`` carry
    ``global_steps``/``min_global_steps``/``max_global_steps`` like verl's server manager.
    """

    def __init__(
        self,
        tokenizer: Any,
        first: Reply,
        future: Reply | Callable[[str], Reply] = "",
        *,
        delay_s: float = 0.0,
        future_rendezvous: int = 0,
        rendezvous_timeout_s: float = 10.0,
        end_token: str = "<|im_end|>",
        global_steps: int = 5,
    ):
        self.tokenizer = tokenizer
        self.first, self.future, self.delay_s = first, future, float(delay_s)
        self.end_id = tokenizer.convert_tokens_to_ids(end_token)
        self.global_steps = global_steps
        self.calls: list[dict[str, Any]] = []
        self.peak_future_in_flight = 0
        self.future_in_flight = 0
        self.future_rendezvous, self.rendezvous_timeout_s = int(future_rendezvous), float(rendezvous_timeout_s)
        self._met = asyncio.Event()

    async def _rendezvous(self) -> None:
        """Wait until ``future_rendezvous`` forward-sampled calls are in flight together, or the timeout."""
        if self.future_in_flight >= self.future_rendezvous:
            self._met.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._met.wait(), self.rendezvous_timeout_s)

    def script(self, reply: Reply) -> list[int]:
        """Token ids of a scripted reply (text gets the end-of-turn token appended)."""
        if isinstance(reply, list):
            return list(reply)
        return [*self.tokenizer.encode(reply, add_special_tokens=False), self.end_id]

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: Mapping[str, Any],
                       **kwargs: Any) -> TokenOutput:
        """Answer like ``LLMServerClient.generate``: a ``TokenOutput`` with ids, log-probs, stop reason."""
        prompt_text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        is_first = prompt_text.count("<|im_start|>assistant") <= 1
        reply = self.first if is_first else (self.future(prompt_text) if callable(self.future) else self.future)
        token_ids = self.script(reply)
        if sampling_params.get("max_tokens"):
            token_ids = token_ids[: int(sampling_params["max_tokens"])]
        self.calls.append(
            {"request_id": request_id, "prompt_ids": list(prompt_ids), "prompt_text": prompt_text,
             "sampling_params": dict(sampling_params), "first": is_first, "token_ids": token_ids}
        )
        if not is_first:
            self.future_in_flight += 1
            self.peak_future_in_flight = max(self.peak_future_in_flight, self.future_in_flight)
        try:
            if not is_first and self.future_rendezvous:
                await self._rendezvous()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            if not is_first:
                self.future_in_flight -= 1
        steps = self.global_steps
        return TokenOutput(
            token_ids=token_ids,
            log_probs=[-0.01 * (k + 1) for k in range(len(token_ids))],
            stop_reason="completed",
            extra_fields={"global_steps": steps, "min_global_steps": steps, "max_global_steps": steps},
        )


def compose_trainer_config(overrides: Sequence[str]):
    """verl's ``ppo_trainer`` config (from the installed verl's YAML) with hydra ``overrides``.

    ``actor_rollout_ref.model.path`` must name a local model directory (config + tokenizer) and
    ``actor_rollout_ref.rollout.name`` a backend name (``vllm`` works without vLLM installed: the worker
    only reads it). Returns an OmegaConf ``DictConfig``.
    """
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=list(overrides))


def rows_to_batch(rows: Sequence[Mapping[str, Any]], *, global_steps: int = 1, validate: bool = False) -> DataProto:
    """Dataset rows (``raw_prompt``, ``agent_name``, ``extra_info``, ...) as an agent-loop worker's input.

    Every row must have the same keys; values become 1-D object arrays (``index`` an int array).
    """
    keys = list(rows[0])
    batch: dict[str, np.ndarray] = {}
    for key in keys:
        values = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):  # element-wise: numpy would turn equal-length lists into a 2-D array
            values[i] = row[key]
        batch[key] = values.astype(np.int64) if key == "index" else values
    return DataProto(non_tensor_batch=batch, meta_info={"global_steps": global_steps, "validate": validate})
