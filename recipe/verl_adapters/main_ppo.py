"""Entry point of CollabLLM GRPO/PPO: verl 0.9.1's ``main_ppo`` on the recipe config.

    python -m collabllm_verl.recipe.verl_adapters.main_ppo [--config-name collabllm_rl_cpu] [overrides]

Runs ``verl.trainer.main_ppo.main`` unchanged with ``--config-path`` set to the recipe's configs
(``config/collabllm_rl.yaml`` by default, which extends verl's ``ppo_trainer``), after two steps only this
recipe needs: the original recipe's and the verl blog's override forms are translated
(:mod:`.overrides`), and the local data files are checked before Ray starts. Hydra's own flags work as
usual (``--cfg job`` prints the composed config and exits; a command-line override wins over the YAML).
``VERL_USE_EXTERNAL_MODULES`` must name ``collabllm_verl.recipe.verl_adapters.plugins`` (and, on a CPU,
``collabllm_verl.recipe.cpu`` first) so that every verl process registers the recipe's plug-ins;
``train_rl_collabllm.sh`` sets it.
"""

from __future__ import annotations

import sys

from collabllm_verl.recipe.verl_adapters.launch import run_hydra_main


def main() -> None:
    """Run verl's PPO trainer on the recipe config with ``sys.argv``'s overrides."""
    from verl.trainer import main_ppo

    run_hydra_main(main_ppo.main, default_config="collabllm_rl", data_kind="rl", argv=sys.argv)


if __name__ == "__main__":
    main()
