#!/usr/bin/env bash
# main.py train, then test, with the same options: ./train_test.sh [--seeds 1,2,3] [--option value ...]
# With --seeds, once per seed, each in its own folder: <checkpoint_dir>/seed<N>/<dataset>_<bit>/
# (checkpoint_dir as given, default checkpoints), which `python main.py report` then averages.
set -euo pipefail
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
seeds='' checkpoint_dir=() options=()
while (($#)); do
  case $1 in
    --seeds) seeds=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
    --seeds=*) seeds=${1#*=}; shift ;;
    --checkpoint_dir) checkpoint_dir=("$1" "${2-}"); shift $(($# > 1 ? 2 : 1)) ;;
    --checkpoint_dir=*) checkpoint_dir=(--checkpoint_dir "${1#*=}"); shift ;;
    *) options+=("$1"); shift ;;
  esac
done
if [ -z "$seeds" ]; then
  "$python" main.py train "${options[@]}" "${checkpoint_dir[@]}"
  exec "$python" main.py test "${options[@]}" "${checkpoint_dir[@]}"
fi
if ! [[ $seeds =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  echo "error: --seeds must be integers separated by commas, e.g. --seeds 1,2,3, got '$seeds'" >&2
  exit 2
fi
for option in "${options[@]}"; do
  case $option in --seed|--seed=*) echo 'error: give --seeds or --seed, not both' >&2; exit 2 ;; esac
done
root=${checkpoint_dir[1]:-checkpoints}
for seed in ${seeds//,/ }; do
  "$python" main.py train "${options[@]}" --seed "$seed" --checkpoint_dir "$root/seed$seed"
  "$python" main.py test "${options[@]}" --seed "$seed" --checkpoint_dir "$root/seed$seed"
done
echo "seeds $seeds: one run folder each under $root/seed*/; the table: python main.py report --checkpoint_dir $root"
