#!/usr/bin/env bash
# GRPO training of a CollabLLM policy: multiturn-aware rewards from forward sampling with a user simulator.
#
#   bash train_rl_collabllm.sh [resume_path] [hydra overrides...]
#   DEVICE=cpu bash train_rl_collabllm.sh [resume_path] [hydra overrides...]   # CPU run with a tiny model
#
# Runs `python -m verl.trainer.main_ppo` (verl 0.9.1, config verl/trainer/config/ppo_trainer.yaml) with GRPO,
# the `collabllm_agent` agent loop (config/agent.yaml: the trained response, then S forward-sampled future
# conversations of up to w user turns with the user simulator of config/collabllm_interaction_config.yaml)
# and the `collabllm` reward manager (weighted metrics over the future conversations, judged by an LLM).
# Data: the parquet files written by
#   python process_dataset.py --dataset ... --local_dir "$DATA_DIR" --dataset_type rl
#
# resume_path: a checkpoint folder <SAVE_DIR>/global_step_<N> to resume from (trainer.resume_mode=resume_path).
# Without it, GPU runs resume from the latest checkpoint in SAVE_DIR if there is one (resume_mode=auto);
# CPU runs start fresh.
#
# Environment variables (defaults for DEVICE=gpu / DEVICE=cpu):
#   DEVICE               gpu | cpu                                                              (gpu)
#   MODEL_PATH           HF model id or folder      (Qwen/Qwen2.5-7B-Instruct / tiny model built on the fly)
#   DATA_DIR             folder with rl_train.parquet and rl_validation.parquet  ($HOME/data/collabllm-math-hard)
#   TRAIN_FILE, VAL_FILE parquet files            ($DATA_DIR/rl_train.parquet, $DATA_DIR/rl_validation.parquet)
#   NNODES, N_GPUS_PER_NODE  nodes, GPUs (CPU: worker processes) per node                     (1, 8 / 1, 1)
#   TRAIN_BATCH_SIZE     prompts per step (data.train_batch_size)                                  (16 / 2)
#   PPO_MINI_BATCH_SIZE  prompts per actor update (actor.ppo_mini_batch_size; 8 of 16: two updates a step)
#                                                                                (8 / TRAIN_BATCH_SIZE)
#   PPO_MAX_TOKEN_LEN_PER_GPU  GPU only: tokens per GPU micro-batch under dynamic batch size     (24000 / -)
#   ROLLOUT_N            responses per prompt, the GRPO group (rollout.n)                           (8 / 2)
#   NUM_REPEAT_ROLLOUTS  S, forward-sampled conversations per response                              (3 / 2)
#   MAX_USER_TURNS       w, user-simulator turns per future conversation                           (2 / 2)
#   MAX_ASSISTANT_TURNS  policy turns per conversation, the trained one included                   (3 / 3)
#   MAX_PROMPT_LENGTH    prompt tokens; longer prompts are dropped (data.max_prompt_length)    (8192 / 1024)
#   MAX_RESPONSE_LENGTH  tokens per policy turn (data.max_response_length)                    (2048 / 64)
#   FUTURE_TOKEN_BUDGET  tokens after the prompt in one future conversation, trained response, user and
#                        policy turns together (rollout.custom.future_token_budget)
#                                                                       (MAX_RESPONSE_LENGTH / 1024)
#   MAX_MODEL_LEN        context window of the rollout, tokens (rollout.max_model_len)     (16384 / 2048)
#   LR                   actor learning rate                                                  (1e-6 / 1e-4)
#   ROLLOUT_TP           vLLM tensor parallel size                                                   (1 / -)
#   GPU_MEMORY_UTILIZATION  vLLM's share of GPU memory                                             (0.7 / -)
#   EOS_LOGIT_BIAS       CPU only: logit bias of the end-of-turn token in the hf rollout, so that an
#                        untrained tiny model ends its turns and forward sampling runs          (- / 3.5)
#   QUESTION_LOGIT_BIAS  CPU only: logit bias of "?" so that the tiny model sometimes "asks", and the
#                        scripted user answers instead of ending the chat                        (- / 5.0)
#   USER_MODEL           litellm model of the user simulator                (gpt-4o-mini / openai/scripted-user)
#   JUDGE_MODEL          litellm model of the judges                       (gpt-4o-mini / openai/scripted-judge)
#   LLM_API_BASE         api_base for both (e.g. a vLLM server's http://host:port/v1)   (provider default / local)
#   LLM_API_KEY          api_key for both (default: litellm reads OPENAI_API_KEY etc.)        (unset / local)
#   LOCAL_LLM_SERVER     1: start the offline stand-in server for simulator and judges          (0 / 1)
#   TOTAL_STEPS          stop after this many steps; empty = all epochs                         (empty / 2)
#   TOTAL_EPOCHS         epochs                                                                    (20 / 1)
#   SAVE_FREQ, TEST_FREQ checkpoint / validation every N steps (-1: never; the last step always saves)
#                                                                                    (100, 10 / 2, -1)
#   PROJECT_NAME, EXPERIMENT_NAME  tracking names (collabllm-rl, <model>-math-hard-$ALGORITHM / tiny-cpu-$ALGORITHM)
#   SAVE_DIR             checkpoints            (checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME / $OUTPUT_DIR/checkpoints)
#   CONVERSATION_DIR     JSONL of every scored response with its future conversations  ($SAVE_DIR/conversations)
#   LOGGER               trainer.logger                                          ([console] / [console,file])
#   OUTPUT_DIR           CPU only: tiny model, checkpoints, metrics.jsonl, conversations   (outputs/rl_cpu)
#   PYTHON               interpreter                                                                (python)
#   ALGORITHM            grpo | ppo (PPO with a critic: algorithm.adv_estimator=gae)           (grpo / grpo)
#   CRITIC_LR            ppo only: critic learning rate                                       (1e-5 / 1e-4)
# Extra arguments are Hydra overrides of verl's PPO config; they take precedence over the defaults set here
# (a default is dropped when you override the same key, with or without a leading '+'). The original
# recipe's forms are accepted: reward_model.reward_manager=X (-> reward.reward_manager.name=X) and
# +reward_model.reward_kwargs.K=V (-> +reward.reward_kwargs.K=V; where both forms set K, the
# reward.reward_kwargs one wins); llm_judge_kwargs.base_url is llm_judge_kwargs.api_base; an
# llm_judge_kwargs.api_key given here is moved into the environment (COLLABLLM_JUDGE_API_KEY, passed as
# llm_judge_kwargs.api_key_env) so that neither this script's echo nor verl's printed config shows it.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/scripts/common.sh"

