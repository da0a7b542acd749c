"""A verl platform that runs trainers on the CPU (for tests, CI and quick starts without a GPU).

verl 0.9.1 resolves all device-specific behaviour through ``verl.plugin.platform.get_platform()``.
This module registers :class:`CPUPlatform` under the name ``cpu`` in
``verl.plugin.platform.PlatformRegistry``. It is selected by::

    VERL_USE_EXTERNAL_MODULES=collabllm_verl.recipe.cpu   # import this plug-in in every verl process
    VERL_PLATFORM=cpu                                     # pick the registered "cpu" platform
    VERL_ENGINE_DEVICE=cuda                               # verl registers its FSDP engine for cuda/npu only

:func:`cpu_env` returns exactly these variables for Python launchers and tests.
Ray workers inherit the driver's environment on a single node, so the plug-in reaches them too.

What the platform reports (docs/design.md §4):

* ``device_name`` and ``vendor_name`` are ``"cpu"``; ``current_device()`` is ``torch.device("cpu")``
  (an integer index would be read by verl and torch as an accelerator ordinal).
* ``device_module`` is :data:`cpu_device_module`, a module object answering the CUDA-style calls verl
  makes on ``get_torch_device()`` (memory statistics, RNG state, ``empty_cache``, streams, ...) with
  harmless CPU equivalents. Unknown attributes raise ``AttributeError``; nothing is silently faked.
* The collective-communication backend is ``gloo``.
* The Ray resource is ``"GPU"``: verl's resource pools count only GPU/NPU resources, so start Ray with
  a *logical* GPU count, e.g. ``+ray_kwargs.ray_init.num_gpus=1`` (no CUDA device is touched).

Three unavoidable patches of verl (applied idempotently on import, active only while the current platform
is this CPU platform; on any other platform the original code runs unchanged):

1. ``verl/utils/distributed.py``: ``initialize_global_process_group`` and
  ``initialize_global_process_group_ray`` build the backend string
  ``f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"``. With device ``cpu`` that is
  ``"cpu:gloo,cpu:gloo"``, which ``torch.distributed`` rejects ("Duplicate device type cpu"); no platform
  method can change the fixed ``cpu:gloo,`` prefix. The patch makes both functions use ``"gloo"``.
  The module attribute is replaced, and so is the copy bound by name in
  ``verl.workers.engine_workers`` when that module is already imported (it is normally imported later,
  after this plug-in).
2. ``verl/workers/engine/fsdp/transformer_impl.py``: ``FSDPEngine._build_fsdp_module`` gives every
   forward-only FSDP2 model (the GRPO *reference model* that the KL loss needs) and every model with
   ``fsdp_config.offload_policy=True`` a hard-coded ``CPUOffloadPolicy(pin_memory=True)``. FSDP2 then
   calls ``Tensor.pin_memory()`` on each parameter shard, and a CPU-only torch raises "Cannot access
   accelerator device when none is available": page-locked host memory only exists for DMA to an
   accelerator. verl 0.9.1 has no platform method or setting for pinning, so the patch replaces the
   name ``CPUOffloadPolicy`` that ``verl.utils.fsdp_utils`` exports (and the copy bound by name in
   ``transformer_impl`` when that module is already imported) with :class:`PlatformCPUOffloadPolicy`, a
   subclass that asks :meth:`CPUPlatform.is_pin_memory_available` and pins only where the platform can.
   Offloading itself is kept: with the CPU as the compute device the shards stay in ordinary host
   memory and FSDP2's host-to-device copies are no-ops.
3. ``verl/utils/model.py``: ``load_valuehead_model`` builds PPO's critic (``algorithm.adv_estimator=gae``)
   with a hard-coded ``attn_implementation="flash_attention_2"``; without flash-attn (never on a CPU) the
   load fails and verl reports a misleading "please install trl". No setting changes it. The patch loads
   the critic as verl's first branch does (``AutoModelForTokenClassification``, one label) but with the
   attention implementation the config asks for (``critic.model.override_config.attn_implementation``,
   which verl has put into the model config as ``_attn_implementation``; ``sdpa`` when unset). If that
   load fails, verl's original function runs and reports its own error. ``transformer_impl`` imports the
   function at call time, so replacing the module attribute is enough.
"""

from __future__ import annotations

