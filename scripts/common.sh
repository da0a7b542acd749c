# Shell helpers shared by train_sft_collabllm.sh and train_rl_collabllm.sh; sourced, never run.
# Works with bash 3.2 (the macOS default) as well as bash 4+. The scripts append to the array ARGS.

# print_usage LAST: the calling script's header lines 2 to LAST without their '# ' prefix, then a pointer to
# the rest of the header (the environment shortcuts).
print_usage() {
  sed -n "2,${1}p" "$0" | sed 's/^# \{0,1\}//'
  echo "See the header of $0 for the environment shortcuts; the defaults are in config/*.yaml."
}

# shortcut VAR KEY: when the environment variable VAR is set and not empty, append the override KEY=$VAR to
# ARGS (KEY may start with '++' for a key the composed config does not have yet).
shortcut() {
  local value=${!1:-}
  if [[ -n "$value" ]]; then ARGS+=("$2=$value"); fi
}

# price_shortcut VAR KEY...: when VAR holds "<in>,<out>" (USD per million input and output tokens), append
# KEY.input_cost_per_token=<in/1e6> and KEY.output_cost_per_token=<out/1e6> to ARGS for every KEY given
# (KEY may start with '++'); the numbers are read as model_args.parse_prices reads --llm_prices (two numbers
# >= 0); anything else in VAR is an error (exit status 2).
price_shortcut() {
  local var=$1 value=${!1:-} key per_token
  shift
  if [[ -z "$value" ]]; then return 0; fi
  if ! per_token=$(awk -v v="$value" 'BEGIN {
      n = split(v, p, ",")
      if (n != 2) exit 1
      for (i = 1; i <= 2; i++) if (p[i] !~ /^[ ]*[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][-+]?[0-9]+)?[ ]*$/) exit 1
      printf "%.10g %.10g", p[1] / 1e6, p[2] / 1e6 }'); then
    echo "$var expects <in>,<out>: USD per million input and output tokens, e.g. 0.15,0.6; got '$value'" >&2
    exit 2
  fi
  for key in "$@"; do
    ARGS+=("$key.input_cost_per_token=${per_token% *}" "$key.output_cost_per_token=${per_token#* }")
  done
}

# data_shortcuts rl|sft: DATA_DIR, TRAIN_FILE and VAL_FILE as overrides of data.train_files/data.val_files
# (DATA_DIR names the folder of <kind>_train.parquet and <kind>_validation.parquet, as process_dataset.py
# writes them; TRAIN_FILE and VAL_FILE win over it).
data_shortcuts() {
  if [[ -n "${DATA_DIR:-}" ]]; then
    TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/$1_train.parquet}
    VAL_FILE=${VAL_FILE:-$DATA_DIR/$1_validation.parquet}
  fi
  shortcut TRAIN_FILE data.train_files
  shortcut VAL_FILE data.val_files
}

# add_external_modules front|back MODULE...: put each MODULE that VERL_USE_EXTERNAL_MODULES (the
# comma-separated modules verl imports in every process) does not list yet before ("front") or after
# ("back") the modules already listed, in the given order, and export the variable.
add_external_modules() {
  local where=$1 module missing=""
  shift
  case "$where" in
    front|back) ;;
    *) echo "add_external_modules: expected front or back, got '$where'" >&2; return 2 ;;
  esac
  for module in "$@"; do
    case ",${VERL_USE_EXTERNAL_MODULES:-},$missing," in
      *,"$module",*) ;;
      *) missing="${missing:+$missing,}$module" ;;
    esac
  done
  if [[ -n "$missing" && "$where" == front ]]; then
    VERL_USE_EXTERNAL_MODULES="$missing${VERL_USE_EXTERNAL_MODULES:+,$VERL_USE_EXTERNAL_MODULES}"
  elif [[ -n "$missing" ]]; then
    VERL_USE_EXTERNAL_MODULES="${VERL_USE_EXTERNAL_MODULES:+$VERL_USE_EXTERNAL_MODULES,}$missing"
  fi
  export VERL_USE_EXTERNAL_MODULES
}