usage() { print_usage 5; }

RESUME_PATH=""
if [[ $# -gt 0 ]]; then
  case "$1" in
    -h|--help) usage; exit 0 ;;
    *=*|-*|~*) ;;  # a Hydra override (key=value, ~key deletion) or flag (e.g. --cfg job), not a resume path
    *) RESUME_PATH=$1; shift ;;
  esac
fi
if [[ -n "$RESUME_PATH" && ! -d "$RESUME_PATH" ]]; then
  echo "resume_path is not a folder: $RESUME_PATH (expected <SAVE_DIR>/global_step_<N>)" >&2
  exit 2
fi

DEVICE=${DEVICE:-gpu}
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-$HOME/data/collabllm-math-hard}
TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/rl_train.parquet}
VAL_FILE=${VAL_FILE:-$DATA_DIR/rl_validation.parquet}
PROJECT_NAME=${PROJECT_NAME:-collabllm-rl}
NNODES=${NNODES:-1}
MAX_USER_TURNS=${MAX_USER_TURNS:-2}
MAX_ASSISTANT_TURNS=${MAX_ASSISTANT_TURNS:-3}
ALGORITHM=${ALGORITHM:-grpo}
if [[ "$ALGORITHM" != grpo && "$ALGORITHM" != ppo ]]; then
  echo "ALGORITHM must be grpo or ppo, got '$ALGORITHM'" >&2
  exit 2
fi

