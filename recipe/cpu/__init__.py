"""CPU backend for verl (DESIGN.md section 4): the ``cpu`` platform and the ``hf`` rollout backend.

Loaded in every verl process with ``VERL_USE_EXTERNAL_MODULES=collabllm_verl.recipe.cpu``.
"""

from . import platform  # noqa: F401  (registers the "cpu" platform with verl)
from . import hf_rollout  # noqa: F401,E402  (registers the "hf" rollout backend with verl)
