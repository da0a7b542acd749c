"""The ``hf`` rollout backend for CPUs: replica class and registration with verl (docs/design.md §4).

Importing this module registers

* ``RolloutReplicaRegistry["hf"]`` -> :class:`HFReplica` (one :class:`.hf_server.HFRolloutServer` Ray actor
  per replica, generating with ``transformers``), and
* ``_ROLLOUT_REGISTRY[("hf", "async")]`` -> :class:`.hf_adapter.HFServerAdapter` (receives the trainer's
  updated weights in every actor/rollout worker).

It is imported by ``collabllm_verl.recipe.cpu``, which verl loads in every process through
``VERL_USE_EXTERNAL_MODULES=collabllm_verl.recipe.cpu``; select the backend with
``actor_rollout_ref.rollout.name=hf``. The backend is text-only, serves one process per replica (use
``rollout.tensor_model_parallel_size=1``) and is meant for tiny models and CI, not for throughput.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from verl.workers.rollout.base import _ROLLOUT_REGISTRY
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry

from .hf_server import HFRolloutServer, server_actor_name

BACKEND_NAME = "hf"
ADAPTER_PATH = "collabllm_verl.recipe.cpu.hf_adapter.HFServerAdapter"


class HFReplica(RolloutReplica):
    """A rollout replica served by one ``transformers`` process (see :class:`.hf_server.HFRolloutServer`).

    The server actor is pinned to the node of the replica's first worker and named
    ``hf_server_<replica_rank>_0`` so that the workers' adapters can find it.

    Raises:
        NotImplementedError: from :meth:`launch_servers` when the replica would span several nodes.
    """

    async def launch_servers(self):
        """Start the server actor and wait until its model is loaded."""
        if self.nnodes != 1:
            raise NotImplementedError(
                f"hf rollout serves a replica from one process; got a replica spanning {self.nnodes} nodes "
                "(set actor_rollout_ref.rollout.tensor_model_parallel_size=1)"
            )
        if not self.workers:
            raise RuntimeError("hf rollout: the replica has no workers to colocate its server with")
        node_id = await self.workers[0].__ray_call__.remote(
            lambda self: ray.get_runtime_context().get_node_id()
        )
        if self.is_reward_model:
            suffix = f"_reward{self.name_suffix}"
        elif self.is_teacher_model:
            suffix = f"_teacher{self.name_suffix}"
        else:
            suffix = self.name_suffix
        name = server_actor_name(self.replica_rank, 0, suffix)
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=name,
                num_cpus=0,  # shares the cores of the colocated trainer worker; threads set by the server
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                max_concurrency=self.max_concurrency,
            )
            .remote(
                config=self.config,
                model_config=self.model_config,
                rollout_mode=self.rollout_mode,
                replica_rank=self.replica_rank,
                node_rank=0,
            )
        )
        self._server_address = await server.get_server_address.remote()
        self.servers = [server]
        self._server_handle = server


def _load_hf_replica() -> type[RolloutReplica]:
    return HFReplica


def register() -> None:
    """Register the ``hf`` backend with verl (idempotent)."""
    RolloutReplicaRegistry.register(BACKEND_NAME, _load_hf_replica)
    _ROLLOUT_REGISTRY[(BACKEND_NAME, "async")] = ADAPTER_PATH


register()
