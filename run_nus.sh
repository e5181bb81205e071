#!/usr/bin/env bash
# A method (--model, default dadh) on NUS-WIDE with its published settings (its SETTINGS['nus'],
# for DADH lr 1e-5 and dropout), then its test:
#   ./run_nus.sh BIT [--model NAME] [--seeds 1,2,3] [--option value ...]
# --seeds trains and tests once per seed, in <checkpoint_dir>/seed<N>/ (see train_test.sh).
set -euo pipefail
bit=${1:?usage: ./run_nus.sh BIT [--model NAME] [--seeds 1,2,3] [--option value ...]}
shift
settings=$("$(dirname "$0")/settings.sh" nus "$@")
exec "$(dirname "$0")/train_test.sh" --flag nus --bit "$bit" $settings "$@"