import functools
import logging
import os
import platform as _py_platform
import types
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch.distributed.fsdp import CPUOffloadPolicy
from verl.plugin.platform import PlatformBase, PlatformRegistry, get_platform

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"
PLUGIN_MODULE = "collabllm_verl.recipe.cpu"
_PATCH_MARK = "_collabllm_cpu_patched"


def _host_memory_bytes() -> tuple[int, int]:
    """Return ``(available_bytes, total_bytes)`` of host memory from ``sysconf`` (Linux/macOS)."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        available = page * os.sysconf("SC_AVPHYS_PAGES")
        return int(available), int(total)
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _build_cpu_device_module() -> types.ModuleType:
    """Build the ``torch.cuda``-shaped namespace returned by ``CPUPlatform.device_module``.

    Streams, events and ``synchronize`` come from ``torch.cpu``; RNG calls go to the global CPU
    generator; allocator statistics are 0 (the CPU allocator keeps none); ``mem_get_info`` reports host
    memory in bytes as ``(available, total)``; cache/IPC/allocator controls are no-ops.
    """
    mod = types.ModuleType(
        "collabllm_verl.recipe.cpu.device_module",
        "CUDA-style device API answered for the CPU (see collabllm_verl.recipe.cpu.platform).",
    )

    def _zero(*_args: Any, **_kwargs: Any) -> int:
        return 0

    def _noop(*_args: Any, **_kwargs: Any) -> None:
        return None

    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(new_state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(new_state)

    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    def get_device_name(device: Any = None) -> str:
        return _py_platform.processor() or _py_platform.machine() or "cpu"

    def mem_get_info(device: Any = None) -> tuple[int, int]:
        return _host_memory_bytes()

    namespace = {
        # device management
        "is_available": lambda: True,
        "is_initialized": lambda: True,
        "device_count": lambda: 1,
        "current_device": lambda: torch.device("cpu"),
        "set_device": _noop,
        "synchronize": torch.cpu.synchronize,
        "get_device_name": get_device_name,
        "get_device_capability": lambda device=None: (None, None),
        # streams and events
        "Stream": torch.cpu.Stream,
        "Event": torch.cpu.Event,
        "current_stream": torch.cpu.current_stream,
        "stream": torch.cpu.stream,
        # random number generation
        "get_rng_state": get_rng_state,
        "set_rng_state": set_rng_state,
        "manual_seed": manual_seed,
        "manual_seed_all": manual_seed,
        "seed": lambda: torch.seed(),
        "initial_seed": lambda: torch.initial_seed(),
        # memory
        "empty_cache": _noop,
        "ipc_collect": _noop,
        "set_per_process_memory_fraction": _noop,
        "reset_peak_memory_stats": _noop,
        "reset_accumulated_memory_stats": _noop,
        "reset_max_memory_allocated": _noop,
        "memory_allocated": _zero,
        "memory_reserved": _zero,
        "max_memory_allocated": _zero,
        "max_memory_reserved": _zero,
        "mem_get_info": mem_get_info,
        "memory_stats": lambda device=None: {},
    }
    for name, value in namespace.items():
        setattr(mod, name, value)
    return mod


#: The ``torch.cuda``-shaped module returned by :attr:`CPUPlatform.device_module`.
cpu_device_module: types.ModuleType = _build_cpu_device_module()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class CPUPlatform(PlatformBase):
    """verl platform for running on host CPUs (docs/design.md §4).

    Selected with ``VERL_PLATFORM=cpu`` once this module is imported (``VERL_USE_EXTERNAL_MODULES``).
    Never auto-detected: :meth:`is_platform_available` is ``False``, so GPU machines keep their platform.
    """

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return cpu_device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Opt-in only (VERL_PLATFORM=cpu); never win verl's auto-detection.
        return False

    def current_device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        torch.cpu.synchronize()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES for actors holding logical GPUs; a CPU build of torch ignores it.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None

    def is_pin_memory_available(self) -> bool:
        """Whether tensors can be page-locked (``Tensor.pin_memory()``): never without an accelerator.

        Not a verl 0.9.1 platform method; read by :class:`PlatformCPUOffloadPolicy` (module docstring,
        patch 2). Platforms without this method are taken to support pinning, as verl assumes.
        """
        return False


def is_cpu_platform_active() -> bool:
    """Return ``True`` if verl's current platform (``get_platform()``) is the CPU platform."""
    return get_platform().device_name == "cpu"


