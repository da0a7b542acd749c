#!/usr/bin/env bash
# The whole CollabLLM pipeline on a CPU, in a few minutes, with no GPU, no API key and no download:
#
#   bash quickstart_cpu.sh [OUTPUT_DIR]            (default OUTPUT_DIR: outputs/quickstart)
#
# 1. data: the user simulator writes a short, vague opener for each bundled MATH level-5 problem
#    (build_dataset.py --mode openers), and the openers become the RL prompts, the full problem staying the
#    simulator's hidden goal; the SFT rows come from the problems and their reference solutions;
# 2. build a tiny random Qwen2 model and run multi-turn SFT for 3 steps (train_sft_collabllm.sh, DEVICE=cpu);
# 3. run GRPO for 2 steps from the SFT checkpoint with the CollabLLM agent loop (forward sampling with the
#    user simulator) and the collabllm reward manager (train_rl_collabllm.sh, DEVICE=cpu). The user
#    simulator and the judges are offline, rule-based stand-ins served by a local OpenAI-compatible server
#    (build_dataset.py starts its own with --local_server).
#
# Each GRPO step prints a "[collabllm reward] step N: ..." line with the per-metric reward breakdown; the
# sampled conversations of the last step, with their metric scores, are written to
# OUTPUT_DIR/rl/checkpoints/conversations/step_<NNNNNN>.jsonl. Environment variables of the two training
# scripts (e.g. TOTAL_STEPS, NUM_REPEAT_ROLLOUTS) are passed through to them.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-outputs/quickstart}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$OUT/data
export PYTHON DEVICE=cpu

MATH=$REPO/data/math/math500_level5.jsonl
OPENERS=$OUT/openers
echo "== 1/3 data: simulated openers for the bundled MATH level-5 problems ($OPENERS), RL and SFT rows in $DATA"
"$PYTHON" "$REPO/build_dataset.py" --dataset "$MATH" --mode openers --local_server \
  --user_model openai/scripted-user --local_dir "$OPENERS" --no_progress
"$PYTHON" "$REPO/process_dataset.py" --dataset "$OPENERS" --local_dir "$DATA" --dataset_type rl
"$PYTHON" "$REPO/process_dataset.py" --dataset "$MATH" --local_dir "$DATA" --dataset_type sft

echo "== 2/3 SFT of a tiny model on the CPU"
DATA_DIR=$DATA OUTPUT_DIR=$OUT/sft bash "$REPO/train_sft_collabllm.sh" 1
SFT_STEP=$(ls -d "$OUT"/sft/checkpoints/global_step_* | sort -t_ -k3 -n | tail -n 1)
SFT_MODEL=$SFT_STEP/huggingface
if [[ ! -f "$SFT_MODEL/config.json" ]]; then
  echo "SFT did not save a Hugging Face model in $SFT_MODEL" >&2
  exit 1
fi

echo "== 3/3 GRPO with the CollabLLM agent loop and reward manager, from $SFT_MODEL"
DATA_DIR=$DATA OUTPUT_DIR=$OUT/rl MODEL_PATH=$SFT_MODEL bash "$REPO/train_rl_collabllm.sh"

CONVERSATIONS=$OUT/rl/checkpoints/conversations
LAST=$(ls "$CONVERSATIONS"/step_*.jsonl | sort | tail -n 1)
echo
echo "Done."
echo "  reward breakdown per step:       $CONVERSATIONS/summary.jsonl"
echo "  last step's conversations:       $LAST"
echo "  step metrics (verl file logger): $OUT/rl/metrics.jsonl"
echo "  RL checkpoint (Hugging Face):    $(ls -d "$OUT"/rl/checkpoints/global_step_* | sort -t_ -k3 -n | tail -n 1)/actor/huggingface"
