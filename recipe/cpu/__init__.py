"""CPU backend for verl (docs/design.md §4): the ``cpu`` platform, its patches of verl and the ``hf`` rollout
backend.

Loaded in every verl process with ``VERL_USE_EXTERNAL_MODULES=collabllm_verl.recipe.cpu``.
"""

import sys

# The platform and its patches first, then the rollout backend, whose imports load verl's rollout workers.
from . import platform  # noqa: F401  (registers the "cpu" platform with verl)
from .patches import apply_patches

apply_patches()  # once per process; see recipe/cpu/patches.py
# a vLLM process (the engine core that builds the model): recipe/cpu/vllm_patches.py
if "vllm" in sys.modules:
    from .vllm_patches import apply_vllm_patches

    apply_vllm_patches()

# isort: split
from . import hf_rollout  # noqa: E402, F401  (registers the "hf" rollout backend with verl)
