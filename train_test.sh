#!/usr/bin/env bash
# main.py train, then test, with the same options:
#   ./train_test.sh [--models dadh,agah,dcmh,ssah] [--seeds 1,2,3] [--option value ...]
# Each method runs with its own published settings for the data set (its SETTINGS in models/:
# e.g. DADH's --lr 1e-5 --dropout True on --flag nus), before the options given here, which win.
# With --seeds, once per seed, each in its own folder: <checkpoint_dir>/seed<N>/<dataset>_<bit>[_<model>]/
# (checkpoint_dir as given, default checkpoints), which `python main.py report` then averages.
# With --models or --seeds it is a sweep, one run after another, that resumes where it stopped:
# a run trained and tested is skipped, a half-done run resumes (--resume True), a trained one is
# only tested. SIGINT or SIGTERM to its process group (Ctrl-C; a scheduler's pre-emption) stops the
# current run after its batch, keeping its last epoch, and the sweep; run it again to go on.
set -euo pipefail
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
seeds='' models='' flag=mir checkpoint_dir=() options=()
while (($#)); do
  case $1 in
    --seeds) seeds=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
    --seeds=*) seeds=${1#*=}; shift ;;
    --models|--model) models=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
    --models=*|--model=*) models=${1#*=}; shift ;;
    --checkpoint_dir) checkpoint_dir=("$1" "${2-}"); shift $(($# > 1 ? 2 : 1)) ;;
    --checkpoint_dir=*) checkpoint_dir=(--checkpoint_dir "${1#*=}"); shift ;;
    --flag) flag=${2-}; options+=("$1" "${2-}"); shift $(($# > 1 ? 2 : 1)) ;;
    --flag=*) flag=${1#*=}; options+=("$1"); shift ;;
    *) options+=("$1"); shift ;;
  esac
done
sweep=$([ -n "$seeds$models" ] && echo yes || echo no)
models=${models:-dadh}
known=$("$python" -c 'import models; print(" ".join(models.METHODS))')
if ! [[ $models =~ ^[a-z0-9]+(,[a-z0-9]+)*$ ]]; then
  echo "error: --models must be method names separated by commas (of: $known), got '$models'" >&2
  exit 2
fi
for model in ${models//,/ }; do
  [[ " $known " == *" $model "* ]] || { echo "error: --models: no method '$model' (known: $known)" >&2; exit 2; }
done
if [ -n "$seeds" ] && ! [[ $seeds =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  echo "error: --seeds must be integers separated by commas, e.g. --seeds 1,2,3, got '$seeds'" >&2
  exit 2
fi
for option in "${options[@]}"; do
  case $option in --seed|--seed=*) [ -n "$seeds" ] && { echo 'error: give --seeds or --seed, not both' >&2; exit 2; } ;; esac
done
root=${checkpoint_dir[1]:-checkpoints}

# One run: train (or resume, or skip) and test, with the method's settings first.
one() {  # one MODEL [SEED]
  local model=$1 seed=${2-} where=() run=()
  # the method's settings, then the options given, less those of other methods only (config.run_words)
  mapfile -d '' -t run < <("$python" -c 'import sys, config
sys.stdout.write("\0".join(config.run_words(sys.argv[1], sys.argv[2], sys.argv[3:])) + "\0")' \
    "$model" "$flag" "${options[@]}")
  run=(--model "$model" "${run[@]}")
  if [ -n "$seed" ]; then where=(--seed "$seed" --checkpoint_dir "$root/seed$seed"); else where=("${checkpoint_dir[@]}"); fi
  if [ "$sweep" = no ]; then
    "$python" main.py train "${run[@]}" "${where[@]}"
    "$python" main.py test "${run[@]}" "${where[@]}"
    return
  fi
  local state
  state=$("$python" main.py status "${run[@]}" "${where[@]}")
  case ${state%% *} in
    tested) echo "sweep: ${state#* } is trained and tested: skipped"; return ;;
    trained) echo "sweep: ${state#* } is trained: testing it" ;;
    partial) echo "sweep: ${state#* } is half-done: resuming it"
             "$python" main.py train "${run[@]}" "${where[@]}" --resume True ;;
    *) "$python" main.py train "${run[@]}" "${where[@]}" ;;
  esac
  "$python" main.py test "${run[@]}" "${where[@]}"
}

for model in ${models//,/ }; do
  if [ -z "$seeds" ]; then one "$model"; else for seed in ${seeds//,/ }; do one "$model" "$seed"; done; fi
done
if [ "$sweep" = yes ]; then
  echo "sweep done ($models${seeds:+; seeds $seeds}): the table: python main.py report --checkpoint_dir $root"
fi
