#!/usr/bin/env bash
# Ask when it is needed: the paper's forward-window ablation on the ambiguity-controlled family, on a CPU.
#
#   bash benchmarks/bench_ask_when_needed.sh OUT_DIR
#   HELDOUT=my_rows.jsonl STEPS=2 ROWS=8 EVAL_ROWS=4 bash benchmarks/bench_ask_when_needed.sh OUT_DIR   # tiny run
#
# SmolLM2-135M-Instruct is trained with GRPO on held-in rows (data/ambiguity/ambiguity_heldin.jsonl) twice,
# with identical settings and seeds except the forward window: w = 2 (S futures per response, the CollabLLM
# multiturn-aware reward) and w = 0 (no future: the reward scores the conversation that ends with the
# response, the single-turn baseline). Base, w0 and w2 are evaluated on held-out rows (different templates;
# HELDOUT=FILE replaces them with any file in the same format) with evaluate.py, and paired by task
# (python -m collabllm_verl.recipe.evaluation.ask_ablation) into OUT_DIR/results.json:
#   {"arms": {"base": M, "w0": M, "w2": M}, "vs_base": {"w0": D, "w2": D}, "settings": {...},
#    "conversations": {...}, "heldin_signal": {"w0": ..., "w2": ...}}
# (heldin_signal: what each arm's training reward paid on held-in rows for asking vs answering, by ambiguity)
# User simulator: the offline stand-in for these rows (scripted-ambiguity-user: the clarification when
# asked on an ambiguous row, "it is all in my first message" on a clear one, "not what I need" to a wrong
# answer, the end signal to a right one); no judge. Results are stand-in results.
# Reward: must_contain (rule-based success, 0/1) + TOKEN_WEIGHT x token_amount in thousands of policy tokens
# of the assistant messages (default -2: 0.002 per token; a needless question and its answer, ~15-25
# tokens, cost ~0.04, a tenth of what asking is worth on an ambiguous row, ~+0.5 success; a full 3-turn
# conversation of 64-token replies costs ~0.38). asks_question is logged with weight 0.
# Stages (each skipped when its output exists, so a re-run resumes): model, data, train_w0, train_w2,
# eval_base, eval_w0, eval_w2, results, plot (OUT_DIR/training_steps.png: both arms' per-step
# reward, metrics and diagnostics); STAGES picks some. Size knobs below.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $# -ge 1 ]] || { sed -n 2,4p "$0" | sed 's/^# \{0,1\}//'; exit 2; }
mkdir -p "$1"
RUN=$(cd "$1" && pwd)
PYTHON=${PYTHON:-python}
HELDIN=${HELDIN:-$REPO/data/ambiguity/ambiguity_heldin.jsonl}
HELDOUT=${HELDOUT:-$REPO/data/ambiguity/ambiguity_heldout.jsonl}
MODEL=${MODEL:-}                     # a Hugging Face checkpoint folder; empty: SmolLM2-135M-Instruct, materialised
STEPS=${STEPS:-10}                   # GRPO steps per arm (the measured run: 51 min end to end on 2 cores)
ROWS=${ROWS:-36}                     # held-in rows used (the first ROWS; 2 of them go to validation)
BATCH=${BATCH:-4}                    # prompts per step
N=${N:-4}                            # responses per prompt (the GRPO group)
MINI_BATCH=${MINI_BATCH:-$BATCH}     # prompts per actor update (MINI_BATCH x N: a multiple of 4)
S=${S:-3}                            # futures per response (identical in both arms; w0 futures are empty)
LR=${LR:-5e-5}
TEMPERATURE=${TEMPERATURE:-0.7}      # policy sampling, in rollouts and in evaluation alike
RESPONSE_LENGTH=${RESPONSE_LENGTH:-64}  # tokens per policy turn
TOKEN_WEIGHT=${TOKEN_WEIGHT:--2}     # weight of token_amount (thousands of assistant tokens, policy tokenizer)
QUESTION_LOGIT_BIAS=${QUESTION_LOGIT_BIAS:-6}  # logit bias of "?" in rollouts (both arms; 0: none): exploration.
                                     # Held-in probe of the base model, first replies asking (ambiguous / clear
                                     # rows): bias 0: 0.03 / 0.00, 3: 0.00 / 0.03, 6: 0.22 / 0.28
BIAS_FUTURES=${BIAS_FUTURES:-0}      # 1: forward-sampled replies get the same biases as the trained response;
                                     # 0: they get EOS_LOGIT_BIAS only (rollout.custom.future_eos_logit_bias), so
                                     # the futures that score a question are the policy's own answers (with 1,
                                     # the first full run's held-in futures asked again after the clarification
                                     # in 36 of 54 and used the detail in 4)