case "$DEVICE" in
  gpu|cuda)
    MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-7B-Instruct}
    EXPERIMENT_NAME=${EXPERIMENT_NAME:-$(basename "$MODEL_PATH")-math-hard-$ALGORITHM}
    SAVE_DIR=${SAVE_DIR:-checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME}
    N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-8}
    TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-16}
    PPO_MINI_BATCH_SIZE=${PPO_MINI_BATCH_SIZE:-8}
    PPO_MAX_TOKEN_LEN_PER_GPU=${PPO_MAX_TOKEN_LEN_PER_GPU:-24000}
    ROLLOUT_N=${ROLLOUT_N:-8}
    NUM_REPEAT_ROLLOUTS=${NUM_REPEAT_ROLLOUTS:-3}
    MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-8192}
    MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-2048}
    FUTURE_TOKEN_BUDGET=${FUTURE_TOKEN_BUDGET:-$MAX_RESPONSE_LENGTH}
    MAX_MODEL_LEN=${MAX_MODEL_LEN:-16384}
    LR=${LR:-1e-6}
    ROLLOUT_TP=${ROLLOUT_TP:-1}
    GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.7}
    USER_MODEL=${USER_MODEL:-gpt-4o-mini}
    JUDGE_MODEL=${JUDGE_MODEL:-gpt-4o-mini}
    LOCAL_LLM_SERVER=${LOCAL_LLM_SERVER:-0}
    TOTAL_STEPS=${TOTAL_STEPS:-}
    TOTAL_EPOCHS=${TOTAL_EPOCHS:-20}
    SAVE_FREQ=${SAVE_FREQ:-100}
    TEST_FREQ=${TEST_FREQ:-10}
    LOGGER=${LOGGER:-[console]}
    MODULES=(collabllm_verl.recipe.verl_adapters.plugins)
    ;;
  cpu)
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/rl_cpu}
    EXPERIMENT_NAME=${EXPERIMENT_NAME:-tiny-cpu-$ALGORITHM}
    SAVE_DIR=${SAVE_DIR:-$OUTPUT_DIR/checkpoints}
    N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-1}
    TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-2}
    PPO_MINI_BATCH_SIZE=${PPO_MINI_BATCH_SIZE:-$TRAIN_BATCH_SIZE}
    ROLLOUT_N=${ROLLOUT_N:-2}
    NUM_REPEAT_ROLLOUTS=${NUM_REPEAT_ROLLOUTS:-2}
    MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-1024}
    MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-64}
    # room for the scripted user's turns (the whole goal) and a few policy replies
    FUTURE_TOKEN_BUDGET=${FUTURE_TOKEN_BUDGET:-1024}
    MAX_MODEL_LEN=${MAX_MODEL_LEN:-2048}
    LR=${LR:-1e-4}
    EOS_LOGIT_BIAS=${EOS_LOGIT_BIAS:-3.5}
    QUESTION_LOGIT_BIAS=${QUESTION_LOGIT_BIAS:-5.0}
    USER_MODEL=${USER_MODEL:-openai/scripted-user}
    JUDGE_MODEL=${JUDGE_MODEL:-openai/scripted-judge}
    LOCAL_LLM_SERVER=${LOCAL_LLM_SERVER:-1}
    TOTAL_STEPS=${TOTAL_STEPS:-2}
    TOTAL_EPOCHS=${TOTAL_EPOCHS:-1}
    SAVE_FREQ=${SAVE_FREQ:-2}
    TEST_FREQ=${TEST_FREQ:--1}
    LOGGER=${LOGGER:-[console,file]}
    # The CPU platform and the hf rollout backend (collabllm_verl.recipe.cpu), then the recipe's plug-ins.
    MODULES=(collabllm_verl.recipe.cpu collabllm_verl.recipe.verl_adapters.plugins)
    export RAY_DEDUP_LOGS=${RAY_DEDUP_LOGS:-0}
    prepare_cpu_run
    ;;
  *)
    echo "DEVICE must be gpu or cpu, got '$DEVICE'" >&2
    exit 2
    ;;
esac
CONVERSATION_DIR=${CONVERSATION_DIR:-$SAVE_DIR/conversations}

# verl imports these modules in every process (driver and Ray workers): they register the agent loop,
# the reward manager and, on a CPU, the platform and the hf rollout backend.
add_external_modules back "${MODULES[@]}"
# litellm must not download its price map at import (offline machines); the bundled copy is used.
export LITELLM_LOCAL_MODEL_COST_MAP=${LITELLM_LOCAL_MODEL_COST_MAP:-True}

require_data_files rl "$TRAIN_FILE" "$VAL_FILE"

