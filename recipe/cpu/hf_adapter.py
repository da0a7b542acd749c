"""The trainer-side adapter of the ``hf`` rollout backend (verl's ``BaseRollout`` for ``rollout.name=hf``).

verl builds one adapter in every actor/rollout worker (``get_rollout_class("hf", "async")``, looked up in
``verl.workers.rollout.base._ROLLOUT_REGISTRY``). After each training step the worker calls
``update_weights`` with a generator of full ``(hf_name, tensor)`` pairs; the adapter of the replica's
first rank forwards them in buckets to its :class:`.hf_server.HFRolloutServer` actor over Ray. Every rank
consumes the generator, since producing full tensors from FSDP shards is a collective operation.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray
import torch
from torch.distributed.device_mesh import DeviceMesh
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.utils import ensure_async_iterator

from .hf_server import server_actor_name

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))


class HFServerAdapter(BaseRollout):
    """Sends the trainer's weights to the ``hf`` rollout server of this worker's replica.

    Args:
        config: ``actor_rollout_ref.rollout``; ``checkpoint_engine.update_weights_bucket_megabytes`` sets
            the bucket size of a transfer (MiB).
        model_config: ``actor_rollout_ref.model``.
        device_mesh: the rollout device mesh built by the worker (unused).
        replica_rank: the replica to serve; -1 derives it from the ``RANK`` environment variable like
            verl's vLLM adapter (``RANK // rollout_world_size``).
    """

    def __init__(
        self,
        config: RolloutConfig,
        model_config: HFModelConfig,
        device_mesh: DeviceMesh,
        replica_rank: int = -1,
    ):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % rollout_world_size
        self._has_server = self.rollout_rank == 0
        self._bucket_bytes = int(self.config.checkpoint_engine.update_weights_bucket_megabytes) << 20
        self.server_handle: ray.actor.ActorHandle | None = None

    def _server(self) -> ray.actor.ActorHandle | None:
        if not self._has_server:
            return None
        if self.server_handle is None:  # the server is launched after the worker builds its adapter
            self.server_handle = ray.get_actor(server_actor_name(self.replica_rank))
        return self.server_handle

    async def resume(self, tags: list[str]):
        """No-op: the hf server keeps its weights in host memory."""

    async def release(self):
        """No-op: the hf server keeps its weights in host memory."""

    @torch.no_grad()
    async def update_weights(
        self,
        weights,
        global_steps: int | None = None,
        wire_format: str = "named_tensors",
        peft_config: Any = None,
        **kwargs,
    ):
        """Forward full ``(hf_name, tensor)`` pairs to the replica's server, in buckets.

        Args:
            weights: generator (sync or async) of ``(name, tensor)``; tensors are full (unsharded).
            global_steps: trainer step of these weights, reported back in ``TokenOutput.extra_fields``.
            wire_format: only ``"named_tensors"`` is supported.
            peft_config: must be None; LoRA adapters are not supported (merge them:
                ``actor_rollout_ref.model.lora.merge=True``).

        Raises:
            NotImplementedError: another wire format, or unmerged LoRA adapters.
        """
        if wire_format != "named_tensors":
            raise NotImplementedError(
                f"hf rollout supports wire_format='named_tensors' only, got {wire_format!r}"
            )
        if peft_config is not None:
            raise NotImplementedError(
                "hf rollout cannot load LoRA adapters; set actor_rollout_ref.model.lora.merge=True"
            )
        started = time.perf_counter()
        server = self._server()
        bucket: list[tuple[str, torch.Tensor]] = []
        bucket_bytes = 0
        sent = 0
        async for name, tensor in ensure_async_iterator(weights):
            if server is None:
                continue  # still consume: full tensors are gathered collectively
            tensor = tensor.detach().to("cpu").contiguous()
            bucket.append((name, tensor))
            bucket_bytes += tensor.numel() * tensor.element_size()
            if bucket_bytes >= self._bucket_bytes:
                sent += await server.load_weights.remote(bucket)
                bucket, bucket_bytes = [], 0
        if server is None:
            return
        if bucket:
            sent += await server.load_weights.remote(bucket)
        await server.finish_weight_update.remote(global_steps)
        logger.info(
            "hf rollout: replica %d received %d tensors (step %s) in %.2f s",
            self.replica_rank,
            sent,
            global_steps,
            time.perf_counter() - started,
        )
