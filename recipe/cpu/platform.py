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

What no platform method can change (verl's process-group backend string, the pinned FSDP2 offload
policy, the critic's attention implementation) is patched in :mod:`.patches`; the package
``collabllm_verl.recipe.cpu`` imports this module and then applies those patches.
"""

from __future__ import annotations

import os
import platform as _py_platform
import types
from contextlib import contextmanager
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry, get_platform

PLATFORM_NAME = "cpu"
PLUGIN_MODULE = "collabllm_verl.recipe.cpu"


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

        Not a verl 0.9.1 platform method; read by :class:`~.patches.PlatformCPUOffloadPolicy`. Platforms
        without this method are taken to support pinning, as verl assumes.
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