# The offline stand-in for the user simulator and the judges (CPU default): started here, stopped on exit.
LLM_SERVER_PID=""
stop_llm_server() {
  if [[ -n "$LLM_SERVER_PID" ]] && kill -0 "$LLM_SERVER_PID" 2>/dev/null; then
    kill "$LLM_SERVER_PID" 2>/dev/null || true
    wait "$LLM_SERVER_PID" 2>/dev/null || true
  fi
}
if [[ "$LOCAL_LLM_SERVER" == 1 ]]; then
  LOG_DIR=${OUTPUT_DIR:-$SAVE_DIR}
  mkdir -p "$LOG_DIR"
  READY_FILE=$LOG_DIR/llm_server.url
  rm -f "$READY_FILE"
  "$PYTHON" -m collabllm_verl.recipe.offline.server --port 0 --ready-file "$READY_FILE" \
    >"$LOG_DIR/llm_server.log" 2>&1 &
  LLM_SERVER_PID=$!
  trap stop_llm_server EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  for _ in $(seq 1 300); do
    [[ -s "$READY_FILE" ]] && break
    if ! kill -0 "$LLM_SERVER_PID" 2>/dev/null; then
      echo "local LLM server failed to start; see $LOG_DIR/llm_server.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  if [[ ! -s "$READY_FILE" ]]; then
    echo "local LLM server did not become ready in 60 s; see $LOG_DIR/llm_server.log" >&2
    exit 1
  fi
  LLM_API_BASE=$(<"$READY_FILE")
  LLM_API_KEY=${LLM_API_KEY:-local}
  echo "+ local LLM server (user simulator and judges) at $LLM_API_BASE, pid $LLM_SERVER_PID"
fi

# The user simulator reads these (config/collabllm_interaction_config.yaml); an unset api_base/api_key
# lets litellm use the provider's default endpoint and key variable (OPENAI_API_KEY, ...).
export COLLABLLM_USER_MODEL=${COLLABLLM_USER_MODEL:-$USER_MODEL}
if [[ -n "${LLM_API_BASE:-}" ]]; then export COLLABLLM_USER_API_BASE=${COLLABLLM_USER_API_BASE:-$LLM_API_BASE}; fi
if [[ -n "${LLM_API_KEY:-}" ]]; then export COLLABLLM_USER_API_KEY=${COLLABLLM_USER_API_KEY:-$LLM_API_KEY}; fi

# The caller's overrides in the forms this recipe uses (the header lists the rewrites); the judge's API key
# leaves the command line here.
JUDGE_KEY_ENV=COLLABLLM_JUDGE_API_KEY
USER_ARGS=()
GIVEN=" "
for arg in "$@"; do
  hydra_override_key key "$arg"
  GIVEN="$GIVEN$key "
