"""train_rl_collabllm.sh composes valid verl 0.9.1 configs from the recipe configs (config/collabllm_rl*.yaml),
and the `gpu` extra resolves with the pinned verl.

The GPU command cannot run here, so its configuration is proven on the CPU: the script is run with Hydra's
``--cfg job`` (the recipe's entry point composes and prints the config, then exits), every override must be a
key of the composed config (Hydra rejects unknown keys without ``+``), and the composed config is then
checked against verl's dataclasses and our plug-ins (agent loop, reward manager, metrics, conversation dump).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import collabllm_verl.recipe.verl_adapters.config_resolvers  # noqa: F401  (the configs' ${collabllm.*} resolvers)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_rl_collabllm.sh"


def _compose(tmp_path: Path, *args: str, **env_overrides: str) -> tuple[list[str], OmegaConf]:
    """Run the script with ``--cfg job``; return its ``+ ...`` echo lines and the composed config (the whole
    output, stdout and stderr, is also kept in ``_compose.output``)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for name in ("rl_train.parquet", "rl_validation.parquet"):
        (data / name).touch()  # existence is all --cfg job needs
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "COLLABLLM_"))}
    env.update({"PYTHON": sys.executable, "DATA_DIR": str(data), "HOME": str(tmp_path), **env_overrides})
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args, "--cfg", "job"],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _compose.output = proc.stdout + proc.stderr
    echo = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    body = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("+ "))
    return echo, OmegaConf.create(yaml.safe_load(body))


def _check_plugins_resolve(cfg) -> None:
    """The composed config is accepted by verl's dataclasses and by every plug-in it names."""
    from hydra.utils import get_class
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import RolloutConfig

    import collabllm_verl.recipe.verl_adapters.plugins  # noqa: F401  (what VERL_USE_EXTERNAL_MODULES imports)
    from collabllm_verl.recipe.core.multiturn_reward import RewardSettings, resolve_settings
    from collabllm_verl.recipe.verl_adapters.reward_manager import CollabLLMRewardManager

    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)  # as verl's workers do
    assert isinstance(rollout, RolloutConfig)
    assert (
        rollout.multi_turn.num_repeat_rollouts == cfg.actor_rollout_ref.rollout.multi_turn.num_repeat_rollouts
    )

    agent_yaml = Path(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)
    assert agent_yaml.is_file()
    entries = {entry["name"]: entry for entry in OmegaConf.to_container(OmegaConf.load(agent_yaml))}
    assert "collabllm_agent" in entries
    get_class(entries["collabllm_agent"]["_target_"])  # importable

    assert get_reward_manager_cls(cfg.reward.reward_manager.name) is CollabLLMRewardManager
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
    from verl.utils.import_utils import load_extern_object

    sampler = cfg.trainer.v1.sampler.custom_sampler
    assert issubclass(load_extern_object(sampler.path, sampler.name), ReplayBuffer)
    settings = RewardSettings.from_trainer_config(cfg)
    assert set(resolve_settings(settings)) == {"accuracy", "interactivity", "token_amount"}
    from collabllm_verl.recipe.core.settings import SimulatorSettings

    simulator = OmegaConf.to_container(cfg.actor_rollout_ref.rollout.custom.user_simulator)
    SimulatorSettings.from_mapping(simulator, where="user_simulator")  # valid keys and values
    dump = settings.conversation_dump  # what the reward manager's conversation dump writes to
    assert dump is not None and dump.dir == cfg.reward.reward_kwargs.conversation_dump.dir


