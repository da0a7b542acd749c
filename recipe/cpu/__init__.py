"""CPU backend for verl (docs/design.md §4): the ``cpu`` platform and the ``hf`` rollout backend.

Loaded in every verl process with ``VERL_USE_EXTERNAL_MODULES=collabllm_verl.recipe.cpu``.
"""

# The platform first, then the rollout backend, whose imports load verl's rollout workers.
from . import platform  # noqa: F401  (registers the "cpu" platform with verl)

# isort: split
from . import hf_rollout  # noqa: F401  (registers the "hf" rollout backend with verl)