SKIP_PENALTY=${SKIP_PENALTY:--0.4}   # reward of a truncated response (not continued; both arms): below any
                                     # finished conversation (3 replies x 64 tokens cost 0.38), so that a cut-off
                                     # reply never beats a wrong answer (with 0, held-in w0 training drifted to
                                     # truncated replies: 5 of 16 skipped at step 1, 8-10 of 16 at steps 5-6)
EOS_LOGIT_BIAS=${EOS_LOGIT_BIAS:-0}  # end-of-turn logit bias in rollouts (both arms; the tiny test model needs ~3.5)
SEED=${SEED:-0}
EVAL_ROWS=${EVAL_ROWS:-}             # held-out rows evaluated (empty: all)
EVAL_SAMPLES=${EVAL_SAMPLES:-2}      # conversations per held-out row
EVAL_MAX_MESSAGES=${EVAL_MAX_MESSAGES:-6}
STAGES=,${STAGES:-model,data,train_w0,train_w2,eval_base,eval_w0,eval_w2,results,plot},
if (( BATCH % MINI_BATCH || (MINI_BATCH * N) % 4 )); then
  echo "MINI_BATCH=$MINI_BATCH must divide BATCH=$BATCH, and MINI_BATCH x N=$((MINI_BATCH * N)) must be a" \
    "multiple of 4 (the CPU preset's micro-batch)" >&2
  exit 2
fi
for file in "$HELDIN" "$HELDOUT"; do [[ -s "$file" ]] || { echo "no rows file: $file" >&2; exit 2; }; done
export LITELLM_LOCAL_MODEL_COST_MAP=True LOCAL_KEY=local

log() { echo "== $(date +%H:%M:%S) $*"; }
stage() { [[ "$STAGES" == *",$1,"* ]]; }

# The offline stand-in user for both row files (and the default judge stand-ins), stopped on exit.
rm -f "$RUN/llm_server.url"
"$PYTHON" -m collabllm_verl.recipe.offline.server --port 0 --ready-file "$RUN/llm_server.url" \
  --ambiguity-rows "$HELDIN" --ambiguity-rows "$HELDOUT" >"$RUN/llm_server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [[ -s "$RUN/llm_server.url" ]] && break; sleep 0.2; done
[[ -s "$RUN/llm_server.url" ]] || { echo "local LLM server did not start; see $RUN/llm_server.log" >&2; exit 1; }
API_BASE=$(<"$RUN/llm_server.url")

if [[ -z "$MODEL" ]]; then
  MODEL=$RUN/smollm2
  if stage model && [[ ! -f "$MODEL/smollm2_source.json" ]]; then
    log "materialising SmolLM2-135M-Instruct"
    "$PYTHON" -m collabllm_verl.recipe.cpu.smollm2 --out "$MODEL"
  fi
fi

if stage data && [[ ! -s "$RUN/data/rl_train.parquet" ]]; then
  log "held-in rows -> RL rows (the opener is the first user turn, the complete request the hidden goal)"
  "$PYTHON" "$REPO/process_dataset.py" --dataset "$HELDIN" --local_dir "$RUN/data" --dataset_type rl \
    --max_rows "$ROWS" --validation_size 2 --seed "$SEED"
fi

train() {  # train ARM W: GRPO with forward window W into $RUN/ARM
  local arm=$1 w=$2
  if [[ -d "$RUN/$arm/checkpoints/global_step_$STEPS/actor/huggingface" ]]; then return; fi
  log "GRPO $arm (w=$w): $STEPS steps of $BATCH prompts x $N responses"
  local future_bias=()
  [[ "$BIAS_FUTURES" == 1 ]] || future_bias=(+actor_rollout_ref.rollout.custom.future_eos_logit_bias="$EOS_LOGIT_BIAS")
  DEVICE=cpu MODEL_PATH=$MODEL DATA_DIR=$RUN/data OUTPUT_DIR=$RUN/$arm \
    TRAIN_BATCH_SIZE=$BATCH ROLLOUT_N=$N NUM_REPEAT_ROLLOUTS=$S MAX_USER_TURNS=$w MAX_ASSISTANT_TURNS=2 \
    PPO_MINI_BATCH_SIZE=$MINI_BATCH MAX_RESPONSE_LENGTH=$RESPONSE_LENGTH EOS_LOGIT_BIAS=$EOS_LOGIT_BIAS \
    QUESTION_LOGIT_BIAS=$QUESTION_LOGIT_BIAS LR=$LR TOTAL_STEPS=$STEPS SAVE_FREQ=$STEPS TOTAL_EPOCHS=100 \
    LOCAL_LLM_SERVER=0 LLM_API_BASE=$API_BASE LLM_API_KEY=local USER_MODEL=openai/scripted-ambiguity-user \
    bash "$REPO/train_rl_collabllm.sh" \
    '~reward.reward_kwargs.metric_weights.accuracy' \
    '~reward.reward_kwargs.metric_weights.interactivity' \
    +reward.reward_kwargs.metric_weights.must_contain=1 \
    reward.reward_kwargs.metric_weights.token_amount="$TOKEN_WEIGHT" \
    +reward.reward_kwargs.metric_weights.asks_question=0 \
    +reward.reward_kwargs.metric_kwargs.token_amount.unit=tokens \
    +reward.reward_kwargs.metric_kwargs.token_amount.roles=assistant \
    +reward.reward_kwargs.metric_kwargs.token_amount.scale=0.001 \
    +reward.reward_kwargs.skip_penalty="$SKIP_PENALTY" \
    "${future_bias[@]}" \
    actor_rollout_ref.rollout.temperature="$TEMPERATURE" \
    data.seed="$SEED" \
    +actor_rollout_ref.rollout.engine_kwargs.hf.num_threads=2
}
stage train_w0 && train w0 0
stage train_w2 && train w2 2

