#!/usr/bin/env bash
# A method on NUS-WIDE with its published settings (config.settings: DADH's lr 1e-5 and dropout),
# then its test:
#   ./run_nus.sh BIT [--seeds 1,2,3] [--model NAME] [--option value ...]
# --seeds trains and tests once per seed, in <checkpoint_dir>/seed<N>/ (see train_test.sh).
set -euo pipefail
bit=${1:?usage: ./run_nus.sh BIT [--seeds 1,2,3] [--model NAME] [--option value ...]}
shift
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
model=dadh previous=''
for arg in "$@"; do
  case $previous in --model) model=$arg ;; esac
  case $arg in --model=*) model=${arg#*=} ;; esac
  previous=$arg
done
settings=$(PYTHONPATH="$(dirname "$0")" "$python" -c 'import sys, config
print(config.settings(sys.argv[1], "nus") if sys.argv[1] in config.METHODS else "")' "$model")
# shellcheck disable=SC2086  # the settings are words
exec "$(dirname "$0")/train_test.sh" --flag nus --bit "$bit" $settings "$@"