done
for arg in "$@"; do
  hydra_override_key key "$arg"
  value=${arg#*=}
  case "$key" in
    reward_model.reward_manager)
      arg="reward.reward_manager.name=$value" ;;
    reward_model.reward_kwargs.*)
      key="reward.reward_kwargs.${key#reward_model.reward_kwargs.}"
      if [[ "$GIVEN" == *" $key "* ]]; then
        echo "+ ignoring the legacy override of $key: the reward.reward_kwargs form is also given" >&2
        continue
      fi
      arg="+$key=$value" ;;
  esac
  case "$key" in
    reward.reward_kwargs.llm_judge_kwargs.base_url)
      if [[ "$GIVEN" != *" reward.reward_kwargs.llm_judge_kwargs.api_base "* ]]; then
        arg="+reward.reward_kwargs.llm_judge_kwargs.api_base=$value"
      fi ;;
    reward.reward_kwargs.llm_judge_kwargs.api_key)
      value=${value#[\'\"]}; value=${value%[\'\"]}
      export "$JUDGE_KEY_ENV=$value"
      echo "+ the judge's API key from the command line is passed in \$$JUDGE_KEY_ENV (not printed)"
      arg="+reward.reward_kwargs.llm_judge_kwargs.api_key_env=$JUDGE_KEY_ENV" ;;
  esac
  USER_ARGS+=("$arg")
done
set -- ${USER_ARGS[@]+"${USER_ARGS[@]}"}

# Keys the caller overrides; `add` leaves our default for such a key out (scripts/common.sh).
collect_user_keys "$@"

# Algorithm and data
if [[ "$ALGORITHM" == ppo ]]; then add "algorithm.adv_estimator=gae"; else add "algorithm.adv_estimator=grpo"; fi
add "data.train_files=$TRAIN_FILE"
add "data.val_files=$VAL_FILE"
add "data.train_batch_size=$TRAIN_BATCH_SIZE"
add "data.max_prompt_length=$MAX_PROMPT_LENGTH"
add "data.max_response_length=$MAX_RESPONSE_LENGTH"
add "data.filter_overlong_prompts=True"
add "data.truncation=error"
add "data.return_raw_chat=True"
# Policy
add "actor_rollout_ref.model.path=$MODEL_PATH"
add "actor_rollout_ref.actor.optim.lr=$LR"
add "actor_rollout_ref.actor.ppo_mini_batch_size=$PPO_MINI_BATCH_SIZE"
add "actor_rollout_ref.actor.entropy_coeff=0"
add "actor_rollout_ref.actor.strategy=fsdp2"
add "actor_rollout_ref.actor.fsdp_config.strategy=fsdp2"
add "actor_rollout_ref.ref.fsdp_config.strategy=fsdp2"
# Checkpoints include a Hugging Face copy of the policy (global_step_<N>/actor/huggingface).
add "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"
# Rollout: the trained response, then forward sampling (S future conversations of up to w user turns)
add "actor_rollout_ref.rollout.n=$ROLLOUT_N"
add "actor_rollout_ref.rollout.temperature=1.0"
add "actor_rollout_ref.rollout.prompt_length=$MAX_PROMPT_LENGTH"
add "actor_rollout_ref.rollout.response_length=$MAX_RESPONSE_LENGTH"
add "actor_rollout_ref.rollout.max_model_len=$MAX_MODEL_LEN"
add "actor_rollout_ref.rollout.agent.agent_loop_config_path=$SCRIPT_DIR/config/agent.yaml"
add "actor_rollout_ref.rollout.multi_turn.num_repeat_rollouts=$NUM_REPEAT_ROLLOUTS"
add "actor_rollout_ref.rollout.multi_turn.max_user_turns=$MAX_USER_TURNS"
add "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=$MAX_ASSISTANT_TURNS"
add "+actor_rollout_ref.rollout.custom.future_token_budget=$FUTURE_TOKEN_BUDGET"
# KL loss against the frozen reference model (verl then builds the reference model), on GPU and CPU alike.
# On CPU the reference model's FSDP2 offload runs without pinned memory (recipe/cpu/platform.py).
add "actor_rollout_ref.actor.use_kl_loss=True"
add "actor_rollout_ref.actor.kl_loss_coef=0.001"
add "actor_rollout_ref.actor.kl_loss_type=low_var_kl"
# Reward: the multiturn-aware reward of the collabllm reward manager
add "reward.reward_manager.name=collabllm"
add "+reward.reward_kwargs.metric_weights.accuracy=1"
add "+reward.reward_kwargs.metric_weights.interactivity=1"
add "+reward.reward_kwargs.metric_weights.token_amount=-0.0001"
add "+reward.reward_kwargs.llm_judge_kwargs.model=$JUDGE_MODEL"
add "+reward.reward_kwargs.llm_judge_kwargs.max_tokens=2048"
if [[ -n "${LLM_API_BASE:-}" ]]; then add "+reward.reward_kwargs.llm_judge_kwargs.api_base=$LLM_API_BASE"; fi
# The judges' key travels in the environment, never in the config (verl prints the resolved config).
if [[ -n "${LLM_API_KEY:-}" ]]; then
  export COLLABLLM_JUDGE_API_KEY=${COLLABLLM_JUDGE_API_KEY:-$LLM_API_KEY}
  add "+reward.reward_kwargs.llm_judge_kwargs.api_key_env=COLLABLLM_JUDGE_API_KEY"
fi
add "+reward.reward_kwargs.conversation_dump.dir=$CONVERSATION_DIR"
# Per-step reward breakdown as training metrics, the failure budget (reward_kwargs.max_failure_rate) and the
# stop on non-transient reward errors: the recipe's replay buffer on the trainer's driver.
add "trainer.v1.sampler.custom_sampler.path=pkg://collabllm_verl.recipe.verl_adapters.replay_buffer"
add "trainer.v1.sampler.custom_sampler.name=CollabLLMReplayBuffer"
# PPO: the critic starts from the policy's weights.
if [[ "$ALGORITHM" == ppo ]]; then
  add "critic.model.path=$MODEL_PATH"
  add "critic.strategy=fsdp2"
  add "critic.fsdp.strategy=fsdp2"
  add "critic.checkpoint.save_contents=[model,optimizer,extra]"
fi
# Trainer
add "trainer.project_name=$PROJECT_NAME"
add "trainer.experiment_name=$EXPERIMENT_NAME"
add "trainer.default_local_dir=$SAVE_DIR"
add "trainer.logger=$LOGGER"
add "trainer.nnodes=$NNODES"
add "trainer.n_gpus_per_node=$N_GPUS_PER_NODE"
add "trainer.total_epochs=$TOTAL_EPOCHS"
add "trainer.save_freq=$SAVE_FREQ"
add "trainer.test_freq=$TEST_FREQ"
add "trainer.critic_warmup=0"
if [[ -n "$TOTAL_STEPS" ]]; then
  add "trainer.total_training_steps=$TOTAL_STEPS"
fi
if [[ -n "$RESUME_PATH" ]]; then
  add "trainer.resume_mode=resume_path"
  add "trainer.resume_from_path=$RESUME_PATH"
fi

if [[ "$DEVICE" == cpu ]]; then
  # docs/design.md §4: the hf rollout backend, FSDP2 with gloo, no compilation, one logical "GPU".
  add "actor_rollout_ref.rollout.name=hf"
  add "actor_rollout_ref.rollout.tensor_model_parallel_size=1"
  add "actor_rollout_ref.rollout.dtype=float32"
  add "+actor_rollout_ref.rollout.engine_kwargs.hf.num_threads=1"
  add "+actor_rollout_ref.rollout.engine_kwargs.hf.eos_logit_bias=$EOS_LOGIT_BIAS"
  add "+actor_rollout_ref.rollout.engine_kwargs.hf.logit_bias=[['?',$QUESTION_LOGIT_BIAS]]"
  add "actor_rollout_ref.rollout.agent.num_workers=1"
  add "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4"
  add "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4"
  add "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4"
  add "actor_rollout_ref.actor.use_torch_compile=False"
  add "actor_rollout_ref.ref.use_torch_compile=False"
  add "+actor_rollout_ref.model.override_config.attn_implementation=sdpa"
  add "actor_rollout_ref.model.enable_gradient_checkpointing=False"
  add "actor_rollout_ref.model.use_remove_padding=False"
  add "data.dataloader_num_workers=0"
  add "reward.num_workers=1"
  if [[ "$ALGORITHM" == ppo ]]; then
    # the critic's attention: recipe/cpu/platform.py patch 3 passes it to verl's value-model loader
    add "+critic.model.override_config.attn_implementation=sdpa"
    add "critic.model.use_remove_padding=False"
    add "critic.model.enable_gradient_checkpointing=False"
    add "critic.fsdp.use_torch_compile=False"
    add "critic.optim.lr=${CRITIC_LR:-1e-4}"
    add "critic.ppo_micro_batch_size_per_gpu=4"
  fi
  add "trainer.device=cpu"
  add "trainer.val_before_train=False"
  add "+ray_kwargs.ray_init.num_gpus=$N_GPUS_PER_NODE"
  add "ray_kwargs.ray_init.num_cpus=16"
  add "transfer_queue.backend.SimpleStorage.num_data_storage_units=1"
  if [[ -z "$RESUME_PATH" ]]; then add "trainer.resume_mode=disable"; fi
else
  add "actor_rollout_ref.rollout.name=vllm"
  add "actor_rollout_ref.rollout.tensor_model_parallel_size=$ROLLOUT_TP"
  add "actor_rollout_ref.rollout.gpu_memory_utilization=$GPU_MEMORY_UTILIZATION"
  # The verl recipe's memory settings (docs/design.md §1): dynamic batch size (the reference and rollout
  # log-prob passes follow the actor's setting), remove-padding, FSDP parameter/optimizer offload.
  add "actor_rollout_ref.actor.use_dynamic_bsz=True"
  add "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$PPO_MAX_TOKEN_LEN_PER_GPU"
  add "actor_rollout_ref.model.use_remove_padding=True"
  add "actor_rollout_ref.actor.fsdp_config.param_offload=True"
  add "actor_rollout_ref.actor.fsdp_config.optimizer_offload=True"
  add "actor_rollout_ref.ref.fsdp_config.param_offload=True"
  # micro-batch sizes, used only when dynamic batch size is turned off
  add "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8"
  add "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8"
  add "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4"
  add "actor_rollout_ref.model.enable_gradient_checkpointing=True"
  add "trainer.val_before_train=False"
  if [[ "$ALGORITHM" == ppo ]]; then
    add "critic.optim.lr=${CRITIC_LR:-1e-5}"
    add "critic.ppo_micro_batch_size_per_gpu=4"
  fi
fi

CMD=("$PYTHON" -m verl.trainer.main_ppo "${ARGS[@]}" "$@")
echo "+ VERL_USE_EXTERNAL_MODULES=$VERL_USE_EXTERNAL_MODULES${VERL_PLATFORM:+ VERL_PLATFORM=$VERL_PLATFORM}" \
  "COLLABLLM_USER_MODEL=$COLLABLLM_USER_MODEL"
print_command "${CMD[@]}"
if [[ -n "$LLM_SERVER_PID" ]]; then
  "${CMD[@]}"  # not exec: the EXIT trap stops the local LLM server afterwards
else
  exec "${CMD[@]}"
fi