evaluated() {  # evaluated OUT: every conversation of the evaluation in OUT was scored
  "$PYTHON" -c 'import json, sys; c = json.load(open(sys.argv[1]))["conversations"]; sys.exit(c["scored"] != c["expected"])' \
    "$1/summary.json" 2>/dev/null
}

evaluate() {  # evaluate ARM CHECKPOINT
  evaluated "$RUN/eval_$1" && return
  log "evaluating $1 on the held-out rows"
  "$PYTHON" "$REPO/evaluate.py" --dataset "$HELDOUT" --out "$RUN/eval_$1" --label "$1" \
    --policy_checkpoint "$2" --policy_device cpu --max_tokens "$RESPONSE_LENGTH" --temperature "$TEMPERATURE" \
    ${EVAL_ROWS:+--num_rows "$EVAL_ROWS"} --samples_per_row "$EVAL_SAMPLES" --max_messages "$EVAL_MAX_MESSAGES" \
    --metrics must_contain,asks_question,token_amount --seed "$SEED" \
    --user_model openai/scripted-ambiguity-user --api_base "$API_BASE" --api_key_env LOCAL_KEY \
    --timeout 1800 --num_retries 1 --no_progress
}
checkpoint() { echo "$RUN/$1/checkpoints/global_step_$STEPS/actor/huggingface"; }
stage eval_base && evaluate base "$MODEL"
stage eval_w0 && evaluate w0 "$(checkpoint w0)"
stage eval_w2 && evaluate w2 "$(checkpoint w2)"

if stage results; then
  "$PYTHON" - "$RUN/settings.json" <<PY
import json, os, sys
settings = {
    "model": "$MODEL", "heldin": "$HELDIN", "heldout": "$HELDOUT", "steps": $STEPS, "rows": $ROWS,
    "batch": $BATCH, "group_n": $N, "mini_batch": $MINI_BATCH, "futures_s": $S, "lr": "$LR",
    "temperature": $TEMPERATURE, "response_length": $RESPONSE_LENGTH, "token_weight": $TOKEN_WEIGHT,
    "token_unit": "thousands of policy tokens of assistant messages", "question_logit_bias": $QUESTION_LOGIT_BIAS,
    "skip_penalty": $SKIP_PENALTY, "eos_logit_bias": $EOS_LOGIT_BIAS, "bias_futures": $BIAS_FUTURES,
    "seed": $SEED, "eval_rows": "${EVAL_ROWS:-all}", "eval_samples": $EVAL_SAMPLES,
    "eval_max_messages": $EVAL_MAX_MESSAGES, "forward_window": {"w0": 0, "w2": 2}, "max_assistant_turns": 2,
    "user_simulator": "openai/scripted-ambiguity-user (offline stand-in)",
    "reward": "must_contain + token_weight x token_amount",
}
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as fh:
    json.dump(settings, fh, indent=2)
os.replace(tmp, sys.argv[1])
PY
  "$PYTHON" -m collabllm_verl.recipe.evaluation.ask_ablation --run base="$RUN/eval_base" --run w0="$RUN/eval_w0" \
    --run w2="$RUN/eval_w2" --dump w0="$RUN/w0/checkpoints/conversations" \
    --dump w2="$RUN/w2/checkpoints/conversations" --rows "$HELDIN" --settings "$RUN/settings.json" \
    --out "$RUN/results.json"
  log "done: $RUN/results.json; per-step training summaries: $RUN/w{0,2}/checkpoints/conversations/summary.jsonl"
fi
if stage plot; then
  "$PYTHON" "$REPO/benchmarks/plot_training_steps.py" --out "$RUN/training_steps.png" \
    w0="$RUN/w0/checkpoints/conversations/summary.jsonl" w2="$RUN/w2/checkpoints/conversations/summary.jsonl"
fi