def test_gpu_command_composes_with_the_recipe_defaults(tmp_path):
    echo, cfg = _compose(tmp_path)
    rollout = cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen2.5-7B-Instruct"
    assert rollout.name == "vllm" and rollout.n == 8
    assert cfg.data.train_batch_size == 16
    assert (rollout.multi_turn.num_repeat_rollouts, rollout.multi_turn.max_user_turns) == (3, 2)
    assert rollout.multi_turn.max_assistant_turns == 3
    assert Path(rollout.agent.agent_loop_config_path) == REPO / "config" / "agent.yaml"
    assert cfg.reward.reward_manager.name == "collabllm"
    kwargs = OmegaConf.to_container(cfg.reward.reward_kwargs)
    assert kwargs["metric_weights"] == {"accuracy": 1, "interactivity": 1, "token_amount": -0.0001}
    # the judges' and the simulator's settings are their models' defaults: gpt-4o-mini at the provider's
    # endpoint, the judges' max_tokens and temperature as the verl recipe
    assert kwargs["llm_judge_kwargs"] == {} and OmegaConf.to_container(rollout.custom.user_simulator) == {}
    from collabllm_verl.recipe.core.multiturn_reward import RewardSettings

    judge = RewardSettings.from_trainer_config(cfg).judge
    assert judge.model == "gpt-4o-mini" and judge.api_base is None
    assert judge.completion_kwargs == {"temperature": 0.0, "max_tokens": 2048}
    assert cfg.actor_rollout_ref.actor.use_kl_loss is True
    # the verl recipe's memory and schedule settings (docs/design.md §1)
    actor, ref = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.ref
    assert actor.ppo_mini_batch_size == 8  # two actor updates per step of 16 prompts
    assert actor.use_dynamic_bsz is True and actor.ppo_max_token_len_per_gpu == 24000
    assert ref.log_prob_use_dynamic_bsz is True and rollout.log_prob_use_dynamic_bsz is True
    assert cfg.actor_rollout_ref.model.use_remove_padding is True
    assert actor.fsdp_config.param_offload is True and actor.fsdp_config.optimizer_offload is True
    assert ref.fsdp_config.param_offload is True
    assert rollout.gpu_memory_utilization == 0.7 and rollout.tensor_model_parallel_size == 1
    assert cfg.trainer.val_before_train is False
    assert (cfg.trainer.save_freq, cfg.trainer.test_freq, cfg.trainer.total_epochs) == (100, 10, 20)
    assert cfg.data.truncation == "error" and cfg.data.filter_overlong_prompts is True
    assert rollout.custom.future_token_budget == rollout.response_length == 2048  # as the verl recipe
    assert cfg.trainer.device == "cuda" and cfg.trainer.n_gpus_per_node == 8
    assert cfg.trainer.resume_mode == "auto"
    assert "hf_model" in cfg.actor_rollout_ref.actor.checkpoint.save_contents
    assert "VERL_USE_EXTERNAL_MODULES=collabllm_verl.recipe.verl_adapters.plugins" in echo[0]
    # the script adds no defaults of its own: only the config name and the shortcuts that were set
    assert echo[-1].split()[1:4] == ["collabllm_verl.recipe.verl_adapters.main_ppo", "--config-name", "collabllm_rl"]
    assert [a for a in echo[-1].split() if "=" in a and not a.startswith("'hydra.")] == [
        f"data.train_files={tmp_path}/data/rl_train.parquet", f"data.val_files={tmp_path}/data/rl_validation.parquet"
    ]
    _check_plugins_resolve(cfg)


def test_resume_path_and_command_line_overrides_take_precedence(tmp_path):
    checkpoint = tmp_path / "ckpt" / "global_step_7"
    checkpoint.mkdir(parents=True)
    echo, cfg = _compose(
        tmp_path,
        str(checkpoint),
        "actor_rollout_ref.rollout.n=4",
        "+reward.reward_kwargs.llm_judge_kwargs.model=hosted_vllm/my-judge",
        "+reward.reward_kwargs.metric_weights.accuracy=2",
        "actor_rollout_ref.actor.use_dynamic_bsz=False",
        "+actor_rollout_ref.rollout.custom.future_token_budget=6144",
        NUM_REPEAT_ROLLOUTS="5",
        PPO_MINI_BATCH_SIZE="16",
        LLM_API_BASE="http://127.0.0.1:8000/v1",
    )
    assert cfg.trainer.resume_mode == "resume_path"
    assert cfg.trainer.resume_from_path == str(checkpoint)
    assert cfg.actor_rollout_ref.rollout.n == 4
    assert cfg.actor_rollout_ref.rollout.multi_turn.num_repeat_rollouts == 5
    judge = OmegaConf.to_container(cfg.reward.reward_kwargs.llm_judge_kwargs)
    assert judge == {"model": "hosted_vllm/my-judge", "api_base": "http://127.0.0.1:8000/v1"}
    assert cfg.actor_rollout_ref.rollout.custom.user_simulator.api_base == "http://127.0.0.1:8000/v1"
    assert cfg.reward.reward_kwargs.metric_weights.accuracy == 2
    assert cfg.actor_rollout_ref.actor.use_dynamic_bsz is False
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 16
    assert cfg.actor_rollout_ref.rollout.custom.future_token_budget == 6144
    assert echo[-1].count("future_token_budget=") == 1
    command = echo[-1]
    assert command.count("actor_rollout_ref.rollout.n=") == 1  # the caller's; the script writes no default
    assert command.count("llm_judge_kwargs.model=") == 1
    # the shortcuts come first, so that the caller's overrides of the same keys win (Hydra: the last one)
    assert command.index("num_repeat_rollouts=5") < command.index("rollout.n=4")


