#!/usr/bin/env bash
# Supervised fine-tuning (multi-turn SFT) for the CollabLLM recipe with verl's SFT trainer.
#
#   bash train_sft_collabllm.sh <nproc_per_node> [hydra overrides...]
#   DEVICE=cpu bash train_sft_collabllm.sh 1 [hydra overrides...]     # CPU smoke run with a tiny model
#
# Runs `torchrun --standalone --nnodes=1 --nproc_per_node=<n> -m verl.trainer.sft_trainer` (verl 0.9.1,
# config verl/trainer/config/sft_trainer_engine.yaml) on the parquet files written by
#   python process_dataset.py --dataset ... --local_dir "$DATA_DIR" --dataset_type sft
# Each row's `messages` column (system, user, assistant, ...) is one conversation; the loss covers the
# assistant turns only.
#
# Environment variables (defaults for DEVICE=gpu / DEVICE=cpu):
#   DEVICE            gpu | cpu                                            (gpu)
#   MODEL_PATH        HF model id or directory  (Qwen/Qwen2.5-7B-Instruct / tiny model built on the fly)
#   DATA_DIR          folder with sft_train.parquet, sft_validation.parquet ($HOME/data/collabllm-math-hard)
#   TRAIN_FILE        training parquet                                     ($DATA_DIR/sft_train.parquet)
#   VAL_FILE          validation parquet                                   ($DATA_DIR/sft_validation.parquet)
#   LR                learning rate                                        (1e-6 / 1e-3)
#   TRAIN_BATCH_SIZE  global batch size in conversations                   (64 / 4)
#   MICRO_BATCH_SIZE  per-process micro batch (validation; training uses dynamic batching) (2 / 2)
#   TOTAL_EPOCHS      epochs                                               (3 / 1)
#   TOTAL_STEPS       stop after this many optimizer steps; empty = all epochs (empty / 3)
#   MAX_LENGTH        longest conversation in tokens; a longer one is an error (data.truncation=error)
#                                                                           (8192 / 4096)
#   PROJECT_NAME      tracking project                                     (collabllm-sft)
#   EXPERIMENT_NAME   tracking run name                    (<model name>-math-hard-sft / tiny-cpu-sft)
#   SAVE_DIR          checkpoint folder        (checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME / $OUTPUT_DIR/checkpoints)
#   LOGGER            verl trainer.logger list                             ([console] / [console,file])
#   OUTPUT_DIR        CPU only: tiny model, checkpoints and metrics.jsonl go here  (outputs/sft_cpu)
#   TORCHRUN          launcher command                                     (torchrun)
#   PYTHON            interpreter used to build the tiny model             (python)
# Every checkpoint includes a Hugging Face model in <SAVE_DIR>/global_step_<N>/huggingface.
# Extra arguments are Hydra overrides for verl's SFT config; they take precedence over the defaults
# set here (a default is dropped when you override the same key).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/scripts/common.sh"

usage() { print_usage 6; }

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  usage >&2
  exit 2
fi
NPROC_PER_NODE=$1
shift

DEVICE=${DEVICE:-gpu}
TORCHRUN=${TORCHRUN:-torchrun}
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-$HOME/data/collabllm-math-hard}
TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/sft_train.parquet}
VAL_FILE=${VAL_FILE:-$DATA_DIR/sft_validation.parquet}
PROJECT_NAME=${PROJECT_NAME:-collabllm-sft}

case "$DEVICE" in
  gpu|cuda)
    MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-7B-Instruct}
    EXPERIMENT_NAME=${EXPERIMENT_NAME:-$(basename "$MODEL_PATH")-math-hard-sft}
    SAVE_DIR=${SAVE_DIR:-checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME}
    LR=${LR:-1e-6}
    TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-64}
    MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-2}
    TOTAL_EPOCHS=${TOTAL_EPOCHS:-3}
    TOTAL_STEPS=${TOTAL_STEPS:-}
    MAX_LENGTH=${MAX_LENGTH:-8192}
    LOGGER=${LOGGER:-[console]}
    ;;
  cpu)
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/sft_cpu}
    EXPERIMENT_NAME=${EXPERIMENT_NAME:-tiny-cpu-sft}
    SAVE_DIR=${SAVE_DIR:-$OUTPUT_DIR/checkpoints}
    LR=${LR:-1e-3}
    TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-4}
    MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-2}
    TOTAL_EPOCHS=${TOTAL_EPOCHS:-1}
    TOTAL_STEPS=${TOTAL_STEPS:-3}
    MAX_LENGTH=${MAX_LENGTH:-4096}
    LOGGER=${LOGGER:-[console,file]}
    # verl plug-in that registers the CPU platform in every process (docs/design.md §4).
    add_external_modules front collabllm_verl.recipe.cpu
    prepare_cpu_run
    ;;
  *)
    echo "DEVICE must be gpu or cpu, got '$DEVICE'" >&2
    exit 2
    ;;
esac

require_data_files sft "$TRAIN_FILE" "$VAL_FILE"

# Keys the caller overrides; `add` leaves our default for such a key out (scripts/common.sh).
collect_user_keys "$@"

add "data.train_files=$TRAIN_FILE"
add "data.val_files=$VAL_FILE"
add "data.messages_key=messages"
add "data.train_batch_size=$TRAIN_BATCH_SIZE"
add "data.micro_batch_size_per_gpu=$MICRO_BATCH_SIZE"
add "data.max_length=$MAX_LENGTH"
# A conversation longer than MAX_LENGTH stops the run instead of losing its final assistant turn (the one
# being learned), as the verl recipe; override with data.truncation=right|left to cut instead.
add "data.truncation=error"
add "model.use_remove_padding=True"
add "model.path=$MODEL_PATH"
add "engine=fsdp"
add "engine.strategy=fsdp2"
add "optim.lr=$LR"
add "trainer.project_name=$PROJECT_NAME"
add "trainer.experiment_name=$EXPERIMENT_NAME"
add "trainer.default_local_dir=$SAVE_DIR"
add "trainer.total_epochs=$TOTAL_EPOCHS"
add "trainer.logger=$LOGGER"
add "trainer.n_gpus_per_node=$NPROC_PER_NODE"
add "checkpoint.save_contents=[model,optimizer,extra,hf_model]"
if [[ -n "$TOTAL_STEPS" ]]; then
  add "trainer.total_training_steps=$TOTAL_STEPS"
fi

if [[ "$DEVICE" == cpu ]]; then
  add "trainer.device=cpu"
  add "data.num_workers=0"
  add "engine.use_torch_compile=False"
  add "++model.override_config.attn_implementation=sdpa"
  add "model.enable_gradient_checkpointing=False"
  add "trainer.resume_mode=disable"
else
  add "trainer.save_freq=after_each_epoch"
  add "trainer.test_freq=after_each_epoch"
fi

CMD=("$TORCHRUN" --standalone --nnodes=1 "--nproc_per_node=$NPROC_PER_NODE" -m verl.trainer.sft_trainer "${ARGS[@]}" "$@")
if [[ "$DEVICE" == cpu ]]; then
  echo "+ VERL_USE_EXTERNAL_MODULES=$VERL_USE_EXTERNAL_MODULES VERL_PLATFORM=$VERL_PLATFORM" \
    "VERL_ENGINE_DEVICE=$VERL_ENGINE_DEVICE VERL_FILE_LOGGER_PATH=$VERL_FILE_LOGGER_PATH"
fi
print_command "${CMD[@]}"
exec "${CMD[@]}"
