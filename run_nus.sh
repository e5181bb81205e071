#!/usr/bin/env bash
# DADH on NUS-WIDE with the published settings (lr 1e-5, dropout), then its test:
#   ./run_nus.sh BIT [--seeds 1,2,3] [--option value ...]
# --seeds trains and tests once per seed, in <checkpoint_dir>/seed<N>/ (see train_test.sh).
set -euo pipefail
bit=${1:?usage: ./run_nus.sh BIT [--seeds 1,2,3] [--option value ...]}
shift
exec "$(dirname "$0")/train_test.sh" --flag nus --bit "$bit" --lr 1e-5 --dropout True "$@"
