"""The project's verl plug-ins, imported in every verl process.

verl imports each module named in ``VERL_USE_EXTERNAL_MODULES`` (comma-separated) when ``verl`` itself is
imported, in the driver and in every Ray worker (``verl/__init__.py``). Importing this module registers:

* the agent loop ``collabllm_agent`` (``actor_rollout_ref.rollout.agent``; rows select it through their
  ``agent_name`` column),
* the reward manager ``collabllm`` (``reward.reward_manager.name=collabllm``), and
* the OmegaConf resolvers of the recipe configs (``config_resolvers``), for the processes that resolve them.

Usage::

    export VERL_USE_EXTERNAL_MODULES=collabllm_verl.recipe.verl_adapters.plugins
    # on a CPU, add the platform and the hf rollout backend:
    export VERL_USE_EXTERNAL_MODULES=collabllm_verl.recipe.cpu,collabllm_verl.recipe.verl_adapters.plugins
"""

from collabllm_verl.recipe.verl_adapters import agent_loop, config_resolvers, reward_manager  # noqa: F401  (registration)
