#!/usr/bin/env bash
# DADH on MIRFlickr-25K with the published settings, then its test:
#   ./run_mir.sh BIT [--seeds 1,2,3] [--option value ...]
# --seeds trains and tests once per seed, in <checkpoint_dir>/seed<N>/ (see train_test.sh).
set -euo pipefail
bit=${1:?usage: ./run_mir.sh BIT [--seeds 1,2,3] [--option value ...]}
shift
exec "$(dirname "$0")/train_test.sh" --flag mir --bit "$bit" "$@"
