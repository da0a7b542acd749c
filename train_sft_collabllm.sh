#!/usr/bin/env bash
# Supervised fine-tuning (multi-turn SFT) for the CollabLLM recipe with verl's SFT trainer.
#
#   bash train_sft_collabllm.sh <nproc_per_node> [hydra overrides...]
#   DEVICE=cpu bash train_sft_collabllm.sh 1 [hydra overrides...]     # CPU run with a tiny model
#
# Runs torchrun --standalone --nnodes=1 --nproc_per_node=<n> -m collabllm_verl.recipe.verl_adapters.main_sft:
# verl 0.9.1's SFT trainer on config/collabllm_sft.yaml (DEVICE=cpu: config/collabllm_sft_cpu.yaml), where
# every default lives. This script only turns the environment shortcuts below into Hydra overrides and sets
# the plug-in environment. Hydra overrides given here come last and win.
#
# Environment shortcuts (unset: the YAML's value), each the override it writes:
#   DEVICE=gpu|cpu     --config-name collabllm_sft | collabllm_sft_cpu, and the CPU platform plug-in
#   MODEL_PATH         model.path (DEVICE=cpu: a tiny model built in OUTPUT_DIR)
#   DATA_DIR           data.train_files=$DATA_DIR/sft_train.parquet, data.val_files=$DATA_DIR/sft_validation.parquet
#   TRAIN_FILE, VAL_FILE  data.train_files, data.val_files
#   LR                 optim.lr
#   TRAIN_BATCH_SIZE   data.train_batch_size
#   MICRO_BATCH_SIZE   data.micro_batch_size_per_gpu
#   TOTAL_EPOCHS       trainer.total_epochs
#   TOTAL_STEPS        trainer.total_training_steps (empty: null, all epochs)
#   MAX_LENGTH         data.max_length
#   PROJECT_NAME, EXPERIMENT_NAME, LOGGER  trainer.project_name, trainer.experiment_name, trainer.logger
#   SAVE_DIR           trainer.default_local_dir (DEVICE=cpu: $OUTPUT_DIR/checkpoints)
#   OUTPUT_DIR         DEVICE=cpu: tiny model, checkpoints and metrics.jsonl               (outputs/sft_cpu)
#   TORCHRUN           launcher command                                                     (torchrun)
#   PYTHON             interpreter used to build the tiny model                             (python)
# <nproc_per_node> is also trainer.n_gpus_per_node.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/scripts/common.sh"

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  print_usage 6 >&2
  exit 2
fi
NPROC_PER_NODE=$1
shift

DEVICE=${DEVICE:-gpu}
TORCHRUN=${TORCHRUN:-torchrun}
PYTHON=${PYTHON:-python}
ARGS=()
case "$DEVICE" in
  gpu|cuda)
    ARGS+=(--config-name collabllm_sft)
    ;;
  cpu)
    ARGS+=(--config-name collabllm_sft_cpu)
    # verl plug-in that registers the CPU platform in every process
    add_external_modules front collabllm_verl.recipe.cpu
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/sft_cpu}
    prepare_cpu_run
    SAVE_DIR=${SAVE_DIR:-$OUTPUT_DIR/checkpoints}
    ;;
  *) echo "DEVICE must be gpu or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac

data_shortcuts sft
shortcut MODEL_PATH model.path
shortcut LR optim.lr
shortcut TRAIN_BATCH_SIZE data.train_batch_size
shortcut MICRO_BATCH_SIZE data.micro_batch_size_per_gpu
shortcut TOTAL_EPOCHS trainer.total_epochs
if [[ -n "${TOTAL_STEPS+set}" ]]; then ARGS+=("trainer.total_training_steps=${TOTAL_STEPS:-null}"); fi
shortcut MAX_LENGTH data.max_length
shortcut PROJECT_NAME trainer.project_name
shortcut EXPERIMENT_NAME trainer.experiment_name
shortcut LOGGER trainer.logger
shortcut SAVE_DIR trainer.default_local_dir
ARGS+=("trainer.n_gpus_per_node=$NPROC_PER_NODE")

CMD=("$TORCHRUN" --standalone --nnodes=1 "--nproc_per_node=$NPROC_PER_NODE" -m collabllm_verl.recipe.verl_adapters.main_sft "${ARGS[@]}" "$@")
if [[ "$DEVICE" == cpu ]]; then
  echo "+ VERL_USE_EXTERNAL_MODULES=$VERL_USE_EXTERNAL_MODULES VERL_PLATFORM=$VERL_PLATFORM" \
    "VERL_ENGINE_DEVICE=$VERL_ENGINE_DEVICE VERL_FILE_LOGGER_PATH=$VERL_FILE_LOGGER_PATH"
fi
exec "${CMD[@]}"