# prepare_cpu_run: the environment of a CPU run for the verl processes, with the file logger's metrics.jsonl
# under OUTPUT_DIR; without MODEL_PATH, a tiny random model is built once in OUTPUT_DIR/$TINY_MODEL_NAME
# (default tiny_model; with PYTHON and the builder's options in TINY_MODEL_ARGS, e.g. "--hidden-size 128")
# and used. Reads OUTPUT_DIR, PYTHON, TINY_MODEL_NAME, TINY_MODEL_ARGS; may set MODEL_PATH.
prepare_cpu_run() {
  export VERL_PLATFORM=cpu
  # verl registers its FSDP engine for cuda/npu only; this selects it while the platform is the CPU.
  export VERL_ENGINE_DEVICE=cuda
  export VERL_FILE_LOGGER_PATH=${VERL_FILE_LOGGER_PATH:-$OUTPUT_DIR/metrics.jsonl}
  mkdir -p "$OUTPUT_DIR" "$(dirname "$VERL_FILE_LOGGER_PATH")"
  if [[ -z "${MODEL_PATH:-}" ]]; then
    MODEL_PATH=$OUTPUT_DIR/${TINY_MODEL_NAME:-tiny_model}
    if [[ ! -f "$MODEL_PATH/config.json" ]]; then
      echo "+ building tiny model in $MODEL_PATH"
      # shellcheck disable=SC2086  # TINY_MODEL_ARGS holds several options
      "$PYTHON" -m collabllm_verl.recipe.cpu.tiny_model --out "$MODEL_PATH" ${TINY_MODEL_ARGS:-}
    fi
  fi
}

# remove_orphan_weight_segments: delete the /dev/shm/verl_weights_* segments (verl's shared-memory weight sync)
# that no running process has mapped, i.e. those a killed or failed run left behind; a live run's are kept.
remove_orphan_weight_segments() {
  local segment
  for segment in /dev/shm/verl_weights_*; do
    [[ -e "$segment" ]] || continue
    if ! grep -qsF -- "${segment##*/}" /proc/[0-9]*/maps; then
      rm -f -- "$segment" && echo "+ removed the orphaned weight-sync segment $segment" >&2
    fi
  done
}

# on_exit: the scripts' EXIT trap: stop the local LLM server (LLM_SERVER_PID), then, with
# CLEAN_WEIGHT_SEGMENTS=1 (verl's vLLM rollout on a CPU), remove_orphan_weight_segments.
on_exit() {
  if [[ -n "${LLM_SERVER_PID:-}" ]]; then
    kill "$LLM_SERVER_PID" 2>/dev/null || true
    wait "$LLM_SERVER_PID" 2>/dev/null || true
  fi
  if [[ "${CLEAN_WEIGHT_SEGMENTS:-0}" == 1 ]]; then remove_orphan_weight_segments; fi
}

# start_local_llm_server LOG_DIR: start the offline stand-in server (scripted user and judges) on a free
# loopback port, wait until it is ready, stop it when the script exits; sets LLM_API_BASE, LLM_API_KEY
# (a placeholder unless set) and LLM_SERVER_PID. Its log is LOG_DIR/llm_server.log.
start_local_llm_server() {
  local log_dir=$1 ready
  mkdir -p "$log_dir"
  ready=$log_dir/llm_server.url
  rm -f "$ready"
  "$PYTHON" -m collabllm_verl.recipe.offline.server --port 0 --ready-file "$ready" >"$log_dir/llm_server.log" 2>&1 &
  LLM_SERVER_PID=$!
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  for _ in $(seq 1 300); do
    [[ -s "$ready" ]] && break
    if ! kill -0 "$LLM_SERVER_PID" 2>/dev/null; then
      echo "local LLM server failed to start; see $log_dir/llm_server.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  if [[ ! -s "$ready" ]]; then
    echo "local LLM server did not become ready in 60 s; see $log_dir/llm_server.log" >&2
    exit 1
  fi
  LLM_API_BASE=$(<"$ready")
  LLM_API_KEY=${LLM_API_KEY:-local}
  echo "+ local LLM server (user simulator and judges) at $LLM_API_BASE, pid $LLM_SERVER_PID"
}

# prepare_cpu_vllm_run: what verl's vLLM rollout on a CPU needs (docs/vllm_cpu.md), before prepare_cpu_run:
# the installed stack checked (scripts/install_vllm_cpu.sh), every address on the loopback interface, a small
# KV cache (VLLM_CPU_KVCACHE_SPACE, GiB), a tiny model with head_dim 32 (vLLM's CPU attention rejects 16), and
# orphaned weight-sync segments removed on exit (CLEAN_WEIGHT_SEGMENTS).
prepare_cpu_vllm_run() {
  "$PYTHON" -c 'import sys
from collabllm_verl.recipe.cpu.vllm_patches import VllmInstallError, check_vllm_install
try:
    check_vllm_install()
except VllmInstallError as exc:
    sys.exit(f"ROLLOUT=vllm: {exc}")' || exit 2
  export VLLM_HOST_IP=${VLLM_HOST_IP:-127.0.0.1}
  export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
  TINY_MODEL_NAME=${TINY_MODEL_NAME:-tiny_model_head32}
  TINY_MODEL_ARGS=${TINY_MODEL_ARGS:---hidden-size 128}
  # a segment of a failed sync must not outlive the run (the trainer's script waits for it, see on_exit)
  CLEAN_WEIGHT_SEGMENTS=1
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