def test_api_key_is_never_printed_and_reaches_the_judge_through_the_environment(tmp_path, monkeypatch):
    secret = "sk-test-DoNotPrint0123456789"
    echo, cfg = _compose(tmp_path, LLM_API_KEY=secret, LLM_API_BASE="http://127.0.0.1:8000/v1")
    # neither the script's command line nor the config verl prints holds the key
    assert secret not in "\n".join(echo) and secret not in OmegaConf.to_yaml(cfg)
    judge = OmegaConf.to_container(cfg.reward.reward_kwargs.llm_judge_kwargs)
    assert judge["api_key_env"] == "COLLABLLM_JUDGE_API_KEY"
    assert cfg.actor_rollout_ref.rollout.custom.user_simulator.api_key_env == "COLLABLLM_USER_API_KEY"

    from collabllm_verl.recipe.core.settings import JudgeSettings

    monkeypatch.setenv("COLLABLLM_JUDGE_API_KEY", secret)
    settings = JudgeSettings.from_mapping(judge, where="llm_judge_kwargs").to_llm(where="llm_judge_kwargs")
    assert settings.completion_kwargs["api_key"] == secret and secret not in repr(settings)
    monkeypatch.delenv("COLLABLLM_JUDGE_API_KEY")
    with pytest.raises(ValueError, match=r"llm_judge_kwargs\.api_key_env names 'COLLABLLM_JUDGE_API_KEY'"):
        JudgeSettings.from_mapping(judge, where="llm_judge_kwargs").to_llm(where="llm_judge_kwargs")


# The original recipe's README and the verl blog post configure the reward manager this way (the blog also
# puts the judge's base_url and api_key on the command line); run verbatim, only the values are ours.
BLOG_LINES = (
    "reward_model.reward_manager=collabllm",
    "+reward_model.reward_kwargs.metric_weights.accuracy=1",
    "+reward_model.reward_kwargs.metric_weights.interactivity=1",
    "+reward_model.reward_kwargs.metric_weights.token_amount=-0.0001",
    "+reward_model.reward_kwargs.llm_judge_kwargs.model=claude-3-5-sonnet-latest",
    "+reward_model.reward_kwargs.llm_judge_kwargs.base_url=http://127.0.0.1:8000/v1",
    "+reward_model.reward_kwargs.llm_judge_kwargs.api_key=sk-blog-DoNotPrint0123456789",
    "+reward_model.reward_kwargs.llm_judge_kwargs.max_tokens=2048",
    "+reward_model.reward_kwargs.llm_judge_kwargs.temperature=0",
)


def test_blog_seed_lines_beat_the_script_defaults_and_hide_the_key(tmp_path, monkeypatch):
    secret = "sk-blog-DoNotPrint0123456789"
    echo, cfg = _compose(tmp_path, *BLOG_LINES)
    assert secret not in _compose.output and secret not in OmegaConf.to_yaml(cfg)
    assert "passed in $COLLABLLM_JUDGE_API_KEY (not printed)" in _compose.output
    assert cfg.reward.reward_manager.name == "collabllm"
    judge = OmegaConf.to_container(cfg.reward.reward_kwargs.llm_judge_kwargs)
    assert judge == {  # the user's model, endpoint and options, not the script's gpt-4o-mini
        "model": "claude-3-5-sonnet-latest",
        "api_base": "http://127.0.0.1:8000/v1",
        "api_key_env": "COLLABLLM_JUDGE_API_KEY",
        "max_tokens": 2048,
        "temperature": 0,
    }
    assert OmegaConf.select(cfg, "reward_model.reward_kwargs") is None
    assert echo[-1].count("llm_judge_kwargs.model=") == 1

    from collabllm_verl.recipe.core.multiturn_reward import RewardSettings

    monkeypatch.setenv("COLLABLLM_JUDGE_API_KEY", secret)
    settings = RewardSettings.from_trainer_config(cfg)
    assert settings.judge.model == "claude-3-5-sonnet-latest"
    assert settings.judge.completion_kwargs["api_key"] == secret and secret not in repr(settings)
    assert settings.metric_weights == {"accuracy": 1.0, "interactivity": 1.0, "token_amount": -0.0001}


