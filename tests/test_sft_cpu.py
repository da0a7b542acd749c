"""CPU platform plug-in and the SFT script, end to end on a CPU.

The end-to-end test makes SFT parquet files with the real ``process_dataset.py`` CLI from the bundled
MATH-500 level-5 problems, runs ``DEVICE=cpu bash train_sft_collabllm.sh 1`` (torchrun + verl's SFT
trainer with the CPU platform), then loads the saved Hugging Face checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from collabllm_verl.recipe.cpu.platform import cpu_env
from collabllm_verl.recipe.cpu.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_sft_collabllm.sh"
MATH_L5 = REPO / "data" / "math" / "math500_level5.jsonl"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_")}
    env["PYTHON"] = sys.executable
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _run_checked(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with text output captured and a 300 s timeout unless ``timeout=`` is given; the
    test fails (showing the end of stderr) unless the command exits with 0."""
    kwargs.setdefault("timeout", 300)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _run_python(code: str, env: dict[str, str]) -> dict:
    """Run ``code`` in a fresh interpreter; return the JSON object its last output line prints."""
    proc = _run_checked([sys.executable, "-c", textwrap.dedent(code)], env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# The platform plug-in (each check in a fresh process: verl's platform is a per-process singleton)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_probe() -> dict:
    """Facts gathered in one fresh process with the CPU environment (one verl import for both tests)."""
    return _run_python(
        """
        import json, os, socket
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        import torch, torch.distributed as dist
        from verl.plugin.platform import get_platform
        from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device, get_resource_name
        p = get_platform()
        dev = get_torch_device()
        state = dev.get_rng_state()
        a = torch.rand(2)
        dev.set_rng_state(state)
        b = torch.rand(2)
        try:
            dev.no_such_cuda_call
            unknown_raises = False
        except AttributeError:
            unknown_raises = True
        free, total = dev.mem_get_info()
        platform_facts = {
            "cls": type(p).__name__, "device": get_device_name(), "vendor": p.vendor_name,
            "current": str(p.current_device()), "is_torch_device": isinstance(p.current_device(), torch.device),
            "backend": get_nccl_backend(), "resource": get_resource_name(),
            "ray_options": p.ray_resource_options(2), "allocated": dev.memory_allocated(),
            "rng_restored": torch.equal(a, b), "unknown_raises": unknown_raises,
            "mem_ok": 0 < free <= total, "available": dev.is_available(),
        }

        import collabllm_verl.recipe.cpu.patches as patches
        assert patches.patch_process_group_backend() is False  # a second application must not stack wrappers
        from verl.utils.distributed import initialize_global_process_group
        import verl.workers.engine_workers as ew
        ranks = initialize_global_process_group(timeout_second=60)
        t = torch.ones(3); dist.all_reduce(t)
        group_facts = {
            "ranks": list(ranks), "backend": dist.get_backend(), "sum": t.tolist(),
            "ray_fn_patched": getattr(ew.initialize_global_process_group_ray, "_collabllm_cpu_patched", False),
            "wrapped_once": not getattr(initialize_global_process_group.__wrapped__, "_collabllm_cpu_patched", False),
        }

        # the offload policy verl's FSDP engine gives the reference model: CPUOffloadPolicy(pin_memory=True)
        import verl.workers.engine.fsdp.transformer_impl as engine_impl
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard
        assert patches.patch_fsdp2_offload_policy() is False  # idempotent
        policy = engine_impl.CPUOffloadPolicy(pin_memory=True)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        x = torch.randn(3, 4)
        with torch.no_grad():
            expected = model(x)
            fully_shard(model, mesh=init_device_mesh("cpu", (1,)), offload_policy=policy)
            got = model(x)
        offload_facts = {
            "is_torch_policy": isinstance(policy, CPUOffloadPolicy), "pin_memory": policy.pin_memory,
            "same_output": torch.allclose(expected, got), "pin_memory_available": patches.pin_memory_available(),
        }
        dist.destroy_process_group()
        print(json.dumps({"platform": platform_facts, "group": group_facts, "offload": offload_facts}))
        """,
        _env(**cpu_env()),
    )


def test_cpu_platform_selected_through_env(cpu_probe: dict):
    assert cpu_probe["platform"] == {
        "cls": "CPUPlatform",
        "device": "cpu",
        "vendor": "cpu",
        "current": "cpu",
        "is_torch_device": True,
        "backend": "gloo",
        "resource": "GPU",
        "ray_options": {"num_gpus": 2},
        "allocated": 0,
        "rng_restored": True,
        "unknown_raises": True,
        "mem_ok": True,
        "available": True,
    }


def test_process_group_uses_plain_gloo(cpu_probe: dict):
    """verl would pass "cpu:gloo,cpu:gloo" (rejected by torch); the plug-in makes it "gloo"."""
    assert cpu_probe["group"] == {
        "ranks": [0, 0, 1],
        "backend": "gloo",
        "sum": [1.0, 1.0, 1.0],
        "ray_fn_patched": True,
        "wrapped_once": True,
    }


def test_fsdp2_cpu_offload_does_not_pin_memory(cpu_probe: dict):
    """verl offloads the reference model with CPUOffloadPolicy(pin_memory=True); a CPU-only torch cannot pin."""
    assert cpu_probe["offload"] == {
        "is_torch_policy": True,
        "pin_memory": False,
        "same_output": True,
        "pin_memory_available": False,
    }


def test_cpu_platform_is_opt_in():
    """Importing the plug-in without VERL_PLATFORM=cpu must not switch a machine to the CPU platform."""
    result = _run_python(
        """
        import json
        from verl.plugin.platform import get_platform, PlatformRegistry
        from verl.utils.fsdp_utils import CPUOffloadPolicy
        print(json.dumps({"registered": "cpu" in PlatformRegistry.registered_names(),
                          "device": get_platform().device_name, "pin": CPUOffloadPolicy().pin_memory}))
        """,
        _env(VERL_USE_EXTERNAL_MODULES="collabllm_verl.recipe.cpu"),
    )
    assert result["registered"] is True
    assert result["device"] != "cpu"
    assert result["pin"] is True  # other platforms keep verl's pinned offload


def _patch_layers(obj) -> int:
    """How many patch replacements are stacked in ``obj``: marked functions along the ``__wrapped__`` chain,
    or marked classes in the class's MRO (own attributes only, as subclasses inherit class attributes)."""
    from collabllm_verl.recipe.cpu.patches import PATCH_MARK

    if isinstance(obj, type):
        return sum(bool(vars(cls).get(PATCH_MARK)) for cls in obj.__mro__)
    layers = 0
    while obj is not None:
        layers += bool(vars(obj).get(PATCH_MARK)) if hasattr(obj, "__dict__") else 0
        obj = getattr(obj, "__wrapped__", None)
    return layers


@pytest.mark.parametrize("name", ["process_group_backend", "fsdp2_offload_policy", "valuehead_attention"])
def test_each_patch_is_applied_once_and_names_its_targets(name):
    """The package import (at the top of this file) applied every patch; applying again changes nothing,
    every target names a verl attribute that now holds exactly one replacement, and the patch's docstring
    names each target and the verl version."""
    import importlib

    from collabllm_verl.recipe.cpu import patches

    patch = next(p for p in patches.PATCHES if p.name == name)
    assert patch.apply() is False
    assert patches.apply_patches() == {p.name: False for p in patches.PATCHES}
    assert "(verl 0.9.1)" in patch.apply.__doc__
    for target in patch.targets:
        module, _, attribute = target.rpartition(".")
        assert f"``{module}" in patch.apply.__doc__ and attribute in patch.apply.__doc__, target
        assert _patch_layers(getattr(importlib.import_module(module), attribute)) == 1, target


def test_patches_apply_only_on_the_verl_version_they_were_written_for(monkeypatch):
    from collabllm_verl.recipe.cpu import patches

    calls = []
    fakes = tuple(
        patches.VerlPatch(p.name, p.targets, lambda name=p.name: calls.append(name) or True) for p in patches.PATCHES
    )
    monkeypatch.setattr(patches, "PATCHES", fakes)
    names = [p.name for p in fakes]
    assert patches.apply_patches() == dict.fromkeys(names, True) and calls == names  # 0.9.1: each once

    calls.clear()
    monkeypatch.setattr(patches, "_installed_verl_version", lambda: "0.10.0")
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    with pytest.raises(
        patches.VerlVersionError,
        match=r"patches verl 0\.9\.1, found verl 0\.10\.0: no patch applied \(verl\.utils\.distributed\."
        r"initialize_global_process_group, .*verl\.utils\.model\.load_valuehead_model, .*"
        r"bucketed_weight_transfer\.create_shared_memory\)",
    ):
        patches.apply_patches()
    monkeypatch.delenv("VERL_PLATFORM")  # the plug-in imported on a GPU machine: a warning, no patch
    with pytest.warns(patches.VerlVersionWarning, match=r"found verl 0\.10\.0: no patch applied"):
        assert patches.apply_patches() == dict.fromkeys(names, False)
    assert calls == []


# ---------------------------------------------------------------------------------------------------
# train_sft_collabllm.sh
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    """SFT parquet files written by the real process_dataset.py CLI."""
    out = tmp_path_factory.mktemp("sft_data")
    _run_checked(
        [
            sys.executable,
            str(REPO / "process_dataset.py"),
            "--dataset",
            str(MATH_L5),
            "--local_dir",
            str(out),
            "--dataset_type",
            "sft",
            "--validation_size",
            "8",
            "--seed",
            "42",
        ],
        cwd=REPO,
    )
    assert (out / "sft_train.parquet").is_file() and (out / "sft_validation.parquet").is_file()
    return out


def _python_launcher(tmp_path: Path) -> str:
    """A TORCHRUN stand-in that drops torchrun's own flags and runs the module in this interpreter."""
    launcher = tmp_path / "launch"
    launcher.write_text(f'#!/bin/sh\nshift 3\nexec {sys.executable} "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


def test_script_usage_errors(tmp_path: Path):
    no_args = subprocess.run(["bash", str(SCRIPT)], env=_env(), capture_output=True, text=True, check=False)
    assert no_args.returncode == 2 and "nproc_per_node" in no_args.stderr
    missing = subprocess.run(
        ["bash", str(SCRIPT), "1"],
        env=_env(DATA_DIR=str(tmp_path / "nowhere"), TORCHRUN=_python_launcher(tmp_path)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert missing.returncode == 1, missing.stderr[-2000:]
    assert "missing data file" in missing.stderr and "--dataset_type sft" in missing.stderr
    bad_device = subprocess.run(
        ["bash", str(SCRIPT), "1"], env=_env(DEVICE="tpu"), capture_output=True, text=True, check=False
    )
    assert bad_device.returncode == 2 and "DEVICE" in bad_device.stderr


def _echo_command(data_dir: Path, *overrides: str) -> list[str]:
    """With TORCHRUN=echo the script prints the launch command instead of running it."""
    proc = _run_checked(["bash", str(SCRIPT), "8", *overrides], env=_env(DATA_DIR=str(data_dir), TORCHRUN="echo"))
    return shlex.split(proc.stdout.strip().splitlines()[-1])


def _composed(argv: list[str], cwd: Path):
    """The config the launch command composes (Hydra's ``--cfg job``), resolved."""
    import yaml
    from omegaconf import OmegaConf

    import collabllm_verl.recipe.verl_adapters.config_resolvers  # noqa: F401

    proc = _run_checked([sys.executable, *argv[3:], "--cfg", "job"], env=_env(), cwd=cwd)
    body = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("+ "))
    cfg = OmegaConf.create(yaml.safe_load(body))
    OmegaConf.resolve(cfg)
    return cfg


def test_gpu_defaults_in_command(sft_data: Path, tmp_path: Path):
    argv = _echo_command(sft_data)
    assert argv[:3] == ["--standalone", "--nnodes=1", "--nproc_per_node=8"]
    assert argv[3:5] == ["-m", "collabllm_verl.recipe.verl_adapters.main_sft"]
    # the script writes only the config name and the shortcuts; the defaults come from config/collabllm_sft.yaml
    assert argv[5:] == [
        "--config-name", "collabllm_sft", f"data.train_files={sft_data}/sft_train.parquet",
        f"data.val_files={sft_data}/sft_validation.parquet", "trainer.n_gpus_per_node=8",
    ]
    cfg = _composed(argv, tmp_path)
    assert cfg.model.path == "Qwen/Qwen2.5-7B-Instruct" and cfg.optim.lr == 1e-6
    assert (cfg.data.train_batch_size, cfg.trainer.total_epochs, cfg.data.messages_key) == (64, 3, "messages")
    assert cfg.engine.strategy == "fsdp2" and cfg.data.train_files == f"{sft_data}/sft_train.parquet"
    assert list(cfg.checkpoint.save_contents) == ["model", "optimizer", "extra", "hf_model"]
    assert cfg.trainer.save_freq == "after_each_epoch" and cfg.data.max_length == 8192
    # as the verl recipe: never silently cut the final assistant turn
    assert cfg.data.truncation == "error" and cfg.model.use_remove_padding is True
    assert cfg.trainer.device == "cuda" and cfg.trainer.total_training_steps is None
    assert cfg.trainer.experiment_name == "Qwen2.5-7B-Instruct-math-hard-sft"


def test_overrides_replace_defaults(sft_data: Path, tmp_path: Path):
    argv = _echo_command(sft_data, "optim.lr=5e-6", "++model.path=/models/mine", "+trainer.foo=1")
    assert argv[-3:] == ["optim.lr=5e-6", "++model.path=/models/mine", "+trainer.foo=1"]
    cfg = _composed(argv, tmp_path)
    assert cfg.optim.lr == 5e-6 and cfg.model.path == "/models/mine" and cfg.trainer.foo == 1
    assert cfg.trainer.experiment_name == "mine-math-hard-sft"  # the default name follows the model


def test_sft_cpu_end_to_end(sft_data: Path, tmp_path: Path):
    model_dir = build_tiny_model(tmp_path / "tiny", seed=0)
    initial = {k: v.clone() for k, v in _load_model(model_dir).state_dict().items()}
    out_dir = tmp_path / "run"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "1", "trainer.total_training_steps=3", "optim.lr=2e-3"],
        env=_env(DEVICE="cpu", DATA_DIR=str(sft_data), MODEL_PATH=str(model_dir), OUTPUT_DIR=str(out_dir)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "VERL_PLATFORM=cpu" in proc.stdout  # the script prints what it runs

    records = [
        json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    train = [r["data"] for r in records if "train/loss" in r["data"]]
    assert [r["step"] for r in records if "train/loss" in r["data"]] == [1, 2, 3]
    losses = [d["train/loss"] for d in train]
    assert all(math.isfinite(x) and x > 0 for x in losses), losses
    assert losses[-1] < losses[0], losses  # a random model at lr 2e-3 must improve within 3 steps
    assert all(d["train/lr"] == pytest.approx(2e-3) for d in train)
    val = [r["data"]["val/loss"] for r in records if "val/loss" in r["data"]]
    assert len(val) == 1 and math.isfinite(val[0])
    assert "train/loss:" in log  # console logger too

    hf_dir = out_dir / "checkpoints" / "global_step_3" / "huggingface"
    trained = _load_model(hf_dir)
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(hf_dir)) == trained.config.vocab_size
    state = trained.state_dict()
    assert set(state) == set(initial)
    changed = [k for k in initial if not torch.equal(initial[k], state[k].to(initial[k].dtype))]
    assert len(changed) >= len(initial) // 2, changed
    assert all(torch.isfinite(v).all() for v in state.values())
    assert (out_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


def _load_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