def cpu_env() -> dict[str, str]:
    """Environment variables that make verl (driver, torchrun ranks and Ray workers) run on the CPU.

    Returns:
        A dict to merge into ``os.environ`` or a subprocess environment.
    """
    return {
        "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE,
        "VERL_PLATFORM": PLATFORM_NAME,
        "VERL_ENGINE_DEVICE": "cuda",
    }


# ---------------------------------------------------------------------------------------------------
# Patch of verl/utils/distributed.py (see the module docstring)
# ---------------------------------------------------------------------------------------------------


def _patch_process_group_backend() -> None:
    import sys

    import verl.utils.distributed as vdist

    original_init = vdist.initialize_global_process_group
    original_init_ray = vdist.initialize_global_process_group_ray
    if getattr(original_init, _PATCH_MARK, False):
        return

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

    for fn in (initialize_global_process_group, initialize_global_process_group_ray):
        setattr(fn, _PATCH_MARK, True)
    vdist.initialize_global_process_group = initialize_global_process_group
    vdist.initialize_global_process_group_ray = initialize_global_process_group_ray

    # A module that already bound the original by name keeps it unless rebound here.
    engine_workers = sys.modules.get("verl.workers.engine_workers")
    bound = getattr(engine_workers, "initialize_global_process_group_ray", None)
    if bound is original_init_ray:
        engine_workers.initialize_global_process_group_ray = initialize_global_process_group_ray


_patch_process_group_backend()


# ---------------------------------------------------------------------------------------------------
# Patch of the FSDP2 offload policy verl hard-codes (see the module docstring, patch 2)
# ---------------------------------------------------------------------------------------------------


def pin_memory_available() -> bool:
    """Whether verl's current platform can pin host memory.

    Returns ``get_platform().is_pin_memory_available()`` where the platform defines that method (this
    CPU platform answers ``False``), else ``True`` (CUDA, ROCm and NPU platforms all support pinning).
    """
    check = getattr(get_platform(), "is_pin_memory_available", None)
    return True if check is None else bool(check())


@dataclass
class PlatformCPUOffloadPolicy(CPUOffloadPolicy):
    """FSDP2 ``CPUOffloadPolicy`` that pins host memory only where the platform supports it.

    Same field as ``torch.distributed.fsdp.CPUOffloadPolicy`` (``pin_memory: bool = True``); a subclass,
    so FSDP2's ``isinstance`` checks still see a CPU offload policy. A requested ``pin_memory=True``
    becomes ``False`` when :func:`pin_memory_available` is ``False`` (module docstring, patch 2).
    """

    def __post_init__(self) -> None:
        if self.pin_memory and not pin_memory_available():
            self.pin_memory = False


def _patch_fsdp2_offload_policy() -> None:
    import sys

    from verl.utils import fsdp_utils

    original = fsdp_utils.CPUOffloadPolicy
    if getattr(original, _PATCH_MARK, False):
        return
    if original is not CPUOffloadPolicy:  # verl resolved another class (older torch): leave it alone
        logger.warning(
            "verl's CPUOffloadPolicy is %r; FSDP2 offload may try to pin memory on the CPU", original
        )
        return
    setattr(PlatformCPUOffloadPolicy, _PATCH_MARK, True)
    fsdp_utils.CPUOffloadPolicy = PlatformCPUOffloadPolicy

    # transformer_impl binds the name at its own import, normally after this plug-in has run.
    engine_impl = sys.modules.get("verl.workers.engine.fsdp.transformer_impl")
    if getattr(engine_impl, "CPUOffloadPolicy", None) is original:
        engine_impl.CPUOffloadPolicy = PlatformCPUOffloadPolicy


_patch_fsdp2_offload_policy()


# ---------------------------------------------------------------------------------------------------
# Patch of the critic's hard-coded attention implementation (see the module docstring, patch 3)
# ---------------------------------------------------------------------------------------------------


def _patch_valuehead_attention() -> None:
    import verl.utils.model as vmodel

    original = vmodel.load_valuehead_model
    if getattr(original, _PATCH_MARK, False):
        return

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

    setattr(load_valuehead_model, _PATCH_MARK, True)
    vmodel.load_valuehead_model = load_valuehead_model


_patch_valuehead_attention()