def test_the_trainer_gets_the_composed_config_and_the_key_in_its_environment(tmp_path, monkeypatch):
    """run_hydra_main runs verl's main body on the recipe config: the key given on the command line reaches
    the trainer's environment (so Ray's workers inherit it), a missing data file stops before it runs."""
    from collabllm_verl.recipe.verl_adapters.launch import run_hydra_main

    seen = {}

    def body(config):
        seen["key"] = os.environ.get("COLLABLLM_JUDGE_API_KEY")
        seen["config"] = config

    fake_main = type("FakeMain", (), {"__wrapped__": staticmethod(body)})
    data = tmp_path / "data"
    data.mkdir()
    for name in ("rl_train.parquet", "rl_validation.parquet"):
        (data / name).touch()
    monkeypatch.delenv("COLLABLLM_JUDGE_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # Hydra writes its run folder under the working directory
    files = [f"data.train_files={data}/rl_train.parquet", f"data.val_files={data}/rl_validation.parquet"]
    run_hydra_main(fake_main, default_config="collabllm_rl", data_kind="rl", argv=["prog", *files, *BLOG_LINES])
    assert seen["key"] == "sk-blog-DoNotPrint0123456789"
    assert seen["config"].reward.reward_kwargs.llm_judge_kwargs.api_key_env == "COLLABLLM_JUDGE_API_KEY"
    assert seen["config"].reward.reward_kwargs.llm_judge_kwargs.api_base == "http://127.0.0.1:8000/v1"

    with pytest.raises(SystemExit, match=r"missing data file: .*nowhere.parquet \(data.val_files; create it with: "
                       r"python process_dataset.py --dataset_type rl"):
        run_hydra_main(fake_main, default_config="collabllm_rl", data_kind="rl",
                       argv=["prog", files[0], "data.val_files=nowhere.parquet"])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["reward_model.reward_manager=collabllm"], ["reward.reward_manager.name=collabllm"]),
        (["+reward_model.reward_kwargs.metric_weights.accuracy=2"],
         ["++reward.reward_kwargs.metric_weights.accuracy=2"]),
        (["+reward.reward_kwargs.skip_penalty=-0.2"], ["++reward.reward_kwargs.skip_penalty=-0.2"]),
        (["+experiment=mine", "~trainer.logger", "--cfg", "job"],
         ["+experiment=mine", "~trainer.logger", "--cfg", "job"]),
        (["+reward_model.reward_kwargs.llm_judge_kwargs.base_url=http://h/v1"],
         ["++reward.reward_kwargs.llm_judge_kwargs.api_base=http://h/v1"]),
        (["++reward.reward_kwargs.llm_judge_kwargs.base_url=http://a/v1", "++reward.reward_kwargs.llm_judge_kwargs.api_base=http://b/v1"],
         ["++reward.reward_kwargs.llm_judge_kwargs.api_base=http://b/v1"]),
        (["++actor_rollout_ref.rollout.custom.user_simulator.api_key='sk-x'"],
         ["++actor_rollout_ref.rollout.custom.user_simulator.api_key_env=COLLABLLM_USER_API_KEY"]),
    ],
)
def test_seed_override_forms_are_translated(given, expected):
    from collabllm_verl.recipe.verl_adapters.overrides import translate_overrides

    out = translate_overrides(given)
    assert out.overrides == expected
    if "api_key_env" in expected[0]:
        assert out.env == {"COLLABLLM_USER_API_KEY": "sk-x"} and all("sk-x" not in n for n in out.notes)


def test_hydra_flags_are_kept_apart_from_the_overrides():
    from collabllm_verl.recipe.verl_adapters.launch import split_hydra_flags

    flags, overrides = split_hydra_flags(["a=1", "--cfg", "job", "~b", "--resolve", "c=2", "-cn", "x"])
    assert flags == ["--cfg", "job", "--resolve", "-cn", "x"] and overrides == ["a=1", "~b", "c=2"]


