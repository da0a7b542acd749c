# Shell helpers shared by train_sft_collabllm.sh and train_rl_collabllm.sh; sourced, never run.
# Works with bash 3.2 (the macOS default) as well as bash 4+.

# print_usage LAST: the calling script's header lines 2 to LAST without their '# ' prefix, then a pointer to
# the rest of the header (the environment variables).
print_usage() {
  sed -n "2,${1}p" "$0" | sed 's/^# \{0,1\}//'
  echo "See the header of $0 for the environment variables."
}

# hydra_override_key VAR ARG: set VAR to the key of the Hydra override ARG without its '+', '++' or '~'
# prefix ("+reward.x=1" -> "reward.x"); an argument without '=' (e.g. "--cfg") is its own key.
hydra_override_key() {
  local _hydra_key=${2%%=*}
  printf -v "$1" '%s' "${_hydra_key#"${_hydra_key%%[!+~]*}"}"
}

# collect_user_keys ARG...: remember the keys of the caller's overrides (USER_KEYS) and start the list of
# the script's defaults (ARGS) empty. Hydra keys never contain spaces: a space-separated string suffices.
collect_user_keys() {
  local arg key
  USER_KEYS=" "
  for arg in "$@"; do
    hydra_override_key key "$arg"
    USER_KEYS="$USER_KEYS$key "
  done
  ARGS=()
}

# add KEY=VALUE: append this default to ARGS unless the caller overrides KEY (with or without a leading
# '+', '++' or '~'); a leading '+'/'++' of the default itself is kept in the argument.
add() {
  local key
  hydra_override_key key "$1"
  [[ "$USER_KEYS" == *" $key "* ]] || ARGS+=("$1")
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

# prepare_cpu_run: the environment of a CPU run (docs/design.md §4) for the verl processes, with the
# file logger's metrics.jsonl under OUTPUT_DIR; without MODEL_PATH, a tiny random model is built once in
# OUTPUT_DIR/tiny_model (with PYTHON) and used. Reads OUTPUT_DIR and PYTHON; may set MODEL_PATH.
prepare_cpu_run() {
  export VERL_PLATFORM=cpu
  # verl registers its FSDP engine for cuda/npu only; this selects it while the platform is the CPU.
  export VERL_ENGINE_DEVICE=cuda
  export VERL_FILE_LOGGER_PATH=${VERL_FILE_LOGGER_PATH:-$OUTPUT_DIR/metrics.jsonl}
  mkdir -p "$OUTPUT_DIR" "$(dirname "$VERL_FILE_LOGGER_PATH")"
  if [[ -z "${MODEL_PATH:-}" ]]; then
    MODEL_PATH=$OUTPUT_DIR/tiny_model
    if [[ ! -f "$MODEL_PATH/config.json" ]]; then
      echo "+ building tiny model in $MODEL_PATH"
      "$PYTHON" -m collabllm_verl.recipe.cpu.tiny_model --out "$MODEL_PATH"
    fi
  fi
}

# require_data_files sft|rl FILE...: exit 1 with a hint naming process_dataset.py when a local FILE is
# missing (hdfs:// paths are left to verl).
require_data_files() {
  local kind=$1 f
  shift
  for f in "$@"; do
    if [[ "$f" != hdfs://* && ! -f "$f" ]]; then
      echo "missing data file: $f (create it with: python process_dataset.py --dataset_type $kind --local_dir ...)" >&2
      exit 1
    fi
  done
}

# print_command CMD...: print the command line as "+ cmd arg ...", each word shell-quoted.
print_command() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}
