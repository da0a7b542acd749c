"""Entry point of CollabLLM multi-turn SFT: verl 0.9.1's SFT trainer on the recipe config.

    torchrun --standalone --nnodes=1 --nproc_per_node=<n> -m collabllm_verl.recipe.verl_adapters.main_sft \
        [--config-name collabllm_sft_cpu] [overrides]

Runs ``verl.trainer.sft_trainer.main`` unchanged with ``--config-path`` set to the recipe's configs
(``config/collabllm_sft.yaml`` by default, which extends verl's ``sft_trainer_engine``), after checking the
local data files. ``train_sft_collabllm.sh`` runs this.
"""

from __future__ import annotations

import sys

from collabllm_verl.recipe.verl_adapters.launch import run_hydra_main


def main() -> None:
    """Run verl's SFT trainer on the recipe config with ``sys.argv``'s overrides."""
    from verl.trainer import sft_trainer

    run_hydra_main(sft_trainer.main, default_config="collabllm_sft", data_kind="sft", argv=sys.argv)


if __name__ == "__main__":
    main()