def test_current_form_wins_over_the_legacy_form_for_the_same_key(tmp_path):
    _, cfg = _compose(
        tmp_path,
        "+reward_model.reward_kwargs.llm_judge_kwargs.model=legacy-judge",
        "+reward.reward_kwargs.llm_judge_kwargs.model=current-judge",
        "+reward_model.reward_kwargs.metric_weights.accuracy=3",
    )
    assert cfg.reward.reward_kwargs.llm_judge_kwargs.model == "current-judge"
    assert cfg.reward.reward_kwargs.metric_weights.accuracy == 3
    assert "ignoring the legacy override of reward.reward_kwargs.llm_judge_kwargs.model" in _compose.output


def test_ppo_with_a_critic_composes_for_gpus(tmp_path):
    """ALGORITHM=ppo: GAE with a critic that starts from the policy; every key is verl's (Hydra rejects
    unknown keys without '+'), and verl's own check says a critic is needed."""
    from verl.trainer.ppo.utils import need_critic

    _, cfg = _compose(tmp_path, ALGORITHM="ppo")
    assert cfg.algorithm.adv_estimator == "gae" and need_critic(cfg)
    assert cfg.critic.model.path == cfg.actor_rollout_ref.model.path == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.critic.strategy == "fsdp2" and cfg.critic.optim.lr == 1e-5
    _check_plugins_resolve(cfg)


def test_cpu_preset_composes_with_the_hf_backend(tmp_path):
    echo, cfg = _compose(
        tmp_path,
        DEVICE="cpu",
        LOCAL_LLM_SERVER="0",
        MODEL_PATH=str(tmp_path / "tiny"),
        OUTPUT_DIR=str(tmp_path / "out"),
    )
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.name == "hf" and rollout.tensor_model_parallel_size == 1
    assert rollout.engine_kwargs.hf.eos_logit_bias == 3.5
    assert OmegaConf.to_container(rollout.engine_kwargs.hf.logit_bias) == [["?", 5.0]]
    assert cfg.trainer.device == "cpu" and cfg.trainer.total_training_steps == 2
    # the CPU preset keeps its own small values
    actor = cfg.actor_rollout_ref.actor
    assert actor.ppo_mini_batch_size == cfg.data.train_batch_size == 2
    assert actor.use_dynamic_bsz is False and actor.fsdp_config.param_offload is False
    assert cfg.actor_rollout_ref.model.use_remove_padding is False
    assert rollout.custom.future_token_budget == 1024
    assert cfg.ray_kwargs.ray_init.num_gpus == 1
    assert cfg.reward.reward_kwargs.llm_judge_kwargs.model == "openai/scripted-judge"
    assert cfg.reward.reward_kwargs.conversation_dump.dir == str(
        tmp_path / "out" / "checkpoints" / "conversations"
    )
    assert (
        "collabllm_verl.recipe.cpu,collabllm_verl.recipe.verl_adapters.plugins" in echo[0]
        and "VERL_PLATFORM=cpu" in echo[0]
    )
    _check_plugins_resolve(cfg)
    _, ppo = _compose(
        tmp_path, DEVICE="cpu", ALGORITHM="ppo", LOCAL_LLM_SERVER="0", MODEL_PATH=str(tmp_path / "tiny"),
        OUTPUT_DIR=str(tmp_path / "out"),
    )
    assert ppo.algorithm.adv_estimator == "gae" and ppo.critic.model.override_config.attn_implementation == "sdpa"

    from verl.workers.rollout.replica import get_rollout_replica_class

    import collabllm_verl.recipe.cpu  # noqa: F401
    from collabllm_verl.recipe.cpu.hf_rollout import HFReplica

    assert get_rollout_replica_class(rollout.name) is HFReplica


def test_missing_data_is_reported_before_anything_starts(tmp_path):
    env = dict(os.environ, DATA_DIR=str(tmp_path / "nowhere"), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1
    assert "missing data file" in proc.stderr and "process_dataset.py" in proc.stderr


def _index_url() -> str:
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            check=False,
        )
        url = (
            proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "https://pypi.org/simple"
        )
    return url.rstrip("/")


@pytest.mark.slow
def test_gpu_extra_resolves_together_with_the_pinned_verl(tmp_path):
    index = _index_url()
    try:
        urllib.request.urlopen(f"{index}/vllm/", timeout=10).close()
    except OSError as exc:
        pytest.skip(f"package index {index} unreachable ({exc}); the gpu extra's resolution needs it")
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            f"{REPO}[gpu]",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert versions["verl"] == "0.9.1"
    assert versions["vllm"] == "0.24.0"
    assert versions["torch"] == "2.11.0"
    assert versions["transformers"] == "5.9.0"
